"""The sample shop: `capsule demo create` makes a database and product images where there are none.

Every command runs the real `capsule` in a child process, in a fresh folder, as someone trying
Capsule for the first time would run it from the README.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.helpers import (
    CAPSULE,
    MiB,
    clean_env,
    connect_read_only,
    describe,
    files_under,
    one_line_error,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def demo(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [*CAPSULE, "demo", "create", *args],
        cwd=folder,
        env={**clean_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "Traceback" not in proc.stderr, describe(proc)
    return proc


def integrity_and_sales(database: Path) -> tuple[str, int]:
    conn = connect_read_only(database)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        sales = conn.execute("SELECT COUNT(*) FROM sales").fetchone()[0]
        bad = conn.execute(
            "SELECT COUNT(*) FROM sales AS s WHERE s.total_cents != "
            "(SELECT SUM(line_total_cents) FROM sale_items WHERE sale_id = s.id)"
        ).fetchone()[0]
    finally:
        conn.close()
    assert bad == 0
    return str(integrity), int(sales)


def fingerprint(folder: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every file below `folder`."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_demo_create_makes_a_database_of_about_the_size_asked_and_that_many_images(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    env = {"CAPSULE_DATABASE": str(shop / "db" / "till.db"), "CAPSULE_UPLOADS": str(shop / "images")}
    proc = demo(shop, "--size", "3M", "--images", "40", env=env)
    assert proc.returncode == 0, describe(proc)
    database = shop / "db" / "till.db"
    # Nothing half-made is left beside them.
    assert sorted(p.name for p in (shop / "db").iterdir()) == ["till.db"]
    assert sorted(p.name for p in shop.iterdir()) == ["db", "images"]
    assert 2.5 * MiB <= database.stat().st_size <= 3.5 * MiB
    integrity, sales = integrity_and_sales(database)
    assert integrity == "ok"
    assert sales > 1000
    images = files_under(shop / "images")
    assert len(images) == 40
    # The images folder is CAPSULE_UPLOADS itself: categories directly inside it.
    assert not any(path.startswith("products/") for path in images)
    assert "Made a sample database" in proc.stdout and str(database) in proc.stdout
    assert "Made 40 sample product images" in proc.stdout and str(shop / "images") in proc.stdout


def test_demo_create_leaves_what_is_there_alone(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    first = demo(shop, "--size", "1M", "--images", "5")
    assert first.returncode == 0, describe(first)
    before = fingerprint(shop)
    assert len(files_under(shop / "data" / "uploads" / "products")) == 5

    again = demo(shop, "--size", "2M", "--images", "9")
    assert again.returncode == 0, describe(again)
    assert fingerprint(shop) == before
    assert "Left data/pos.db as it was" in again.stdout
    assert "Left data/uploads/products as it was" in again.stdout
    assert "Made" not in again.stdout


def test_demo_create_makes_only_the_missing_half(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    database = shop / "data" / "pos.db"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"the shop's own database")
    (shop / "data" / "uploads" / "products").mkdir(parents=True)  # there, but empty
    proc = demo(shop, "--size", "1M", "--images", "3")
    assert proc.returncode == 0, describe(proc)
    assert database.read_bytes() == b"the shop's own database"
    assert len(files_under(shop / "data" / "uploads" / "products")) == 3
    assert "Left data/pos.db as it was" in proc.stdout
    assert "Made 3 sample product images" in proc.stdout


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--size", "0", "at least"),
        ("--size", "lots", "like 20M"),
        ("--size", "-5M", "like 20M"),
        ("--size", "infM", "like 20M"),
        ("--images", "-1", "0 or more"),
        ("--images", "many", "not a valid integer"),
    ],
)
def test_demo_create_refuses_bad_values_and_makes_nothing(
    tmp_path: Path, option: str, value: str, expected: str
) -> None:
    shop = tmp_path / "shop"
    proc = demo(shop, option, value)
    assert proc.returncode == 2, describe(proc)
    error = proc.stderr.strip().splitlines()[-1]
    assert option in error and expected in error, describe(proc)
    assert list(shop.iterdir()) == []


def test_demo_create_that_cannot_write_says_so_and_leaves_nothing_half_made(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "data").write_text("a file where the data folder should be")
    proc = demo(shop, "--size", "1M", "--images", "2")
    assert proc.returncode == 1, describe(proc)
    error = one_line_error(proc)
    assert "could not make the sample database data/pos.db" in error
    assert sorted(p.name for p in shop.iterdir()) == ["data"]


def test_demo_create_killed_midway_leaves_nothing_in_place_and_the_next_run_makes_it(tmp_path: Path) -> None:
    shop = tmp_path / "shop"
    data = shop / "data"
    data.mkdir(parents=True)
    proc = subprocess.Popen(
        [*CAPSULE, "demo", "create", "--size", "200M", "--images", "3"],
        cwd=shop,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 4 * MiB for p in data.glob("pos.db*")):
            assert proc.poll() is None and time.monotonic() < deadline, "no partial database appeared"
            time.sleep(0.05)
        proc.kill()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert not (data / "pos.db").exists()
    assert list(data.glob("pos.db*")) != []  # the partial one, under its own name

    again = demo(shop, "--size", "1M", "--images", "3")
    assert again.returncode == 0, describe(again)
    assert "Made a sample database" in again.stdout
    assert sorted(p.name for p in data.iterdir()) == ["pos.db", "uploads"]
    assert integrity_and_sales(data / "pos.db")[0] == "ok"


def test_the_readme_first_command_backs_up_a_sample_shop_and_serves(tmp_path: Path) -> None:
    """The README's first command, as written, less the install this test runs from; `capsule
    serve` at its end on a free port (8000 may be taken here), stopped as Ctrl-C stops it."""
    text = README.read_text(encoding="utf-8")
    command = re.search(r"\*\*Try it\*\*.*?```sh\n(.*?)\n```", text, re.S)
    assert command is not None
    steps = [step.strip() for step in command.group(1).split("&&")]
    assert steps[0] == "python3 -m pip install ."
    assert steps[1] == "capsule demo create"
    assert steps[-1] == "capsule serve"
    shop = tmp_path / "shop"
    shop.mkdir()
    env = clean_env()
    env["PATH"] = os.pathsep.join([str(Path(CAPSULE[0]).parent), env.get("PATH", "")])
    script = " && ".join(steps[1:-1]).replace("capsule ", shlex.join(CAPSULE) + " ")
    proc = subprocess.run(
        ["sh", "-c", script], cwd=shop, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, describe(proc)
    assert "Traceback" not in proc.stderr
    assert 18 * MiB <= (shop / "data" / "pos.db").stat().st_size <= 22 * MiB
    assert len(files_under(shop / "data" / "uploads" / "products")) == 300
    listed = proc.stdout.splitlines()
    assert any("data/pos.db" in line for line in listed)
    assert any("data/uploads/products" in line for line in listed)

    serve = subprocess.Popen(
        [*CAPSULE, "serve", "--port", "0"],
        cwd=shop,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert serve.stdout is not None
        said = [serve.stdout.readline()]
        while said[-1] and not said[-1].startswith("Ctrl-C or SIGTERM stops it"):
            said.append(serve.stdout.readline())
        serve.send_signal(signal.SIGINT)
        rest, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()
    assert said[0].startswith("Capsule is running the scheduler, the worker, HTTP at http://127.0.0.1:")
    assert not any("now, as it has no snapshot yet" in line for line in said)
    assert said[-1].startswith("Ctrl-C or SIGTERM stops it")
    assert (serve.returncode, rest) == (0, "Stopped (SIGINT); no step was cut short.\n")
