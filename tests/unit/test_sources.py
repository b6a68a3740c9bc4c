"""What a snapshot is a copy of, and restic's --host/--path/--tag filters: pure rules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from capsule.domain.manifest import Manifest, SourceIdentity, schema_digest
from capsule.domain.sources import SnapshotFilter, other_source, schema_changed

TOTALS = {"files": 1, "bytes": 0, "blobs": 0, "new_blobs": 0, "new_bytes": 0, "stored_bytes": 0}


def manifest(**fields: Any) -> Manifest:
    body: dict[str, Any] = {
        "version": 2,
        "kind": "database",
        "time": datetime(2026, 11, 25, tzinfo=UTC).isoformat(),
        "hostname": "till-1",
        "source": "/srv/shop/data/pos.db",
        "totals": {**TOTALS, "duration_seconds": 0},
        **fields,
    }
    return Manifest.model_validate(body)


def live(**fields: Any) -> SourceIdentity:
    return SourceIdentity(**{"host": "till-1", "path": "/srv/shop/data/pos.db", **fields})


def test_a_manifest_written_before_identities_stands_for_its_hostname_and_source() -> None:
    old = manifest()

    assert old.identity is None
    assert old.source_identity() == SourceIdentity(host="till-1", path="/srv/shop/data/pos.db")
    assert other_source(old.source_identity(), live(application_id=7, schema_sha256="a" * 64)) is None


def test_an_identity_round_trips_through_the_manifest_json() -> None:
    identity = live(application_id=7, page_size=4096, schema_sha256=schema_digest(["CREATE TABLE t(x)"]))
    written = manifest(identity=identity.model_dump())

    assert Manifest.model_validate_json(written.model_dump_json()).source_identity() == identity


@pytest.mark.parametrize(
    ("snapshot", "named"),
    [
        (live(host="till-2"), "/srv/shop/data/pos.db on till-2"),
        (live(path="/srv/other/pos.db"), "/srv/other/pos.db on till-1"),
        (live(application_id=1001), "1001"),
    ],
    ids=["host", "path", "application id"],
)
def test_another_host_path_or_application_id_is_another_source(snapshot: SourceIdentity, named: str) -> None:
    reason = other_source(snapshot, live(application_id=2002))

    assert reason is not None and named in reason


def test_an_unset_application_id_or_another_schema_is_the_same_source() -> None:
    assert other_source(live(application_id=0), live(application_id=2002)) is None
    before, after = live(schema_sha256="a" * 64), live(schema_sha256="b" * 64)
    assert other_source(before, after) is None
    assert schema_changed(before, after)
    assert not schema_changed(live(), after)


def test_the_schema_digest_ignores_the_order_sqlite_lists_the_schema_in() -> None:
    one = schema_digest(["CREATE TABLE a(x)", "CREATE INDEX i ON a(x)"])

    assert one == schema_digest(["CREATE INDEX i ON a(x)", "CREATE TABLE a(x)"])
    assert one != schema_digest(["CREATE TABLE a(x)"])


def test_filters_keep_snapshots_of_any_given_host_or_path_with_every_tag_of_a_group() -> None:
    nightly = manifest(tags=["nightly", "before-upgrade"])
    other = manifest(hostname="till-2", source="/srv/other.db", tags=["nightly"])

    def kept(**options: Any) -> list[Manifest]:
        only = SnapshotFilter.of(**options)
        return [m for m in (nightly, other) if only.matches(m)]

    assert kept() == [nightly, other]
    assert kept(hosts=["till-2"]) == [other]
    assert kept(hosts=["till-1", "till-2"]) == [nightly, other]
    assert kept(paths=["/srv/other.db"]) == [other]
    assert kept(tags=["nightly,before-upgrade"]) == [nightly]
    assert kept(tags=["before-upgrade", "nightly"]) == [nightly, other]
    assert kept(hosts=["till-2"], tags=["before-upgrade"]) == []
    assert SnapshotFilter.of(paths=["/x"]).chooses_source
    assert not SnapshotFilter.of(tags=["nightly"]).chooses_source
