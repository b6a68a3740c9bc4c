"""The repository format: keys, blobs, packs, indexes, manifests, locks."""
