"""An independent reader of the event log's copy on a destination (docs/repository-format.md,
section 13.2), written from the document alone: nothing of Capsule is imported. The real CLI backs
up and syncs to a folder; this reader opens the newest generation with the repository key, checks
its name, header and hash chain, and finds the events `capsule audit` shows."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zstandard

from tests.integration.test_format_document import (
    FormatError,
    Reader,
    capsule,
    database_env,
    gcm_open,
    make_database,
)

NAME = re.compile(r"(\d{8}t\d{6}z)-(\d{12})-([0-9a-f]{32})")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _utc(text: str) -> str:
    return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="microseconds")


def read_log_copy(copy: Path, enc_key: bytes, repository_id: str) -> tuple[dict[str, Any], list[list[Any]]]:
    names = sorted((p.name for p in (copy / "eventlog").iterdir() if NAME.fullmatch(p.name)), reverse=True)
    name = names[0]
    body = gcm_open(enc_key, (copy / "eventlog" / name).read_bytes(), b"capsule:eventlog:" + name.encode())
    if body[:1] != b"\x01":
        raise FormatError("unknown encoding")
    lines = zstandard.ZstdDecompressor().decompressobj().decompress(body[1:]).decode().splitlines()
    header, events = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    if (
        header["format"] != "capsule-event-log"
        or header["version"] != 1
        or header["repository"] != repository_id
    ):
        raise FormatError("not a copy of this repository's event log")
    key = bytes.fromhex(header["chain_key"])
    origin = header["origin"]
    if hmac.new(key, b"capsule event log key id v1", hashlib.sha256).hexdigest()[:32] != origin["key_id"]:
        raise FormatError("the chain key is not the origin's")
    origin_body = json.dumps(
        [origin["key_id"], origin["chained_after"], _utc(origin["chained_at"])], separators=(",", ":")
    )
    if (
        hmac.new(key, b"capsule event chain origin v1\x00" + origin_body.encode(), hashlib.sha256).hexdigest()
        != origin["seal"]
    ):
        raise FormatError("the origin's seal does not match")
    previous = bytes(32)
    for position, stream, version, type_, schema, data, metadata, recorded_at, seal, chain in events:
        content = json.dumps(
            [stream, version, type_, schema, _plain(data), _plain(metadata), _utc(recorded_at)],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        mine = hmac.new(
            key, b"capsule event seal v1\x00" + content + position.to_bytes(8, "big"), hashlib.sha256
        )
        if mine.hexdigest() != seal:
            raise FormatError(f"the event at {position} does not match its seal")
        previous = hmac.new(
            key, b"capsule event link v1\x00" + previous + bytes.fromhex(seal), hashlib.sha256
        ).digest()
        if previous.hex() != chain:
            raise FormatError(f"the event at {position} does not follow the one before")
    _, position, head = NAME.fullmatch(name).groups()  # type: ignore[union-attr]
    last = events[-1]
    assert (header["events"], header["head_position"], header["head"]) == (len(events), last[0], last[9])
    assert (int(position), head) == (last[0], last[9][:32])
    return header, events


def test_independent_reader_opens_the_event_log_copy_and_checks_its_chain(tmp_path: Path) -> None:
    db = tmp_path / "shop" / "pos.db"
    db.parent.mkdir()
    make_database(db, 4096, "wal")
    env, _, home = database_env(tmp_path, db)
    copy = tmp_path / "usb"
    copy.mkdir()
    capsule(env, tmp_path, "init")
    capsule(env, tmp_path, "backup", "--kind", "database")
    capsule(env, tmp_path, "destinations", "add", "folder", "usb", str(copy))
    capsule(env, tmp_path, "sync")
    audit = json.loads(capsule(env, tmp_path, "audit", "--json"))

    reader = Reader(copy, key_file=home / "repository.key")
    header, events = read_log_copy(copy, reader.enc_key, reader.repo_id)

    assert [(e[0], e[3]) for e in events] == [(a["position"], a["type"]) for a in audit]
    assert "BackupCompleted" in {e[3] for e in events} and header["head_position"] == audit[-1]["position"]
