"""Declared schemas of the dump records the data stage reads, checked by msgspec.

A Pushshift / Arctic Shift line is decoded straight into :class:`Submission` or
:class:`Comment`: only the fields below are read (the rest of the line is skipped
unparsed), and a value of another type anywhere -- ``"distinguished": true``,
``"subreddit": 123``, a missing ``body`` -- is a :class:`RecordError` naming the field,
which the reader counts as a bad record with its file:line.  Decoding is lax in one
respect, on purpose: numbers written as strings (``"score": "12"``, old Pushshift dumps)
and booleans written as ``"true"``/``0``/``1`` are accepted.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec


class Submission(msgspec.Struct):
    """A line of a ``*_submissions`` dump (the fields the data stage uses)."""

    created_utc: float
    title: str
    score: int
    id: str | None = None
    name: str | None = None  # fullname t3_<id>; the id when ``id`` is absent
    selftext: str | None = ""
    author: str | None = None
    subreddit: str | None = None
    over_18: bool | None = False
    stickied: bool | None = False
    distinguished: str | None = None
    removed_by_category: str | None = None
    retrieved_on: float | None = None
    retrieved_utc: float | None = None


class Comment(msgspec.Struct):
    """A line of a ``*_comments`` dump (the fields the data stage uses)."""

    link_id: str
    parent_id: str
    created_utc: float
    body: str
    score: int
    id: str | None = None
    name: str | None = None  # fullname t1_<id>; the id when ``id`` is absent
    author: str | None = None
    subreddit: str | None = None
    stickied: bool | None = False
    distinguished: str | None = None
    retrieved_on: float | None = None
    retrieved_utc: float | None = None


class RecordError(ValueError):
    """A line that is not a record of the schema; ``kind`` is the short reason counted."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


_AT = re.compile(r"^(.*?)(?: - at `\$\.?(.*)`)?$", re.S)
_MISSING = re.compile(r"Object missing required field `(.*)`")
_TYPES = {"str": "text", "int": "an integer", "float": "a number", "bool": "a boolean", "null": "null",
          "object": "an object", "array": "a list"}


def decoder(schema: type) -> msgspec.json.Decoder:
    """The decoder of one schema (lax: numeric strings are numbers)."""
    return msgspec.json.Decoder(schema, strict=False)


def explain(e: Exception) -> RecordError:
    """A msgspec error as a one-line reason that names the field."""
    if isinstance(e, msgspec.ValidationError):
        text, at = _AT.match(str(e)).groups()
        m = _MISSING.match(text)
        if m:
            field = f"{at}.{m.group(1)}" if at else m.group(1)
            return RecordError(f"missing field '{field}'", f"missing field '{field}'")
        text = re.sub(r"`([^`]*)`", lambda g: " or ".join(_TYPES.get(t.strip(), t.strip())
                                                            for t in g.group(1).split("|")), text)
        text = text[0].lower() + text[1:] if text else text
        if not at:
            return RecordError(f"not a record: {text}", "not an object")
        return RecordError(f"field '{at}': {text}", f"field '{at}'")
    return RecordError(f"malformed JSON ({str(e)[:80]})", "malformed JSON")


def finite(value: float, field: str) -> float:
    """``value`` when finite (lax decoding lets ``"nan"`` through), else a RecordError."""
    if math.isfinite(value):
        return value
    raise RecordError(f"field '{field}': not a finite number ({value!r})", f"field '{field}'")


def record_id(rec: Any, field: str = "id") -> str:
    """The record's id: ``id``, else ``name`` without its ``t1_``/``t3_`` prefix."""
    if rec.id:
        return rec.id
    name = rec.name or ""
    if len(name) > 3 and name[0] == "t" and name[2] == "_":
        return name[3:]
    if name:
        return name
    raise RecordError("missing field 'id' (and no 'name')", "missing field 'id'")
