"""The machine's side of Capsule: the live database, the images folder, the repository on disk,
and the worker processes that do the per-blob work. Adapters know nothing of jobs or events: the
orchestrator calls them, and they import only `capsule.domain` and one another.

- `sqlite/`: consistent copies of the live SQLite database, stored page-aligned; the source lock.
- `files/`: the images folder: walk, store what changed as trees, restore, check contents.
- `repository/`: the repository format: keys, blobs, packs, indexes, manifests, locks, verify,
  restore; `repository/backends/` is where its files live.
- `workers/`: the processes that hash, compress, seal, open and write blobs.
- `sampleshop/`: a sample database and images folder, for trying Capsule, benchmarks and tests.
- `errors.py`: the adapters' errors; OS and driver errors stop here and become one of these.
- `logs.py`: a logger that loads structlog at its first line, for modules read by every command.
- `directio.py`: large writes and reads around the page cache, where the system allows it.
- `filedigest.py`: the SHA-256 of a file on disk, read a block at a time into one buffer.
- `source_identity.py`: what a source is as a snapshot records it: host, path, SQLite's own ids.
- `partials.py`: the names of files being restored, and the removal of those a dead process left.
- `drill.py`: restore drills: the newest snapshots restored into a scratch folder and checked.
- `notifiers.py`: alerts sent out: an e-mail through an SMTP server, a JSON POST to a webhook.
"""
