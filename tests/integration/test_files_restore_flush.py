"""A small files restore flushes what it wrote, file by file and folder by folder, not the filesystem:
every folder whose entries it changed must be among them, or a power cut could lose a name."""

from __future__ import annotations

from pathlib import Path

from capsule.adapters.files.flush import existing_ancestor, flush_each, folders_to_flush


def test_a_restore_into_a_new_folder_flushes_each_folder_it_made_up_to_the_one_that_was_there(
    tmp_path: Path,
) -> None:
    to = tmp_path / "restores" / "today" / "shop"
    (tmp_path / "restores").mkdir()
    top = existing_ancestor(to)
    to.mkdir(parents=True)
    (to / "shoes" / "red").mkdir(parents=True)
    for name in ("shoes/red/a.jpg", "b.jpg"):
        (to / name).write_bytes(b"x")

    folders = folders_to_flush(to, top, ["shoes", "shoes/red"], ["shoes/red/a.jpg", "b.jpg"])

    assert top == tmp_path / "restores"
    assert folders == [to / "shoes" / "red", to / "shoes", to, to.parent, tmp_path / "restores"]
    flush_each([to / "shoes" / "red" / "a.jpg", to / "b.jpg"], folders)  # real fsyncs: they succeed


def test_a_file_restored_into_folders_that_were_there_flushes_its_folder_and_those_above_it_to_the_target(
    tmp_path: Path,
) -> None:
    to = tmp_path / "out"
    (to / "shoes" / "red").mkdir(parents=True)

    folders = folders_to_flush(to, existing_ancestor(to), [], ["shoes/red/a.jpg"])

    # The rename into place changed `shoes/red`; the ones above it are flushed too, cheaply, and
    # nothing above the target, which the restore did not touch.
    assert folders == [to / "shoes" / "red", to / "shoes", to]


def test_the_nearest_existing_folder_is_found_above_a_missing_path(tmp_path: Path) -> None:
    assert existing_ancestor(tmp_path / "a" / "b") == tmp_path
    assert existing_ancestor(tmp_path) == tmp_path
