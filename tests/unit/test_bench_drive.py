"""The Drive benchmark's counting: requests of the packs' uploads apart from the rest, and the
bytes upload PUTs carried, as the fake Drive saw them."""

from __future__ import annotations

import hashlib
import os

import pytest

from benchmarks.bench_drive import RCLONE_NOTE, TARGET_REQUESTS_PER_GIB, print_report, traffic
from capsule.adapters.repository.backends.gdrive import open_drive
from tests.fakes.drive import FakeDrive, Sleeps


def test_traffic_counts_the_packs_requests_apart_and_the_bytes_chunks_carried() -> None:
    with FakeDrive() as fake:
        backend = open_drive("bench", fake.credentials(), root_url=fake.url, sleep=Sleeps(),
                             chunk_size=256 * 1024)  # fmt: skip
        big = os.urandom(600 * 1024)  # three chunks
        backend.write("data", hashlib.sha256(big).hexdigest(), big)
        backend.write("data", "ab" * 32, b"small pack")  # one multipart request
        backend.write("index", "cd" * 32, b"index")
        seen = traffic(fake)
    assert (seen.packs, seen.pack_requests, seen.pack_bytes) == (2, 4, len(big) + len(b"small pack"))
    assert seen.put_bytes == len(big)
    assert seen.requests > seen.pack_requests and seen.files == 3


def _figures(rclone: dict[str, object]) -> dict[str, object]:
    upload = {"runs_seconds": [2.0], "seconds": 2.0, "mb_per_s": 50.0, "cpu_seconds": 1.0,
              "fake_cpu_seconds": 0.2, "peak_rss_bytes": 10**8, "sent_bytes": 10**8, "requests": 20,
              "packs": 4, "pack_requests": 8, "requests_per_pack": 2.0, "pack_requests_per_gib": 64.0,
              "requests_per_gib_whole_sync": 80.0, "chunk_bytes": 1024}  # fmt: skip
    timed = {"seconds": 1.0, "cpu_seconds": 0.5, "mb_per_s": 9.0}
    return {"size": "20M", "pack_size": 32 * 1024 * 1024, "pack_size_given": False, "repository_bytes": 10**7,
            "backup": {"seconds": 3.0, "cpu_seconds": 2.5, "peak_rss_bytes": 123 * 10**6},
            "upload": upload, "drop": {"resent_bytes": 0}, "kill": {"held": True, "complete": True,
            "resent_bytes": 0}, "restore": {"local": timed, "drive": timed}, "rclone": rclone}  # fmt: skip


def test_the_report_sets_rclone_beside_capsule_sync_to_a_folder_and_says_why_not_to_drive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    copy = {"runs_seconds": [1.0, 2.0, 3.0], "seconds": 2.0, "cpu_seconds": 0.5, "peak_rss_bytes": 5 * 10**7,
            "mb_per_s": 5.0, "complete": True, "extra_files": 0}  # fmt: skip
    print_report(_figures({"note": RCLONE_NOTE, "rclone": copy, "capsule": {**copy, "complete": False}}))
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "runs 1.00, 2.00, 3.00" in rows["folder copy: rclone copy (median)"]
    assert "INCOMPLETE" not in rows["folder copy: rclone copy (median)"]
    assert "copy INCOMPLETE" in rows["folder copy: capsule sync (median)"]
    assert "cannot be pointed at the fake Drive" in out
    assert "packs of 32 MiB (the default)" in rows["database / repository"]
    assert rows["requests per GiB of packs"].endswith("PASS")
    assert "peak RSS 123 MB" in rows["first backup (one run)"]


def test_the_report_says_whether_the_targets_are_met(capsys: pytest.CaptureFixture[str]) -> None:
    upload = {"runs_seconds": [2.0], "seconds": 2.0, "mb_per_s": 50.0, "cpu_seconds": 1.0,
              "fake_cpu_seconds": 0.2, "peak_rss_bytes": 10**8, "sent_bytes": 10**8, "requests": 20,
              "packs": 4, "pack_requests": 8, "requests_per_pack": 2.0,
              "pack_requests_per_gib": TARGET_REQUESTS_PER_GIB + 1, "requests_per_gib_whole_sync": 200.0,
              "chunk_bytes": 1024}  # fmt: skip
    timed = {"seconds": 1.0, "cpu_seconds": 0.5, "mb_per_s": 9.0}
    kill = {"held": True, "complete": True, "resent_bytes": 1025}  # a byte over the chunk
    print_report({"size": "20M", "pack_size": 4 * 1024 * 1024, "repository_bytes": 10**7, "upload": upload,
                  "drop": {"resent_bytes": 1024}, "kill": kill, "restore": {"local": timed, "drive": timed},
                  "rclone": {"skipped": "rclone is not on the PATH"}})  # fmt: skip
    out = capsys.readouterr().out
    rows = {line.split("  ")[0]: line for line in out.splitlines()}
    assert rows["requests per GiB of packs"].endswith("FAIL")
    assert rows["resent after a dropped connection"].endswith("PASS")
    assert rows["resent after kill -9 and a restart"].endswith("FAIL")
    assert "rclone is not on the PATH" in out
