"""Worker processes that hash, compress, seal, open and write blobs, so that both cores work.

- `sealworker.py`: the worker process itself, and the frames it reads and writes on its pipes.
- `sealpool.py`: the parent's side: start the workers, send requests, match replies to futures.
- `restorepool.py`: restoring a file through the workers, which write its plaintext themselves.
"""
