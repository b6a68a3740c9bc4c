"""The repository format: keys, blobs, packs, indexes, manifests, locks (docs/repository-format.md).

- `repo.py`: `Repository`: open with a key, store blobs in packs, read them back authenticated.
- `crypto.py`: master key, blob ids (keyed BLAKE3) and sealing (AES-256-GCM).
- `keys.py`: key entries: the master key wrapped by a key file or a passphrase; the key file.
- `paperkey.py`: a key file's secret as six checksummed lines to write down and type back.
- `blobcodec.py`: a blob's plaintext to its stored form and back (compress, then seal).
- `pack.py`: packs: sealed blobs followed by a sealed header that lists them; bundles.
- `index.py`: which pack holds each blob, as sorted runs in memory or in temporary files.
- `indexcache.py`: the built index kept in Capsule's home, sealed, for the next command.
- `chunks.py`: storing a stream of chunks, and the list blobs that hold a file's ids.
- `rebuild.py`: the index rebuilt from the packs alone; packs no index names adopted.
- `lock.py`: shared, exclusive and prune locks under `locks/`; who holds them.
- `entry_rules.py`: the rules a snapshot's entries keep, for restore and verify alike.
- `backups.py`: what a backup of either kind asks of the repository besides storing (parent, gone packs).
- `restore.py`: restore a database snapshot: fetch, authenticate, write, check, rename.
- `contentcheck.py`: a database's restored bytes held to its chunk ids when its entry has no SHA-256.
- `packcache.py`: packs a restore from Drive needs most of, fetched whole once into a temporary folder.
- `verify.py`: find every damaged or missing piece and the snapshots and files it hurts.
- `verify_packs.py`: the data pass of `verify --read-data`: every pack read once, checked on every core.
- `packcheck.py`: one whole pack checked (header, tags, decompression, ids), in a worker or here.
- `repair.py`: set damaged packs and snapshots aside, keep every intact blob, rebuild the index.
- `setaside.py`: the snapshots a repair set aside, read for listing without the repair's modules.
- `usage.py`: every blob the snapshots use, for a prune (stops at anything it cannot read).
- `pruneplan.py`: a prune's plan and results, as JSON a job records between its steps.
- `repacker.py`: the blobs still in use copied out of packs a prune condemns.
- `prune.py`: prune in phases a new process can resume, with no exclusive lock (section 14.2).
- `copy.py`: a repository's objects copied to another store (a destination), complete at every moment.
- `backends/`: where the repository's files live.
"""
