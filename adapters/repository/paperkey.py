"""The paper key: a key file's secret as six short lines a person can write down and type back.

What it holds (37 bytes): a format byte (1), the first 4 bytes of the repository id (so that a
paper key typed on the wrong shop's machine is named as such) and the key file's 32-byte secret.
The key entry it unwraps is found by trying the repository's key-file entries, so its id need not
be written down.

How it is written: the bytes, padded with four zero bits, as 60 symbols of Crockford's base32
(`0-9 A-Z` without I, L, O, U), ten to a line. Each line gets two check symbols, which make it,
with the line's number in front, a Reed-Solomon codeword over GF(32) with the roots 1 and a (= 2):
any one wrong symbol in a line is found and located (the two sums say which it is), any two are
found, and a line typed in the place of another fails because its number is part of the code.
Reading forgives case, spaces and dashes, and takes O for 0 and I or L for 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from capsule.domain.errors import CapsuleError, Category

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_VALUE = {c: i for i, c in enumerate(ALPHABET)} | {"O": 0, "I": 1, "L": 1}
FORMAT = 1
PREFIX_BYTES = 4
SECRET_BYTES = 32
PAYLOAD_BYTES = 1 + PREFIX_BYTES + SECRET_BYTES
DATA_SYMBOLS = 10
LINE_SYMBOLS = DATA_SYMBOLS + 2
GROUP = 4
LINES = 6
SYMBOLS = LINES * LINE_SYMBOLS


class PaperKeyInvalid(CapsuleError):
    """Raised when typed paper-key text cannot be read back: a typo, a missing or an extra character."""

    category = Category.INVALID_INPUT


@dataclass(frozen=True)
class PaperKey:
    repository_prefix: str
    """The first 8 hex digits of the repository id."""
    secret: bytes

    def __repr__(self) -> str:  # keep the secret out of logs and tracebacks
        return f"PaperKey(repository_prefix={self.repository_prefix!r}, secret=<secret>)"


# GF(32) with the primitive polynomial x^5 + x^2 + 1; a = 2 generates it.
_EXP = [0] * 62
_LOG = [0] * 32
_x = 1
for _i in range(31):
    _EXP[_i] = _EXP[_i + 31] = _x
    _LOG[_x] = _i
    _x <<= 1
    if _x & 32:
        _x ^= 0b100101


def _mul(a: int, b: int) -> int:
    return 0 if a == 0 or b == 0 else _EXP[_LOG[a] + _LOG[b]]


def _div(a: int, b: int) -> int:
    return 0 if a == 0 else _EXP[(_LOG[a] - _LOG[b]) % 31]


def _syndromes(word: list[int]) -> tuple[int, int]:
    s0 = s1 = 0
    for j, v in enumerate(word):
        s0 ^= v
        s1 ^= _mul(v, _EXP[j])
    return s0, s1


def _checks(number: int, data: list[int]) -> list[int]:
    """The two check symbols that make `number, data, c1, c2` a codeword."""
    s0, s1 = _syndromes([number, *data])
    p, q = _EXP[DATA_SYMBOLS + 1], _EXP[DATA_SYMBOLS + 2]
    # c1 + c2 = s0 and c1·p + c2·q = s1 (addition is xor)
    c2 = _div(s1 ^ _mul(s0, p), p ^ q)
    return [s0 ^ c2, c2]


def encode(paper: PaperKey) -> list[str]:
    """The six lines to write down, each three groups of four symbols: `7H2K-QW9D-3MXA`."""
    prefix = bytes.fromhex(paper.repository_prefix)
    if len(prefix) != PREFIX_BYTES or len(paper.secret) != SECRET_BYTES:
        raise ValueError("a paper key holds a 4-byte repository prefix and a 32-byte secret")
    number = int.from_bytes(bytes([FORMAT]) + prefix + paper.secret) << 4
    symbols = [(number >> (5 * (LINES * DATA_SYMBOLS - 1 - i))) & 31 for i in range(LINES * DATA_SYMBOLS)]
    lines = []
    for n in range(LINES):
        data = symbols[n * DATA_SYMBOLS : (n + 1) * DATA_SYMBOLS]
        text = "".join(ALPHABET[v] for v in [*data, *_checks(n + 1, data)])
        lines.append("-".join(text[g : g + GROUP] for g in range(0, LINE_SYMBOLS, GROUP)))
    return lines


def _symbols(text: str) -> list[int]:
    values = []
    for row, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        for ch in line.upper():
            if ch in " \t-":
                continue
            if ch not in _VALUE:
                raise PaperKeyInvalid(
                    f"the paper key cannot hold {ch!r} (typed line {row}): it is written with the "
                    f"digits and the letters A-Z but U; type it again as written"
                )
            values.append(_VALUE[ch])
    return values


def _where(n: int, word: list[int]) -> str:
    """Which group of line `n` (1-based) is wrong, when the line's two sums can tell."""
    s0, s1 = _syndromes(word)
    if s0 and s1:
        j = _LOG[_div(s1, s0)]
        if 1 <= j <= LINE_SYMBOLS:
            group = (j - 1) // GROUP + 1
            typed = "".join(ALPHABET[v] for v in word[1:])[(group - 1) * GROUP : group * GROUP]
            return f"line {n} is wrong, most likely in its group {group} ({typed}): check it on the paper"
    return f"line {n} is wrong (more than one character, or a line typed in the place of another)"


def decode(text: str) -> PaperKey:
    """The paper key in `text` (lines starting with `#` are skipped), checked line by line.

    `PaperKeyInvalid` names the first line that fails and, for one typo, its group.
    """
    values = _symbols(text)
    if not values:
        raise PaperKeyInvalid("no paper key was given: type its six lines (or pipe them in)")
    for n in range(LINES):
        word = [n + 1, *values[n * LINE_SYMBOLS : (n + 1) * LINE_SYMBOLS]]
        if len(word) <= LINE_SYMBOLS:
            raise PaperKeyInvalid(
                f"the paper key is {len(values)} characters long, not {SYMBOLS}: line {n + 1} is "
                "incomplete; a character or a line was left out"
            )
        if _syndromes(word) != (0, 0):
            extra = (
                f"; it is also {len(values)} characters long, not {SYMBOLS}: a character may be "
                "missing or doubled there"
                if len(values) != SYMBOLS
                else ""
            )
            raise PaperKeyInvalid(f"the paper key's {_where(n + 1, word)}{extra}")
    if len(values) != SYMBOLS:
        raise PaperKeyInvalid(
            f"the paper key is {len(values)} characters long, not {SYMBOLS}: text follows its last line"
        )
    number = 0
    for n in range(LINES):
        for v in values[n * LINE_SYMBOLS : n * LINE_SYMBOLS + DATA_SYMBOLS]:
            number = (number << 5) | v
    if number & 0xF:
        raise PaperKeyInvalid("the paper key's last line is wrong: its padding is not zero")
    raw = (number >> 4).to_bytes(PAYLOAD_BYTES)
    if raw[0] != FORMAT:
        raise PaperKeyInvalid(
            f"this paper key is in format {raw[0]}, which this Capsule does not read; upgrade Capsule"
        )
    return PaperKey(raw[1 : 1 + PREFIX_BYTES].hex(), raw[1 + PREFIX_BYTES :])
