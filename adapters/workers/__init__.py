"""Worker processes that hash, compress, seal, open and write blobs, so that both cores work."""
