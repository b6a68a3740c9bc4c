"""Where repository files live: the storage a repository is written to.

- `local.py`: `LocalBackend`, a folder on a local disk; every file is written atomically.
"""
