"""The files benchmark's tree: generated the same way every time, realistic, changed as asked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks.bench_files import (
    choose_probe,
    compare_tree,
    hash_tree,
    list_files,
    mutate_tree,
)
from capsule.adapters.sampleshop.images import IMAGE_SIZES, SMALL_SIZES, generate_tree, plan_tree

FILES = 300
# A smaller tree of the same shape, to keep the test fast.
SIZES = SMALL_SIZES

MAGIC: dict[str, Callable[[bytes], bool]] = {
    "jpg": lambda data: data.startswith(b"\xff\xd8\xff") and data.endswith(b"\xff\xd9"),
    "png": lambda data: data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"),
    "webp": lambda data: data[:4] == b"RIFF" and data[8:12] == b"WEBP",
    "svg": lambda data: data.startswith(b"<svg ") and data.rstrip().endswith(b"</svg>"),
    "json": lambda data: isinstance(json.loads(data), dict),
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree") / "uploads"
    generate_tree(root, FILES, seed=7, sizes=SIZES)
    return root


def test_the_same_seed_gives_the_same_bytes(tree: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_tree(again, FILES, seed=7, sizes=SIZES)
    assert hash_tree(again) == hash_tree(tree)
    other = tmp_path / "other"
    generate_tree(other, FILES, seed=8, sizes=SIZES)
    assert hash_tree(other) != hash_tree(tree)


def test_sizes_kinds_and_signatures(tree: Path) -> None:
    plan = plan_tree(FILES, seed=7, sizes=SIZES)
    assert list_files(tree) == sorted(f.path for f in plan)
    kinds = {f.kind for f in plan}
    assert {"jpg", "png", "webp"} <= kinds
    assert sum(f.kind in {"svg", "json"} for f in plan) < FILES * 0.15
    for entry in plan:
        data = (tree / entry.path).read_bytes()
        assert len(data) == entry.size
        assert SIZES.minimum <= entry.size <= SIZES.maximum
        assert entry.path.endswith(f".{entry.kind}")
        assert MAGIC[entry.kind](data), entry.path
    assert len({f.path.rpartition("/")[0] for f in plan}) > 3


def test_image_sizes_are_clipped_and_scale_to_a_total() -> None:
    plan = plan_tree(2000, seed=1)
    sizes = sorted(f.size for f in plan)
    assert IMAGE_SIZES.minimum <= sizes[0] and sizes[-1] <= IMAGE_SIZES.maximum
    assert 30_000 < sizes[len(sizes) // 2] < 100_000
    scaled = plan_tree(2000, seed=1, total=50_000_000)
    assert 45_000_000 < sum(f.size for f in scaled) < 55_000_000
    assert [f.path for f in scaled] == [f.path for f in plan]
    probe = choose_probe(plan)
    assert 500_000 <= probe.size <= 2_000_000


def test_generate_refuses_a_folder_with_files(tree: Path) -> None:
    with pytest.raises(ValueError, match="not empty"):
        generate_tree(tree, 3, sizes=SIZES)


def test_mutate_changes_the_asked_fraction(tmp_path: Path) -> None:
    root = tmp_path / "uploads"
    generate_tree(root, FILES, seed=3, sizes=SIZES)
    before = hash_tree(root)
    mtimes = {p: (root / p).stat().st_mtime_ns for p in before}
    mutation = mutate_tree(root, fraction=0.05, seed=3)
    after = hash_tree(root)
    changed = sorted(p for p in before if before[p] != after[p])
    assert changed == mutation.paths
    assert len(changed) == round(FILES * 0.05)
    assert mutation.appended >= 1
    assert all((root / p).stat().st_mtime_ns > mtimes[p] for p in changed)
    comparison = compare_tree(root, before)
    assert not comparison["ok"]
    assert comparison["different"] == len(changed)
