"""The SQLite side: consistent copies of a live database, stored page-aligned, one job per database.

- `snapshot.py`: copies through SQLite's backup API, the source checks, and the checkpoint keeper
  that runs the till's checkpoints while a backup runs.
- `livecopy.py`: stores a copy block by block while SQLite is still writing it.
- `inplace.py`: reads a WAL database's own file, frozen by the checkpoint keeper, instead of a copy.
- `pagestore.py`: stores a file's page-aligned chunks through the sealing workers.
- `backup.py`: a database backup's store and commit steps (`store_database`, `commit_database`).
- `sourcelock.py`: one job at a time per database, through a file lock in Capsule's home.
"""
