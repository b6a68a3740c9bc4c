"""A tree blob's entries read from JSON: the model's checks, its Python ones made once per blob.

A backup with nothing changed reads all the parent snapshot's entries (100,000 of them for a shop
of 100,000 images). `Entry`'s model checks types, the hash's pattern and the size in compiled code,
but calls two Python validators for every entry: the path's (`ensure_relative_path`) and the one
that fits the fields to the type. `decode_entries` validates with the model's own schema minus
those two calls, then checks every path of the blob at once, in a few scans of one string, and the
fields of each entry with the model's own validator. If any check fails, the blob goes through the
model as it is, which refuses it with its own error. So the result is always the model's: equal
entries (the same values, types and fields set), or the model's error. A validator added to
`Entry` and not handled here stops the import (`_shape_validator`); `tests/unit/test_entries_decode.py`
holds the two to the same results on generated input, refused input included.
"""

from __future__ import annotations

import re
from typing import Any, Final

from pydantic import TypeAdapter
from pydantic_core import SchemaValidator, core_schema

from capsule.domain.manifest import Entry

ENTRIES: Final = TypeAdapter(list[Entry])

# With the paths joined by NUL, which no valid path holds, and NUL around the whole: a NUL or "/"
# then nothing, "." or "..", then a NUL or "/" marks a path that `ensure_relative_path` refuses
# (empty; absolute; a trailing "/"; an empty, "." or ".." component anywhere).
_UNSAFE: Final = re.compile(r"[\x00/]\.{0,2}[\x00/]")
_SEPARATORS_TOGETHER: Final = ("//", "/\x00", "\x00/", "\x00\x00")
_SEPARATOR_DOT: Final = ("/.", "\x00.")


def _shape_validator() -> SchemaValidator:
    """`list[Entry]`'s validator without the model's two Python validators (checked in bulk here);
    raises at import if the model has any other, which this module would otherwise skip."""
    outer: Any = Entry.__pydantic_core_schema__
    fit = outer.get("function", {}).get("function")
    known_path_check: Any = Entry._path_is_relative_and_inside
    model = dict(outer["schema"])
    fields = dict(model["schema"]["fields"])
    path = fields["path"]["schema"]
    checks_path = path.get("function", {}).get("function")
    if (
        outer["type"] != "function-after"
        or getattr(fit, "__func__", fit) is not Entry._fields_fit_type
        or path["type"] != "function-after"
        or getattr(checks_path, "__func__", checks_path) is not known_path_check.__func__
    ):
        raise RuntimeError("Entry's validators changed: make decode_entries check what they check")
    fields["path"] = {**fields["path"], "schema": path["schema"]}
    model["schema"] = {**model["schema"], "fields": fields}
    if _has_function(model):
        raise RuntimeError("Entry has a validator decode_entries does not know: make it check it too")
    return SchemaValidator(core_schema.list_schema(model))


def _has_function(schema: object) -> bool:
    """Whether a core schema calls a validator function anywhere in it."""
    if isinstance(schema, dict):
        kind = schema.get("type")
        if isinstance(kind, str) and kind.startswith("function-"):
            return True
        return any(_has_function(v) for v in schema.values())
    if isinstance(schema, list | tuple):
        return any(_has_function(v) for v in schema)
    return False


_SHAPE: Final = _shape_validator()


def decode_entries(raw: bytes) -> list[Entry]:
    """The entries of a tree blob's plaintext, exactly as `ENTRIES.validate_json(raw)` gives them
    (or raising what it raises)."""
    try:
        entries: list[Entry] = _SHAPE.validate_json(raw)
    except ValueError:
        return ENTRIES.validate_json(raw)  # the model refuses it too, with its own error
    if not paths_safe([e.path for e in entries]):
        return ENTRIES.validate_json(raw)
    fits: Any = Entry._fields_fit_type  # the model's own check, called as the model calls it
    try:
        for entry in entries:
            fits(entry)
    except ValueError:
        return ENTRIES.validate_json(raw)
    return entries


def paths_safe(paths: list[str]) -> bool:
    """Whether `ensure_relative_path` takes every one of `paths`: a few scans of one string."""
    if not paths:
        return True
    joined = "\x00".join(paths)
    if "\\" in joined or joined.count("\x00") != len(paths) - 1:
        return False
    wrapped = f"\x00{joined}\x00"
    if not any(pair in wrapped for pair in _SEPARATORS_TOGETHER):
        # Without a separator followed by a dot or by another separator, the pattern cannot
        # match: a few substring searches, much faster than the regular expression's scan.
        return not any(dot in wrapped for dot in _SEPARATOR_DOT) or _UNSAFE.search(wrapped) is None
    return False
