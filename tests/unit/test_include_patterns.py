"""`--include` globs: which paths of a files snapshot a restore takes."""

from __future__ import annotations

import pytest

from capsule.adapters.errors import RestoreRefused
from capsule.adapters.files.restore import Selection

PATHS = [
    "top.jpg",
    "shoes",
    "shoes/red.jpg",
    "shoes/blue.png",
    "shoes/kids",
    "shoes/kids/small.jpg",
    "bags",
    "bags/tote.jpg",
    "bags/a.jpg",
    "bags/b.jpg",
    "bags/c.jpg",
]


def selected(*patterns: str) -> list[str]:
    selection = Selection(patterns)
    return [p for p in PATHS if selection(p)]


def test_no_pattern_selects_everything():
    selection = Selection()
    assert selection.everything
    assert all(selection(p) for p in PATHS)
    assert selection.unmatched() == []


def test_a_star_stays_within_one_folder():
    assert selected("shoes/*.jpg") == ["shoes/red.jpg"]
    assert selected("*.jpg") == ["top.jpg"]
    assert not Selection(["*red.jpg"])("shoes/red.jpg")
    assert not Selection(["shoes*jpg"])("shoes/red.jpg")


def test_a_double_star_crosses_folders():
    assert selected("**/*.jpg") == [
        "top.jpg",
        "shoes/red.jpg",
        "shoes/kids/small.jpg",
        "bags/tote.jpg",
        "bags/a.jpg",
        "bags/b.jpg",
        "bags/c.jpg",
    ]
    assert selected("shoes/**/*.jpg") == ["shoes/red.jpg", "shoes/kids/small.jpg"]
    assert selected("shoes/**") == [p for p in PATHS if p.startswith("shoes/")]


def test_a_question_mark_is_one_character_of_a_name():
    assert selected("bags/?.jpg") == ["bags/a.jpg", "bags/b.jpg", "bags/c.jpg"]
    assert selected("to?.jpg") == ["top.jpg"]
    assert not Selection(["shoes?red.jpg"])("shoes/red.jpg")


def test_classes_and_negated_classes():
    assert selected("bags/[ab].jpg") == ["bags/a.jpg", "bags/b.jpg"]
    assert selected("bags/[!a].jpg") == ["bags/b.jpg", "bags/c.jpg"]
    assert selected("bags/[^ab].jpg") == ["bags/c.jpg"]
    assert selected("bags/[a-b].jpg") == ["bags/a.jpg", "bags/b.jpg"]


def test_other_characters_are_literal():
    selection = Selection(["price(1).jpg", "a+b.jpg"])
    assert selection("price(1).jpg")
    assert selection("a+b.jpg")
    assert not selection("price1.jpg")
    assert not selection("aab.jpg")


def test_a_folder_pattern_selects_everything_under_it():
    assert selected("shoes") == [p for p in PATHS if p == "shoes" or p.startswith("shoes/")]
    assert selected("shoes/kids/") == ["shoes/kids", "shoes/kids/small.jpg"]
    assert selected("sho*") == selected("shoes")


def test_a_leading_slash_or_dot_slash_is_ignored():
    for pattern in ("/shoes/*.jpg", "./shoes/*.jpg", "././shoes/*.jpg", "  shoes/*.jpg  "):
        assert Selection([pattern]).patterns == ["shoes/*.jpg"]
        assert selected(pattern) == ["shoes/red.jpg"]


@pytest.mark.parametrize("pattern", ["", "   ", "/", "./", "//", "././"])
def test_an_empty_pattern_is_refused(pattern):
    with pytest.raises(RestoreRefused, match="matches nothing"):
        Selection([pattern])


def test_unmatched_patterns_are_reported():
    selection = Selection(["shoes/*.jpg", "hats/*", "**/*.gif"])
    for path in PATHS:
        selection(path)
    assert selection.unmatched() == ["hats/*", "**/*.gif"]


def test_every_pattern_that_matches_is_recorded_even_on_the_same_path():
    selection = Selection(["shoes", "**/red.jpg"])
    assert selection("shoes/red.jpg")
    assert selection.unmatched() == []
