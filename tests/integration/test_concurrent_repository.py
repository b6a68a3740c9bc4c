"""Two processes writing the same repository at once: both finish, nothing is lost or damaged."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.helpers import (
    DatabaseTemplates,
    Shop,
    describe,
    file_content_digest,
    running,
    sha256_file,
)


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    with running(proc):
        stdout, stderr = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert "Traceback" not in stderr, describe(done)
    return done


def _backup_together(shops: list[Shop]) -> list[dict[str, object]]:
    """Start one `capsule backup` per shop at the same moment; return their JSON results."""
    procs = [s.popen("backup", "--kind", "database", "--json") for s in shops]
    results = []
    for proc in [_finish(p) for p in procs]:
        assert proc.returncode == 0, describe(proc)
        results.append(json.loads(proc.stdout))
    return results


def test_backups_of_two_databases_into_one_repository_at_once_both_succeed_and_restore(
    tmp_path: Path, templates: DatabaseTemplates
) -> None:
    # Two tills of one shop: two databases, one repository and one key file, one Capsule home.
    till_a = Shop(tmp_path / "shop", db_name="till-a.db")
    till_b = Shop(tmp_path / "shop", db_name="till-b.db")
    templates.copy(till_a.database, size_mib=6, seed=1)
    templates.copy(till_b.database, size_mib=6, seed=2)
    till_a.init()
    for _round in range(2):
        results = _backup_together([till_a, till_b])
        assert {r["source"] for r in results} == {str(till_a.database), str(till_b.database)}

    till_a.run("verify", "--read-data", expect=0)
    rows = till_a.snapshots()
    assert len(rows) == 4
    assert not list(till_a.repository.glob("**/.tmp-*"))
    assert till_a.lock_files() == []
    restored: dict[str, set[str]] = {till_a.db_name: set(), till_b.db_name: set()}
    for row in rows:
        target = tmp_path / "restored" / row["snapshot_id"][:12]
        till_a.restore(row["snapshot_id"], target)
        (name,) = row["files"]
        assert sha256_file(target / name) == till_a.manifest_sha256(row["snapshot_id"])
        restored[name].add(sha256_file(target / name))
    for till in (till_a, till_b):
        # Neither database changed between rounds: both of its snapshots are the same bytes.
        assert len(restored[till.db_name]) == 1
        copy = next(p for p in (tmp_path / "restored").glob(f"*/{till.db_name}"))
        assert file_content_digest(copy, immutable=True) == file_content_digest(till.database)


@pytest.mark.slow
def test_two_backups_of_the_same_database_at_once_both_succeed_and_restore(
    shop: Shop, tmp_path: Path, templates: DatabaseTemplates
) -> None:
    templates.copy(shop.database, size_mib=6)
    expected = file_content_digest(shop.database)
    restored_digests = set()
    for round_ in range(2):
        results = _backup_together([shop, shop])
        assert len({r["snapshot_id"] for r in results}) == 2
        for n, result in enumerate(results):
            target = tmp_path / f"restored-{round_}-{n}"
            shop.restore(str(result["snapshot_id"]), target)
            restored_digests.add(sha256_file(target / shop.db_name))
    # The database did not change: every snapshot holds the very same bytes, and they are its content.
    assert len(restored_digests) == 1
    assert file_content_digest(target / shop.db_name, immutable=True) == expected
    shop.run("verify", "--read-data", expect=0)
    assert len(shop.snapshots()) == 4
    assert shop.leftover_copies() == []
