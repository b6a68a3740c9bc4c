"""Capsule runs the same from any working folder, also one that holds packages named like its parts.

A shop server's working folder may hold its own `adapters/`, `api/` or `domain/` package, or a
`capsule/` folder. Python puts the working folder first on the path for `python -m` and `python -c`,
so a worker process started that way imported the shop's package instead of Capsule's. Everything
of Capsule's is under the one name `capsule`, and its worker processes start with `-P`.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.integration.helpers import Shop, describe, file_content_digest

PACKAGES = ("adapters", "api", "domain", "orchestrator", "capsule")


def plant_packages(folder: Path) -> Path:
    """Packages that leave a mark and fail the moment anything imports them."""
    marks = folder / "imported"
    for name in PACKAGES:
        package = folder / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(
            "from pathlib import Path\n"
            f"Path({str(marks)!r}).mkdir(exist_ok=True)\n"
            f"(Path({str(marks)!r}) / {name!r}).touch()\n"
            f"raise ImportError('the working folder package {name} was imported')\n",
            encoding="utf-8",
        )
    for module in ("sealworker", "restorepool", "cli"):
        (folder / "adapters" / f"{module}.py").write_text("raise SystemExit(99)\n", encoding="utf-8")
    return marks


@pytest.mark.slow
def test_backup_restore_and_verify_from_a_folder_holding_packages_named_like_capsules_parts(
    tmp_path: Path,
) -> None:
    shop = Shop(tmp_path / "shop")
    shop.root.mkdir()
    marks = plant_packages(shop.root)
    env = {"CAPSULE_UPLOADS": str(shop.root / "data" / "uploads" / "products")}

    made = shop.run("demo", "create", "--size", "2M", "--images", "20", env=env)
    assert made.returncode == 0, describe(made)
    assert shop.run("init", env=env).returncode == 0
    backup = shop.run("backup", "--kind", "all", env=env, timeout=300)
    assert backup.returncode == 0, describe(backup)
    assert "stopped unexpectedly" not in backup.stderr

    target = tmp_path / "restored"
    restored = shop.run("restore", "latest-database", "--to", str(target), env=env, timeout=300)
    assert restored.returncode == 0, describe(restored)
    assert file_content_digest(target / shop.db_name) == file_content_digest(shop.database)
    images = tmp_path / "images"
    restored = shop.run("restore", "latest-files", "--to", str(images), env=env, timeout=300)
    assert restored.returncode == 0, describe(restored)
    assert len([p for p in images.rglob("*") if p.is_file()]) == 20
    checked = shop.run("verify", "--read-data", env=env, timeout=300)
    assert checked.returncode == 0, describe(checked)

    assert not marks.exists(), sorted(p.name for p in marks.iterdir())


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package_named_capsule(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(root),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = tmp_path.glob("capsule_backup-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"capsule"}
    parts = {name.split("/")[1] for name in names if name.startswith("capsule/")}
    assert parts == {"adapters", "api", "domain", "orchestrator"}
    for moved in (
        "adapters/workers/sealworker.py",
        "adapters/sqlite/snapshot.py",
        "adapters/files/backup.py",
    ):
        assert f"capsule/{moved}" in names
    assert {f"capsule/{part}/py.typed" for part in parts} <= set(names)
