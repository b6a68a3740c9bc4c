"""A sample shop to try Capsule on: a point-of-sale database and a folder of product images.

`make_database` and `make_images` make them only where there are none, and make each under a
temporary name beside its place, renamed into place once complete: an interrupted run leaves
nothing half-made where the shop's files belong, and the next run starts again. The generators
(`database`, `images`) are the ones the benchmarks and the tests use.

- `database.py`: a point-of-sale-like SQLite database of a given size, the same for one seed.
- `images.py`: a folder of product images: paths, sizes and bytes, the same for one seed.
- `vocabulary.py`: the words the sample database is made of.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from capsule.adapters.errors import SampleShopError
from capsule.adapters.sampleshop.database import generate
from capsule.adapters.sampleshop.images import IMAGE_SIZES, generate_tree

IMAGE_AVERAGE_BYTES = 200 * 1024
"""The sample's images average 200 KiB: 300 of them make 60 MiB, a small shop's catalogue."""

PARTIAL = ".capsule-demo-partial"


@dataclass(frozen=True)
class Made:
    """What one of `make_database` or `make_images` put in place."""

    files: int
    bytes: int


def make_database(path: Path, size_bytes: int, *, seed: int = 0) -> Made | None:
    """A sample database of about `size_bytes` at `path`, or None if something is there already."""
    if os.path.lexists(path):
        return None
    partial = path.with_name(path.name + PARTIAL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        generate(partial, size_bytes, seed=seed)
        os.replace(partial, path)
    except (OSError, sqlite3.Error) as e:
        _remove(partial)
        raise SampleShopError(
            f"could not make the sample database {path} ({_reason(e)}); "
            "make sure this user can write there (or set CAPSULE_DATABASE), then run it again"
        ) from e
    return Made(1, path.stat().st_size)


def make_images(folder: Path, count: int, *, seed: int = 0) -> Made | None:
    """`count` sample product images in `folder`, or None if the folder holds anything already."""
    if os.path.lexists(folder) and not (folder.is_dir() and not any(folder.iterdir())):
        return None
    partial = folder.with_name(folder.name + PARTIAL)
    try:
        _remove(partial)
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Categories directly in the folder: it is the shop's folder of product images already.
        tree = generate_tree(partial, count, total=count * IMAGE_AVERAGE_BYTES, sizes=IMAGE_SIZES, top="")
        with contextlib.suppress(FileNotFoundError):
            folder.rmdir()  # the empty folder found there
        partial.mkdir(exist_ok=True)  # no images asked: the folder is still made
        os.replace(partial, folder)
    except OSError as e:
        _remove(partial)
        raise SampleShopError(
            f"could not make the sample images in {folder} ({_reason(e)}); "
            "make sure this user can write there (or set CAPSULE_UPLOADS), then run it again"
        ) from e
    return Made(len(tree.files), tree.total_bytes)


def _reason(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}" if error.filename else error.strerror.lower()
    return str(error)


def _remove(path: Path) -> None:
    """Remove what an interrupted or failed run left under a partial name, as far as it can."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(OSError):
                os.remove(f"{path}{suffix}")
