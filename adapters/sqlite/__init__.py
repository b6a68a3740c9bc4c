"""The SQLite side: consistent copies of a live database, stored page-aligned, one job per database."""
