"""Dump records and what they become: the declared schemas of the lines the data stage
reads (checked by msgspec), the :class:`Thread` / :class:`Response` the readers assemble,
the :class:`Counts` every dropped record lands in, field parsing of untyped rows
(:class:`BadField`) and the pure filters.

Schemas.

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
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ambient_rlhf.data import labels as L
from ambient_rlhf.data.config import FilterConfig


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


# ---------------------------------------------------------------- threads, counters

DELETED_TEXT = ("[deleted]", "[removed]")
DELETED_AUTHOR = ("[deleted]", "[removed]", "")
MOD_DISTINGUISHED = ("moderator", "admin")
DAY = 86400.0


class Counts:
    """Nested counters ``group -> key -> n`` (the manifest's ``counts``)."""

    def __init__(self) -> None:
        self.d: dict[str, dict[str, int]] = {}

    def group(self, group: str) -> dict[str, int]:
        """The counter dict of ``group`` (``g[key] += 1`` in hot loops)."""
        g = self.d.get(group)
        if g is None:
            g = self.d[group] = defaultdict(int)
        return g

    def inc(self, group: str, key: str, n: int = 1) -> None:
        self.group(group)[key] += n

    def get(self, group: str, key: str) -> int:
        return self.d.get(group, {}).get(key, 0)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {g: dict(sorted((k, n) for k, n in v.items() if n)) for g, v in self.d.items()}


@dataclass
class Response:
    response_id: str
    text: str
    score: int
    created_utc: float
    author: str | None = None
    sentiment_sum: float = 0.0
    n_replies: int = 0

    @property
    def reply_sentiment(self) -> float | None:
        return L.mean_or_none(self.sentiment_sum, self.n_replies)


@dataclass
class Thread:
    thread_id: str
    prompt: str
    prompt_score: int | None
    prompt_created_utc: float | None
    source: str
    community: str | None = None
    responses: list[Response] = field(default_factory=list)
    # SHP files carry their pairs: (chosen_index, rejected_index) into ``responses``
    given_pairs: list[tuple[int, int]] | None = None


# ---------------------------------------------------------------- field parsing

class BadField(ValueError):
    """A missing field or a value of the wrong type (becomes a bad record)."""


def get_str(o: dict, key: str, required: bool = True, default: str | None = None) -> str | None:
    v = o.get(key)
    if type(v) is str:  # fast path: the common case
        return v
    if v is None:
        if required:
            raise BadField(f"missing field '{key}'")
        return default
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)  # numeric ids in tables
    raise BadField(f"field '{key}': expected text, got {type(v).__name__}")


def get_num(o: dict, key: str, required: bool = True) -> float | None:
    """A number; numeric strings (old Pushshift dumps, CSV cells) are accepted."""
    v = o.get(key)
    if type(v) is int or type(v) is float:  # fast path (bool is not int here)
        if v == v and v not in (math.inf, -math.inf):
            return float(v)
    if v is None or (isinstance(v, str) and not v.strip()):
        if required:
            raise BadField(f"missing field '{key}'")
        return None
    if isinstance(v, bool):
        raise BadField(f"field '{key}': expected a number, got {v!r}")
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            raise BadField(f"field '{key}': expected a number, got {v[:30]!r}") from None
    else:
        raise BadField(f"field '{key}': expected a number, got {type(v).__name__}")
    if not math.isfinite(f):
        raise BadField(f"field '{key}': not a finite number ({v!r})")
    return f


def get_int(o: dict, key: str, required: bool = True) -> int | None:
    v = o.get(key)
    if type(v) is int:  # fast path
        return v
    f = get_num(o, key, required)
    if f is None:
        return None
    if not float(f).is_integer():
        raise BadField(f"field '{key}': expected an integer, got {o.get(key)!r}")
    return int(f)


def strip_prefix(name: str) -> str:
    """``t3_abc`` -> ``abc`` (Reddit fullnames to ids)."""
    return name[3:] if len(name) > 3 and name[0] == "t" and name[2] == "_" else name


# ---------------------------------------------------------------- filters (pure)

def response_drop_reason(
    text: str, author: str | None, op_author: str | None, stickied: bool, distinguished: str | None,
    filters: FilterConfig, bots: frozenset[str],
) -> str | None:
    """Why a candidate response is dropped (None = keep), checked in this order:
    ``deleted_text, deleted_author, bot, op_reply, stickied_distinguished, empty, too_long``.

    ``author=None`` means the source has no author column: the author checks pass."""
    if text.strip() in DELETED_TEXT:
        return "deleted_text"
    if author is not None:
        if author.strip() in DELETED_AUTHOR:
            return "deleted_author"
        if author.lower() in bots:
            return "bot"
        if op_author is not None and op_author not in DELETED_AUTHOR and author == op_author:
            return "op_reply"
    if stickied or (distinguished or "").lower() in MOD_DISTINGUISHED:
        return "stickied_distinguished"
    if not text.strip():
        return "empty"
    if len(text) > filters.max_chars:
        return "too_long"
    return None


def maturity_reason(retrieved: float | None, thread_created: float, filters: FilterConfig) -> str | None:
    """Score maturity: the thread must be ``min_age_days`` old when the record's score was
    retrieved (``retrieved - thread_created``).  A record without a retrieval time is
    dropped as ``no_retrieved_on`` unless ``allow_missing_retrieved_on``."""
    if retrieved is None:
        return None if filters.allow_missing_retrieved_on else "no_retrieved_on"
    if retrieved - thread_created < filters.min_age_days * DAY:
        return "immature"
    return None


def prompt_text(title: str, body: str | None) -> str:
    """Title, a blank line, then the body (when there is one)."""
    body = (body or "").strip()
    return f"{title.strip()}\n\n{body}" if body else title.strip()


def bot_set(filters: FilterConfig) -> frozenset[str]:
    return frozenset(b.lower() for b in filters.bots)
