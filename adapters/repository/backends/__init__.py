"""Where repository files live: the storage a repository is written to."""
