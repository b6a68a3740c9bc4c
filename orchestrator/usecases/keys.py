"""Use cases of the repository's keys: list them, add and remove one, change a passphrase, and
export the key file (as a file, or on paper) and import it back on a new machine.

The paper key is the key file's secret, not the master key: the master key never changes and is
in every key entry, so a paper copy of it could never be taken back; a key file's secret opens one
key entry, which `capsule key remove` deletes when the paper is lost (docs/backup-restore-guide.md,
section 3.3).

Every change is an event (`RepositoryKeyChanged`, stream `keys`) with its actor, and a line of
Capsule's log; ids only, no key material. The repository's `keys/` folder stays the truth: a
change made while the event log cannot be written still happens, and its log line says so.
Key entries are independent files, so a change needs no exclusive lock and never waits for a
backup: it takes a shared lock of its own operation, `keys`, that only another key change conflicts
with, and checks what it may remove while holding it (two removals at once, each made with the key
the other removes, would otherwise both pass the "not the last key" check). A passphrase change adds
the new entry before it removes the old one, and a kill in between leaves both working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog

from capsule.adapters.errors import KeyFileMissing, WrongKey
from capsule.adapters.repository import keys
from capsule.adapters.repository.backends import open_backend
from capsule.adapters.repository.keys import KeyEntry, KeyFile, KeyType
from capsule.adapters.repository.lock import KEYS, locked
from capsule.adapters.repository.paperkey import PaperKey, decode, encode
from capsule.adapters.repository.repo import read_config
from capsule.domain.errors import CapsuleError, Category
from capsule.orchestrator.settings import Settings
from capsule.orchestrator.usecases.repository import open_repository, repository_exists

if TYPE_CHECKING:
    from capsule.adapters.repository.repo import Repository

log = structlog.get_logger(__name__)

KEY_CHANGE_WAIT = 5.0
"""Seconds a key change waits for another to finish: each takes well under one."""


class KeyChangeRefused(CapsuleError):
    """Raised when a key change would lock everyone out, or would overwrite a key that may be the only one."""

    category = Category.REFUSED


class KeyNotFound(CapsuleError):
    """Raised when no key entry has the id (or id prefix) given."""

    category = Category.NOT_FOUND


@dataclass(frozen=True)
class KeyView:
    key_id: str
    type: str
    created_at: datetime | None
    hostname: str
    current: bool
    """The entry this command opened the repository with."""


@dataclass(frozen=True)
class KeyList:
    keys: list[KeyView]


@dataclass(frozen=True)
class KeyAdded:
    key_id: str
    type: str
    key_file: Path | None


@dataclass(frozen=True)
class KeyRemoved:
    key_id: str
    type: str


@dataclass(frozen=True)
class PassphraseChanged:
    old_key_id: str
    new_key_id: str


@dataclass(frozen=True)
class PaperExport:
    lines: list[str]
    repository_prefix: str
    key_id: str | None
    checked: bool
    """Whether the key was proved to open the repository (False: no repository here yet)."""

    def __repr__(self) -> str:  # keep the key out of logs and tracebacks
        return f"PaperExport(key_id={self.key_id!r}, lines=<secret>)"


@dataclass(frozen=True)
class KeyFileExported:
    path: Path
    key_id: str | None


@dataclass(frozen=True)
class KeyImported:
    key_file: Path
    key_id: str | None
    """The key entry it opens; None when no repository could be reached to check it."""
    repository_prefix: str
    already_there: bool
    set_aside: Path | None
    """Where a different key file that was in the way went (with --force)."""


KEYS_STREAM = "keys"


def _actor() -> str:
    from capsule.orchestrator.runtime import person  # noqa: PLC0415 - loads the event store's modules

    return person()


def _record(
    settings: Settings,
    change: Literal["added", "removed", "passphrase changed", "imported"],
    *,
    key_type: KeyType,
    key_id: str | None,
    repository: str,
    replaced_key_id: str | None = None,
) -> None:
    """Append the change to the event log (who made it: the actor); a log that cannot take it is
    said in Capsule's log, and the change stands."""
    from capsule.domain.events import RepositoryKeyChanged  # noqa: PLC0415
    from capsule.orchestrator import codec  # noqa: PLC0415
    from capsule.orchestrator.errors import ConcurrencyConflict  # noqa: PLC0415
    from capsule.orchestrator.eventstore import Metadata  # noqa: PLC0415
    from capsule.orchestrator.runtime import Runtime, new_job_id  # noqa: PLC0415

    change_id, actor = new_job_id(), _actor()
    event = RepositoryKeyChanged(
        job_id=change_id,
        change=change,
        key_type=key_type,
        key_id=key_id,
        replaced_key_id=replaced_key_id,
        repository=repository[:8],
    )
    fields = {"key_id": (key_id or "")[:12], "key_type": key_type, "actor": actor, "change_id": change_id}
    try:
        runtime = Runtime(settings)
        try:
            for attempt in range(5):
                version = runtime.store.stream_version(KEYS_STREAM)
                try:
                    runtime.store.append(
                        KEYS_STREAM,
                        version,
                        [codec.encode(event)],
                        Metadata(actor=actor, correlation_id=change_id),
                        handlers=[runtime.handler],
                    )
                    break
                except ConcurrencyConflict:
                    if attempt == 4:
                        raise
        finally:
            runtime.close()
    except (CapsuleError, OSError) as e:
        log.warning(f"key {change}; the event log could not record it", reason=str(e), **fields)
        return
    log.info(f"key {change}", **fields)


def _open(settings: Settings) -> tuple[Repository, str | None]:
    """The repository, and the id of the key entry this command acts with: the passphrase entry
    when CAPSULE_PASSPHRASE is given, else the key file's."""
    repo = open_repository(settings)
    if settings.passphrase:
        phrase = settings.passphrase.get_secret_value()
        return repo, keys.passphrase_entry(repo.backend, repo.id, phrase)[0]
    key_file = settings.resolved_key_file
    if key_file.exists():
        keys.open_with_key_file(repo.backend, repo.id, key_file)
        return repo, keys.read_key_file(key_file).key_id
    return repo, None


def _find(entries: list[KeyEntry], wanted: str) -> KeyEntry:
    wanted = wanted.strip().lower()
    found = [e for e in entries if e.key_id.startswith(wanted)] if wanted else []
    if not found:
        raise KeyNotFound(f"no key has the id {wanted!r}; `capsule key list` shows them")
    if len(found) > 1:
        raise KeyNotFound(f"more than one key id starts with {wanted!r}; give more of it")
    return found[0]


def list_keys(settings: Settings) -> KeyList:
    repo, current = _open(settings)
    return KeyList(
        [
            KeyView(e.key_id, e.type, e.created, e.hostname, e.key_id == current)
            for e in keys.list_entries(repo.backend)
        ]
    )


def add_key(settings: Settings, *, passphrase: str | None = None, key_file: Path | None = None) -> KeyAdded:
    """A new way in: a passphrase, or a new key file written at `key_file` (which must not exist)."""
    if (passphrase is None) == (key_file is None):
        raise CapsuleError("give a new passphrase or a path for a new key file, not both")
    if key_file is not None and key_file.exists():
        raise KeyChangeRefused(f"{key_file} already exists; give a path where nothing is yet")
    repo, _ = _open(settings)
    with locked(repo.backend, KEYS, timeout=KEY_CHANGE_WAIT):
        if passphrase is not None:
            key_id = keys.add_passphrase_key(repo.backend, repo.master_key, repo.id, passphrase)
            kind: Literal["key-file", "passphrase"] = "passphrase"
        else:
            assert key_file is not None
            key_id = keys.add_key_file(repo.backend, repo.master_key, repo.id, key_file)
            kind = "key-file"
    _record(settings, "added", key_type=kind, key_id=key_id, repository=repo.id)
    return KeyAdded(key_id, kind, key_file)


def remove_key(settings: Settings, key_id: str) -> KeyRemoved:
    """Remove a key entry: whoever holds only that key can no longer open the repository. Refused
    for the last usable entry, and for the one this command opened the repository with."""
    repo, current = _open(settings)
    with locked(repo.backend, KEYS, timeout=KEY_CHANGE_WAIT):
        entries = keys.list_entries(repo.backend)
        entry = _find(entries, key_id)
        short = entry.key_id[:8]
        if not any(e.key_id != entry.key_id and e.type != "damaged" for e in entries):
            raise KeyChangeRefused(
                f"key {short} is the repository's last key: without it nobody can open the backups; "
                "add another first (`capsule key add`)"
            )
        if entry.key_id == current:
            raise KeyChangeRefused(
                f"key {short} is the one in use now; act with another key to remove it: a passphrase "
                "in CAPSULE_PASSPHRASE, or another key file in CAPSULE_KEY_FILE"
            )
        keys.remove_entry(repo.backend, entry.key_id)
    _record(settings, "removed", key_type=entry.type, key_id=entry.key_id, repository=repo.id)
    return KeyRemoved(entry.key_id, entry.type)


def change_passphrase(settings: Settings, new: str, key_id: str | None = None) -> PassphraseChanged:
    """Replace a passphrase entry by one for `new`: the new entry is written before the old one is
    removed. Which entry: `key_id`, else the one CAPSULE_PASSPHRASE opens, else the only one."""
    repo, current = _open(settings)
    with locked(repo.backend, KEYS, timeout=KEY_CHANGE_WAIT):
        phrases = [e for e in keys.list_entries(repo.backend) if e.type == "passphrase"]
        if key_id is not None:
            old = _find(phrases, key_id)
        elif current is not None and any(e.key_id == current for e in phrases):
            old = next(e for e in phrases if e.key_id == current)
        elif len(phrases) == 1:
            old = phrases[0]
        elif not phrases:
            raise KeyNotFound(
                "the repository has no passphrase to change; add one with `capsule key add --passphrase`"
            )
        else:
            raise KeyChangeRefused(
                "the repository has more than one passphrase; say which to change: `capsule key passwd ID` "
                "(`capsule key list` shows them)"
            )
        new_id = keys.add_passphrase_key(repo.backend, repo.master_key, repo.id, new)
        keys.remove_entry(repo.backend, old.key_id)
    _record(
        settings,
        "passphrase changed",
        key_type="passphrase",
        key_id=new_id,
        repository=repo.id,
        replaced_key_id=old.key_id,
    )
    return PassphraseChanged(old.key_id, new_id)


def _key_file(settings: Settings) -> KeyFile:
    path = settings.resolved_key_file
    if not path.exists():
        raise KeyFileMissing(
            f"there is no key file at {path} to export; a repository opened only by passphrase can "
            "get one with `capsule key add --key-file PATH`"
        )
    body = keys.read_key_file(path)
    if repository_exists(settings):
        backend = open_backend(settings.repository)
        keys.open_with_key_file(backend, read_config(backend)["id"], path)
        body = keys.read_key_file(path)  # its first open may have completed it
    return body


def export_paper(settings: Settings) -> PaperExport:
    """The key file's secret as a paper key, proved first to open the repository when there is one."""
    body = _key_file(settings)
    checked = body.repository_id is not None and repository_exists(settings)
    log.info("paper key exported", key_id=(body.key_id or "")[:12], actor=_actor())
    return PaperExport(encode(PaperKey(body.prefix, body.secret)), body.prefix, body.key_id, checked)


def export_key_file(settings: Settings, to: Path, *, force: bool = False) -> KeyFileExported:
    """A copy of the key file at `to`, readable by its owner only."""
    body = _key_file(settings)
    if to.exists() and not force:
        raise KeyChangeRefused(f"{to} already exists; give another path, or --force to replace it")
    keys.write_key_file(to, body)
    log.info("key file exported", key_id=(body.key_id or "")[:12], actor=_actor())
    return KeyFileExported(to, body.key_id)


def import_paper(settings: Settings, text: str, *, force: bool = False) -> KeyImported:
    """Write the key file from a typed paper key, after proving it opens the repository if there is one."""
    paper = decode(text)
    path = settings.resolved_key_file
    body = KeyFile(paper.secret, None, None, paper.repository_prefix)
    if repository_exists(settings):
        backend = open_backend(settings.repository)
        repo_id = str(read_config(backend)["id"])
        if not repo_id.startswith(paper.repository_prefix):
            raise WrongKey(
                f"this paper key belongs to another repository (id {paper.repository_prefix}...); "
                f"the one at {settings.repository} is {repo_id[:8]}..."
            )
        try:
            key_id, _ = keys.key_file_entry(backend, repo_id, paper.secret)
        except WrongKey as e:
            raise WrongKey(
                "the repository no longer accepts this paper key: its key entry was removed "
                "(`capsule key remove`); use a newer paper key, the key file, or the passphrase"
            ) from e
        body = KeyFile(paper.secret, key_id, repo_id)
    already, aside = False, None
    if path.exists():
        try:
            already = keys.read_key_file(path).secret == paper.secret
        except WrongKey:
            already = False
        if not already and not force:
            raise KeyChangeRefused(
                f"a different key file is at {path}; it may be the only key to another repository. "
                "Move it away, or give --force (it is then kept beside, renamed)"
            )
        if not already:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            aside = path.with_name(f"{path.name}.replaced-{stamp}")
            os.replace(path, aside)
    keys.write_key_file(path, body)
    if body.key_id is not None:
        open_repository(settings)  # proves the written file opens it, config MAC included
    _record(settings, "imported", key_type="key-file", key_id=body.key_id, repository=paper.repository_prefix)
    return KeyImported(path, body.key_id, paper.repository_prefix, already, aside)
