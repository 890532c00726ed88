"""What the readers produce and the rules that drop records: :class:`Thread` and
:class:`Response`, the :class:`Counts` every dropped record lands in, parsing of single
fields (a bad one raises :class:`BadField`, which the readers count and skip) and the pure
filters (deleted, removed, bot, moderator, too young to have mature scores)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from ambient_rlhf.data import labels as L
from ambient_rlhf.data.config import FilterConfig

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


# ---- field parsing ----------------------------------------------------------------------
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


def get_bool(o: dict, key: str) -> bool:
    v = o.get(key)
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def strip_prefix(name: str) -> str:
    """``t3_abc`` -> ``abc`` (Reddit fullnames to ids)."""
    return name[3:] if len(name) > 3 and name[0] == "t" and name[2] == "_" else name


# ---- filters (pure) ---------------------------------------------------------------------
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
