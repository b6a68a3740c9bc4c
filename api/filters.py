"""The options that choose snapshots, restic's `--host`, `--path` and `--tag`, shared by the commands
that list or restore them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import click

from domain.sources import SnapshotFilter


def filter_options(fn: Callable[..., None]) -> Callable[..., None]:
    """restic's `--host`, `--path` and `--tag`, each repeatable."""
    fn = click.option(
        "--tag",
        "tags",
        multiple=True,
        metavar="TAG[,TAG]",
        help="Only snapshots with all of these tags (repeatable: any of the groups).",
    )(fn)
    fn = click.option(
        "--path",
        "paths",
        multiple=True,
        help="Only snapshots of this database or folder (repeatable: any of them).",
    )(fn)
    return click.option(
        "--host", "hosts", multiple=True, help="Only snapshots taken on this machine (repeatable)."
    )(fn)


def snapshot_filter(hosts: tuple[str, ...], paths: tuple[str, ...], tags: tuple[str, ...]) -> SnapshotFilter:
    # A path is compared as written (made absolute) and resolved: another machine's path may not
    # exist here, and this machine's may be reached through a link.
    spelled = [p for path in paths for p in (os.path.abspath(path), str(Path(path).resolve()))]
    return SnapshotFilter.of(hosts, spelled, tags)
