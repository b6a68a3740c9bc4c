"""The paper key: six lines that come back as the same secret, and a typo that says where it is."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from capsule.adapters.repository.paperkey import ALPHABET, PaperKey, PaperKeyInvalid, decode, encode

KEY = PaperKey("3f2a1b2c", bytes(range(32)))


def test_six_lines_of_three_groups_of_four_come_back_as_the_same_key() -> None:
    lines = encode(KEY)
    assert len(lines) == 6
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{4}(-[0-9A-HJKMNP-TV-Z]{4}){2}", line) for line in lines)
    assert decode("\n".join(lines)) == KEY


@given(st.text("0123456789abcdef", min_size=8, max_size=8), st.binary(min_size=32, max_size=32))
def test_any_key_round_trips(prefix: str, secret: bytes) -> None:
    key = PaperKey(prefix, secret)
    assert decode("\n".join(encode(key))) == key


def test_case_spaces_dashes_headings_and_look_alike_letters_are_forgiven() -> None:
    lines = encode(PaperKey("00000000", bytes(32)))  # all zeros: plenty of 0 and 1 to mistype
    typed = "# my heading\n" + "\n".join(
        "  " + line.lower().replace("-", " ").replace("0", "o").replace("1", "l") for line in lines
    )
    assert decode(typed) == PaperKey("00000000", bytes(32))
    assert decode("".join(lines)) == PaperKey("00000000", bytes(32))  # on one line, no separators


def test_every_single_character_typo_is_found_and_its_group_named() -> None:
    key = PaperKey(os.urandom(4).hex(), os.urandom(32))
    text = "".join(line.replace("-", "") for line in encode(key))
    for i, right in enumerate(text):
        for wrong in ALPHABET.replace(right, ""):
            typed = text[:i] + wrong + text[i + 1 :]
            with pytest.raises(PaperKeyInvalid) as caught:
                decode(typed)
            line, group = i // 12 + 1, i % 12 // 4 + 1
            assert f"line {line} is wrong, most likely in its group {group} " in str(caught.value)


@given(st.data())
def test_two_typos_in_one_line_are_found(data: st.DataObject) -> None:
    text = "".join(line.replace("-", "") for line in encode(KEY))
    line = data.draw(st.integers(0, 5))
    i, j = data.draw(st.lists(st.integers(0, 11), min_size=2, max_size=2, unique=True))
    typed = list(text)
    for k in (i, j):
        typed[line * 12 + k] = data.draw(st.sampled_from(ALPHABET.replace(text[line * 12 + k], "")))
    with pytest.raises(PaperKeyInvalid, match=f"line {line + 1} is wrong"):
        decode("".join(typed))


def test_swapped_neighbours_and_swapped_lines_are_found() -> None:
    lines = [line.replace("-", "") for line in encode(KEY)]
    text = "".join(lines)
    for i in range(len(text) - 1):
        if text[i] != text[i + 1]:
            with pytest.raises(PaperKeyInvalid):
                decode(text[:i] + text[i + 1] + text[i] + text[i + 2 :])
    with pytest.raises(PaperKeyInvalid, match="line 2 is wrong"):
        decode("\n".join([lines[0], lines[2], lines[1], *lines[3:]]))


def test_a_missing_or_extra_character_says_how_long_the_key_should_be() -> None:
    text = "".join(line.replace("-", "") for line in encode(KEY))
    with pytest.raises(PaperKeyInvalid, match=r"71 characters long, not 72") as caught:
        decode(text[:30] + text[31:])
    assert "line 3 is wrong" in str(caught.value)
    with pytest.raises(PaperKeyInvalid, match="not 72: line 6 is incomplete"):
        decode(text[:-1])
    with pytest.raises(PaperKeyInvalid, match="text follows its last line"):
        decode(text + "7")
    with pytest.raises(PaperKeyInvalid, match="cannot hold 'U'"):
        decode(text[:5] + "U" + text[6:])
    with pytest.raises(PaperKeyInvalid, match="no paper key was given"):
        decode("\n# nothing\n")


def test_the_secret_never_shows_in_its_repr() -> None:
    assert "secret=<secret>" in repr(KEY)
    assert bytes(range(32)).hex() not in repr(KEY)


def test_the_example_in_the_format_document_reads_back() -> None:
    """docs/repository-format.md, section 5.5, shows a real paper key: it must decode as the document says."""
    document = (Path(__file__).resolve().parents[2] / "docs" / "repository-format.md").read_text()
    section = document[document.index("### 5.5 The paper key") : document.index("## 6. Blobs")]
    example = re.findall(r"^[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$", section, flags=re.MULTILINE)
    assert len(example) == 6
    assert decode("\n".join(example)).repository_prefix == "976cd95e"


def independent_reading(text: str) -> bytes:
    """The 37 bytes of a paper key, read as docs/repository-format.md (5.5) says, sharing no code
    with Capsule's reader."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    exp, value = [], 1
    for _ in range(31):  # powers of a = x in GF(2)[x] / (x^5 + x^2 + 1)
        exp.append(value)
        value = (value << 1) ^ (0b100101 if value & 0b10000 else 0)

    def times(a: int, b: int) -> int:
        return 0 if 0 in (a, b) else exp[(exp.index(a) + exp.index(b)) % 31]

    rows = [r for r in text.splitlines() if r.strip() and not r.lstrip().startswith("#")]
    symbols = [alphabet.index(c) for c in "".join(rows).replace("-", "").replace(" ", "").upper()]
    assert len(symbols) == 72
    bits = 0
    for n in range(6):
        word = [n + 1, *symbols[12 * n : 12 * n + 12]]
        s0 = s1 = 0
        for j, v in enumerate(word):
            s0 ^= v
            s1 ^= times(v, exp[j])
        assert (s0, s1) == (0, 0), f"line {n + 1}"
        for v in word[1:11]:
            bits = bits << 5 | v
    assert bits & 0xF == 0
    return (bits >> 4).to_bytes(37, "big")


@given(st.binary(min_size=4, max_size=4), st.binary(min_size=32, max_size=32))
def test_the_format_document_alone_is_enough_to_read_a_paper_key(prefix: bytes, secret: bytes) -> None:
    printed = "\n".join(encode(PaperKey(prefix.hex(), secret)))
    assert independent_reading(printed) == b"\x01" + prefix + secret
