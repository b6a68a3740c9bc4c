"""The files side: walk a folder, store what changed as trees, restore and check files.

- `backup.py`: a files backup's store and commit steps: walk, reuse unchanged files, chunk the rest.
- `walk.py`: every item under the folder in walk order, with its lstat, no link followed.
- `parent.py`: the parent snapshot's entries, compared as parsed and checked as stored.
- `tree.py`: a files snapshot's entries, in groups stored as tree blobs.
- `entries.py`: a tree blob's entries read as `Entry`'s model reads them, its Python checks once a blob.
- `treesearch.py`: only the tree blobs a path (or a pattern's leading folders) needs, by binary search.
- `restore.py`: restore all of a files snapshot or the paths `--include` picks; `cat` of one file.
- `flush.py`: what a restore wrote flushed before it says it is done: file by file, or the whole disk.
- `verify_contents.py`: `verify --read-data` for files: every distinct content's size and SHA-256.
"""
