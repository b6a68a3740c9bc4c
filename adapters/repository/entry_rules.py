"""The rules a snapshot's entries keep, in one place: restore refuses a snapshot that breaks one,
and verify reports it, naming the snapshot and the path.

- Each entry alone: the `Entry` model's validators, run whenever a manifest or a tree blob is read
  (`Repository.load_snapshot`, `load_group` of `files/tree.py`): a canonical relative path that
  cannot leave its root, a known type, fields that fit the type (a file has a SHA-256, a link a
  target and no content, a folder nothing), no negative size. A tree blob must be a data blob holding a JSON
  array of entries.
- A database snapshot (`check_database_snapshot`): exactly one entry, a file.
- A files snapshot's entries in sequence (`check_follows`): strictly in walk order, so no path
  comes twice, and nothing under a file or a link of the snapshot.
- A file's content: its blobs' plaintexts add up to its size (`check_size`, from the index alone)
  and its bytes have its SHA-256 (`check_content`, which needs the bytes).
- Modes (`restored_mode`): setuid and setgid come back only when the restore asks for them.
"""

from __future__ import annotations

import stat

from capsule.adapters.errors import IntegrityError
from capsule.adapters.files.tree import path_key
from capsule.domain.errors import UnsafePath
from capsule.domain.manifest import Entry, Manifest

SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID
"""Bits that make a program run as its owner or group: restored only when asked for."""


def check_database_snapshot(manifest: Manifest) -> None:
    """Refuse a database snapshot that is anything but one database file."""
    kinds = [e.type for e in manifest.entries]
    if kinds != ["file"]:
        held = ", ".join(f"a {k}" for k in kinds) or "nothing"
        raise IntegrityError(
            f"the database snapshot holds {held} instead of one database file: it is damaged or forged"
        )


def check_follows(previous: Entry | None, entry: Entry) -> None:
    """Refuse `entry` unless it may come right after `previous` in a files snapshot.

    In strict walk order everything under a path comes right after it, so a path under a file or
    a link of the snapshot always follows that file or link: comparing neighbours is enough.
    """
    if previous is None:
        return
    if path_key(entry.path) <= path_key(previous.path):
        raise IntegrityError(
            f"the snapshot lists {entry.path!r} twice or out of order: it is damaged or forged"
        )
    if previous.type != "dir" and entry.path.startswith(f"{previous.path}/"):
        kind = "symbolic link" if previous.type == "symlink" else "file"
        raise UnsafePath(
            f"the path {entry.path!r} passes through the {kind} {previous.path!r} of the snapshot; "
            "refusing to restore through anything but a folder"
        )


def check_size(entry: Entry, stored: int) -> None:
    """Refuse a file whose blobs hold `stored` bytes of plaintext when its entry says otherwise."""
    if entry.type == "file" and stored != entry.size:
        raise IntegrityError(
            f"{entry.path} is {entry.size} bytes in its snapshot but its blobs hold {stored}: "
            "the snapshot is damaged or forged"
        )


def check_content(entry: Entry, size: int, sha256: str, *, ids_checked: bool = False) -> None:
    """Refuse content of `size` bytes and digest `sha256` that is not what `entry` recorded.

    A database entry without a SHA-256 has its bytes checked chunk by chunk against their ids
    instead (`contentcheck`): a caller that did so says `ids_checked`, and only the size is left
    to check here. Any other entry without a SHA-256 is refused."""
    if size != entry.size:
        raise IntegrityError(f"{entry.path} does not match its snapshot ({size} bytes, not {entry.size})")
    if entry.sha256 is None and entry.sqlite is not None and ids_checked:
        return
    if sha256 != entry.sha256:
        raise IntegrityError(f"{entry.path} does not match its snapshot (SHA-256 differs)")


def restored_mode(mode: int, special_bits: bool) -> int:
    """The permission bits to give a restored item: setuid and setgid only if asked for.

    A program that runs as its owner is not put back that way by default: the snapshot may come
    from elsewhere, and the bit is seldom what a shop's images or database need. The sticky bit
    stays: it only limits who may delete in a folder.
    """
    return stat.S_IMODE(mode) & ~(0 if special_bits else SPECIAL_BITS)
