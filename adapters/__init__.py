"""Infrastructure: SQLite snapshots, the repository on disk, destinations."""
