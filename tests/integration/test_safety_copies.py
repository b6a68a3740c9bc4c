"""Safety copies: one per restore job, whatever its attempts, holding the live database as it was
just before the job began to replace it; only the newest CAPSULE_SAFETY_COPIES are kept."""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

from tests.integration.helpers import FAST_STEPS, Shop, file_content_digest

FAST = FAST_STEPS


def safety_copies(shop: Shop) -> list[Path]:
    folder = shop.home / "safety"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def sell(shop: Shop, rows: int = 1) -> None:
    """The till goes on selling: rows that only the live database has."""
    with sqlite3.connect(shop.database) as conn:
        for _ in range(rows):
            conn.execute(
                "INSERT INTO sales (customer_id, created_at, total_cents, payment_method, note) "
                "VALUES (NULL, '2026-12-06 10:00:00', 250, 'cash', 'sold while the restore was down')"
            )
    conn.close()


def killed(shop: Shop, *args: str, point: str) -> None:
    proc = shop.run(*args, env={**FAST, "CAPSULE_FAULTS": point}, expect=None)
    assert proc.returncode == -signal.SIGKILL, f"{point} was not reached: {proc.returncode} {proc.stderr}"


def test_an_attempt_killed_before_touching_the_live_database_lets_the_next_one_save_newer_sales(
    shop: Shop,
) -> None:
    shop.run("backup", env=FAST, expect=0)
    restored = file_content_digest(shop.database)
    sell(shop)
    killed(shop, "restore", "latest", "--in-place", point="apply:checked")
    sell(shop)  # made after the first attempt saved its copy: the copy it keeps must have them
    before_restore = file_content_digest(shop.database)

    shop.run("worker", "--until-idle", env=FAST, expect=0)

    [copy] = safety_copies(shop)
    assert file_content_digest(copy, immutable=True) == before_restore
    assert file_content_digest(shop.database) == restored


def test_an_attempt_killed_after_copying_into_the_live_database_keeps_the_copy_it_saved(shop: Shop) -> None:
    shop.run("backup", env=FAST, expect=0)
    restored = file_content_digest(shop.database)
    sell(shop)
    before_restore = file_content_digest(shop.database)
    killed(shop, "restore", "latest", "--in-place", point="apply:copied")
    assert file_content_digest(shop.database) == restored  # the live database is already replaced

    shop.run("worker", "--until-idle", env=FAST, expect=0)

    # The second attempt must not take the restored database for the one to keep.
    [copy] = safety_copies(shop)
    assert file_content_digest(copy, immutable=True) == before_restore


def test_only_the_newest_safety_copies_are_kept_and_never_the_one_just_made(shop: Shop) -> None:
    shop.run("backup", env=FAST, expect=0)
    keep = {"CAPSULE_SAFETY_COPIES": "2"}
    made = []
    for _ in range(3):
        sell(shop)
        proc = shop.run("restore", "latest", "--in-place", env=keep, expect=0)
        [saved] = [
            line.rpartition(" ")[2].rstrip(".") for line in proc.stdout.splitlines() if "saved at" in line
        ]
        made.append(Path(saved))
        assert made[-1] in safety_copies(shop)

    assert safety_copies(shop) == sorted(made[1:])

    sell(shop)
    proc = shop.run("restore", "latest", "--in-place", env={"CAPSULE_SAFETY_COPIES": "1"}, expect=0)
    [copy] = safety_copies(shop)
    assert str(copy) in proc.stdout
