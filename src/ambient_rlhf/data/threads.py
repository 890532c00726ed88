"""Thread assembly: records from :mod:`sources` -> filtered :class:`Thread` objects.

Every record ends in exactly one counter (``Counts``): kept, or dropped for a named
reason -- nothing is dropped silently.

Dumps are read in two passes (see docs/data.md, "Memory"):

1. submissions: each is filtered once; the kept ones leave a small ``SubMeta`` (prompt
   text, score, times) keyed by id;
2. comments, in file order (dumps are sorted by ``created_utc``): a thread is *opened*
   by its first comment and *closed* -- labelled, written and forgotten -- once the
   stream time passes ``created_utc + window_days`` of its submission (Reddit archives
   a thread after six months: no new comments or votes).  Only top-level comments of
   open threads are held; a direct reply adds its VADER sentiment to its parent's
   running sum and is dropped.  Memory is bounded by the threads open in one window,
   not by the number of comments.

Tables are assembled from runs of rows with the same ``prompt_id`` (the layout of the
reddit_writing_prompts CSV); SHP pair files are grouped by ``post_id`` in memory (they
are pairs, already filtered, and small).
"""

from __future__ import annotations

import heapq
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ambient_rlhf import AmbientError
from ambient_rlhf.data import labels as L
from ambient_rlhf.data.config import ColumnMap, DataConfig, FilterConfig
from ambient_rlhf.data.records import Comment, RecordError, Submission, finite, record_id
from ambient_rlhf.data.sources import BadRecords, Input, StreamDamage, iter_records, iter_table_rows, table_columns
from ambient_rlhf.logging import get_logger

log = get_logger("data.threads")

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


# ---------------------------------------------------------------- Reddit dumps

@dataclass
class SubMeta:
    """What pass 1 keeps of a kept submission."""

    prompt: str
    score: int
    created_utc: float
    author: str | None
    subreddit: str | None


_DROPPED = 0  # status of a submission that was filtered out
_CLOSED = 1  # status of a thread already closed and written


def _retrieved(rec: Any) -> float | None:
    v = rec.retrieved_on
    return rec.retrieved_utc if v is None else v


class _Damage:
    """The gaps of a damaged comment stream (``source.keep_damaged``), in stream time: a
    thread whose window overlaps one may have lost comments, so it is dropped."""

    def __init__(self) -> None:
        self.gaps: list[list[float]] = []  # [last time before, first time after (inf: none)]

    def open(self, before: float) -> None:
        self.gaps.append([before, math.inf])

    def resume(self, after: float) -> None:
        if self.gaps and self.gaps[-1][1] == math.inf:
            self.gaps[-1][1] = after

    def touches(self, created: float, window: float) -> bool:
        return any(created <= after and created + window >= before for before, after in self.gaps)


def read_submissions(path: Path, cfg: DataConfig, counts: Counts, bad: BadRecords) -> tuple[dict[str, Any], bool]:
    """Pass 1: ``{id: SubMeta}`` for kept submissions, ``{id: _DROPPED}`` for the others;
    and whether the stream was damaged (``source.keep_damaged``: some submissions lost)."""
    f = cfg.filters
    status: dict[str, Any] = {}
    sub_filter = f.subreddit.lower() if f.subreddit else None
    seen0 = bad.seen
    damaged = False
    for line, o in iter_records(path, bad, Submission, desc="submissions", keep_damaged=cfg.source.keep_damaged):
        if type(o) is StreamDamage:
            damaged = True
            continue
        try:
            sid = record_id(o)
            created = finite(o.created_utc, "created_utc")
            retrieved = _retrieved(o)
        except RecordError as e:
            bad.add(path, line, str(e), kind=e.kind)
            continue
        title, body, score, author = o.title, o.selftext or "", o.score, o.author
        counts.inc("submissions", "read")
        reason = None
        if sub_filter and (o.subreddit or "").lower() != sub_filter:
            reason = "other_subreddit"
        elif sid in status:
            reason = "duplicate_id"
        elif f.drop_nsfw and o.over_18:
            reason = "nsfw"
        elif body.strip() in DELETED_TEXT or not title.strip() or o.removed_by_category:
            reason = "deleted_prompt"
        elif o.stickied or (o.distinguished or "") in MOD_DISTINGUISHED:
            reason = "stickied_distinguished"
        elif score < f.min_prompt_score:
            reason = "low_prompt_score"
        else:
            reason = maturity_reason(retrieved, created, f)
        prompt = prompt_text(title, body) if reason is None else ""
        if reason is None and len(prompt) > f.max_prompt_chars:
            reason = "prompt_too_long"
        if reason is not None:
            counts.inc("submissions", reason)
            if reason != "duplicate_id":
                status[sid] = _DROPPED
            continue
        if retrieved is None:
            counts.inc("submissions", "kept_without_retrieved_on")
        counts.inc("submissions", "kept")
        status[sid] = SubMeta(prompt, score, created, author, o.subreddit)
    if bad.seen == seen0:
        raise AmbientError(f"{path}: no records (the file holds no non-blank line)")
    return status, damaged


class _Open:
    __slots__ = ("meta", "responses")

    def __init__(self, meta: SubMeta):
        self.meta = meta
        self.responses: dict[str, Response] = {}  # fullname t1_... -> Response


def read_reddit(inp: Input, cfg: DataConfig, counts: Counts, bad: BadRecords) -> Iterator[Thread]:
    """Pass 1 over submissions, then stream comments and yield threads as they close."""
    f = cfg.filters
    bots = bot_set(f)
    want_sentiment = cfg.labels.reply_sentiment
    status, subs_damaged = read_submissions(inp.submissions, cfg, counts, bad)
    damage = _Damage()
    window = cfg.source.window_days * DAY if cfg.source.window_days > 0 else math.inf
    sub_filter = f.subreddit.lower() if f.subreddit else None
    open_: dict[str, _Open] = {}
    heap: list[tuple[float, str]] = []
    now = -math.inf
    path = inp.comments
    source = str(inp.submissions.parent)
    peak_open = 0

    def close(tid: str) -> Thread | None:
        th = open_.pop(tid)
        status[tid] = _CLOSED
        m = th.meta
        if damage.gaps and damage.touches(m.created_utc, window):
            # it may have lost comments in a gap: its answer set is incomplete
            counts.inc("damage", "threads_dropped")
            counts.inc("damage", "responses_dropped", len(th.responses))
            return None
        rs = sorted(th.responses.values(), key=lambda r: (r.created_utc, r.response_id))
        return Thread(tid, m.prompt, m.score, m.created_utc, source, m.subreddit, rs)

    comments_c, responses_c, replies_c = counts.group("comments"), counts.group("responses"), counts.group("replies")
    seen0 = bad.seen

    def cc(key: str) -> None:
        comments_c[key] += 1

    def rc(key: str) -> None:
        responses_c[key] += 1

    def pc(key: str) -> None:
        replies_c[key] += 1

    resumed = True  # False between a gap and the next comment
    for line, o in iter_records(path, bad, Comment, desc="comments", keep_damaged=cfg.source.keep_damaged):
        if type(o) is StreamDamage:
            damage.open(now)
            resumed = False
            continue
        cid, link, parent, created, body, score, author = (
            o.id, o.link_id, o.parent_id, o.created_utc, o.body, o.score, o.author)
        if cid is None or author is None or created != created or created in (math.inf, -math.inf):
            try:  # the slow path: id from the fullname, or report what is wrong
                cid = record_id(o)
                created = finite(created, "created_utc")
            except RecordError as e:
                bad.add(path, line, str(e), kind=e.kind)
                continue
            author = author or ""
        cc("read")
        if not resumed:
            damage.resume(created)
            resumed = True
        if sub_filter and (o.subreddit or "").lower() != sub_filter:
            cc("other_subreddit")
            continue
        if created > now:
            now = created
            # close every thread whose window has passed
            while heap and heap[0][0] < now:
                _, tid = heapq.heappop(heap)
                th = close(tid)
                if th is not None:
                    yield th
        tid = strip_prefix(link)
        st = status.get(tid)
        if st is None:
            if subs_damaged:  # lost with the damaged part of the submissions file
                counts.inc("damage", "comments_without_submission")
                continue
            cc("submission_absent")
            bad.add(path, line, f"comment {cid}: its submission {link} is absent", kind="submission absent")
            continue
        if st is _DROPPED:
            cc("thread_dropped")
            continue
        if st is _CLOSED:
            cc("late")
            continue
        th = open_.get(tid)
        if th is None:
            close_at = st.created_utc + window
            if close_at < now:
                cc("late")
                continue
            th = open_[tid] = _Open(st)
            heapq.heappush(heap, (close_at, tid))
            peak_open = max(peak_open, len(open_))
        if parent == link:  # top-level comment: a candidate response
            cc("top_level")
            reason = response_drop_reason(body, author, th.meta.author, o.stickied, o.distinguished, f, bots)
            if reason is None:
                reason = maturity_reason(_retrieved(o), th.meta.created_utc, f)
            name = "t1_" + cid
            if reason is None and name in th.responses:
                reason = "duplicate_id"
            if reason is not None:
                rc(reason)
                continue
            rc("assembled")
            th.responses[name] = Response(cid, body, score, created, author)
            continue
        cc("reply")
        parent_resp = th.responses.get(parent)
        if parent_resp is None:
            pc("not_to_kept_response")  # nested deeper, or parent dropped
            continue
        if body.strip() in DELETED_TEXT or not body.strip():
            pc("deleted_text")
        elif author.strip() in DELETED_AUTHOR:
            pc("deleted_author")
        elif author.lower() in bots:
            pc("bot")
        elif author == parent_resp.author:
            pc("self_reply")
        elif not want_sentiment:
            pc("sentiment_off")
        else:
            pc("used")
            parent_resp.sentiment_sum += L.sentiment(body)
            parent_resp.n_replies += 1
    if bad.seen == seen0:
        raise AmbientError(f"{path}: no records (the file holds no non-blank line)")
    for _, tid in sorted(heap):
        if tid in open_:
            th = close(tid)
            if th is not None:
                yield th
    counts.inc("memory", "peak_open_threads", peak_open)


# ---------------------------------------------------------------- responses table

def _children_texts(cell: Any) -> list[str]:
    """``response_children``: a JSON list of texts or of objects with a text field."""
    if cell is None or cell == "":
        return []
    items = cell
    if isinstance(cell, str):
        items = json.loads(cell)
    if not isinstance(items, (list, tuple)):
        raise BadField("field 'response_children': expected a JSON list")
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(it)
        elif isinstance(it, dict):
            t = it.get("body", it.get("text", it.get("response")))
            if isinstance(t, str):
                out.append(t)
    return out


def read_table(inp: Input, cfg: DataConfig, counts: Counts, bad: BadRecords) -> Iterator[Thread]:
    """Threads from a responses table whose rows are grouped by prompt id."""
    path = inp.paths[0]
    f = cfg.filters
    cm: ColumnMap = cfg.source.columns
    bots = bot_set(f)
    cols = set(table_columns(path))  # JSONL: the first object's keys (required ones must be there)
    required = {k: getattr(cm, k) for k in (
        "prompt_id", "prompt", "prompt_score", "prompt_created_utc", "response_id", "response",
        "response_score", "response_created_utc")}
    missing = [f"{k} (column '{v}')" for k, v in required.items() if v not in cols]
    if missing:
        raise AmbientError(
            f"{path}: missing columns {', '.join(missing)}; found {sorted(cols)}. Map them with "
            f"source.columns.<name>=<column>, e.g. source.columns.prompt=question")
    has = {k: (getattr(cm, k) in cols) for k in ("response_children", "prompt_author", "response_author", "retrieved_utc")}
    cur: Thread | None = None
    cur_dropped: str | None = None
    cur_author: str | None = None
    finished: set[str] = set()
    seen_resp: set[str] = set()
    source = str(path)
    seen0 = bad.seen
    keep = cfg.source.keep_damaged
    drop_next = False  # after a gap in the stream: the next prompt may have lost its first rows
    for line, row in iter_table_rows(path, bad, desc="rows", keep_damaged=keep):
        if type(row) is StreamDamage:
            if cur is not None and cur_dropped is None:
                counts.inc("damage", "threads_dropped")
                counts.inc("damage", "responses_dropped", len(cur.responses))
                cur_dropped = "damaged_stream"
            drop_next = True
            continue
        try:
            pid = get_str(row, cm.prompt_id)
            rid = get_str(row, cm.response_id)
            text = get_str(row, cm.response)
            score = get_int(row, cm.response_score)
            created = get_num(row, cm.response_created_utc)
            pscore = get_int(row, cm.prompt_score)
            pcreated = get_num(row, cm.prompt_created_utc)
            prompt = get_str(row, cm.prompt)
            children = _children_texts(row.get(cm.response_children)) if has["response_children"] else []
            author = get_str(row, cm.response_author, required=False, default="") if has["response_author"] else None
            retrieved = get_num(row, cm.retrieved_utc, required=False) if has["retrieved_utc"] else None
            row_author = get_str(row, cm.prompt_author, required=False) if has["prompt_author"] else None
        except (BadField, ValueError) as e:
            msg = str(e) if isinstance(e, BadField) else f"field 'response_children': malformed JSON ({e})"
            bad.add(path, line, msg, kind=msg.split(":")[0])
            continue
        counts.inc("table_rows", "read")
        if cur is None or pid != cur.thread_id:
            if pid in finished:
                counts.inc("table_rows", "not_grouped")
                bad.add(path, line, f"prompt_id {pid} appears again after its rows ended; sort the table by prompt_id",
                        kind="rows not grouped by prompt_id")
                continue
            if cur is not None:
                finished.add(cur.thread_id)
                if cur_dropped is None:
                    yield cur
            cur = Thread(pid, prompt, pscore, pcreated, source, None, [])
            seen_resp = set()
            cur_author = row_author
            counts.inc("prompts", "read")
            cur_dropped = None
            if prompt.strip() in DELETED_TEXT or not prompt.strip():
                cur_dropped = "deleted_prompt"
            elif pscore < f.min_prompt_score:
                cur_dropped = "low_prompt_score"
            elif len(prompt) > f.max_prompt_chars:
                cur_dropped = "prompt_too_long"
            counts.inc("prompts", cur_dropped or "kept")
            if drop_next:
                drop_next = False
                if cur_dropped is None:
                    cur_dropped = "damaged_stream"
                    counts.inc("damage", "threads_dropped")
        if cur_dropped is not None:
            if cur_dropped == "damaged_stream":
                counts.inc("damage", "responses_dropped")
                continue
            counts.inc("table_rows", "thread_dropped")
            continue
        reason = response_drop_reason(text, author, cur_author, False, None, f, bots)
        if reason is None:
            reason = maturity_reason(retrieved, cur.prompt_created_utc, f)
        if reason is None and rid in seen_resp:
            reason = "duplicate_id"
        if reason is not None:
            counts.inc("responses", reason)
            continue
        seen_resp.add(rid)
        counts.inc("responses", "assembled")
        r = Response(rid, text, score, created, author)
        for child in children:
            if child.strip() in DELETED_TEXT or not child.strip():
                counts.inc("replies", "deleted_text")
            elif not cfg.labels.reply_sentiment:
                counts.inc("replies", "sentiment_off")
            else:
                counts.inc("replies", "used")
                r.sentiment_sum += L.sentiment(child)
                r.n_replies += 1
        cur.responses.append(r)
    if bad.seen == seen0:
        raise AmbientError(f"{path}: no records (only a header or blank lines)")
    if cur is not None and cur_dropped is None:
        yield cur


# ---------------------------------------------------------------- SHP pair files

def read_shp(inp: Input, cfg: DataConfig, counts: Counts, bad: BadRecords) -> Iterator[Thread]:
    """Threads (with their given pairs) from an SHP file, grouped by ``post_id``."""
    path = inp.paths[0]
    f = cfg.filters
    bots = bot_set(f)
    posts: dict[str, Thread] = {}
    index: dict[str, dict[str, int]] = {}
    seen0 = bad.seen
    for line, row in iter_table_rows(path, bad, desc="SHP pairs"):
        try:
            pid = get_str(row, "post_id")
            prompt = get_str(row, "history")
            sides = []
            for s in ("A", "B"):
                sides.append((
                    get_str(row, f"c_root_id_{s}", required=False),
                    get_str(row, f"human_ref_{s}"),
                    get_int(row, f"score_{s}"),
                    get_num(row, f"created_at_utc_{s}"),
                ))
            label = get_int(row, "labels")
            domain = get_str(row, "domain", required=False)
        except BadField as e:
            bad.add(path, line, str(e), kind=str(e).split(":")[0])
            continue
        if label not in (0, 1):
            bad.add(path, line, f"field 'labels': expected 0 or 1, got {label}", kind="field 'labels'")
            continue
        counts.inc("shp_rows", "read")
        th = posts.get(pid)
        if th is None:
            th = posts[pid] = Thread(pid, prompt, None, None, str(path), domain, [], [])
            index[pid] = {}
        idx = []
        drop = None
        for rid, text, score, created in sides:
            key = rid or f"text:{hash(text)}"
            if key in index[pid]:
                idx.append(index[pid][key])
                continue
            reason = response_drop_reason(text, None, None, False, None, f, bots) or maturity_reason(None, created, f)
            if reason is not None:
                drop = reason
                break
            index[pid][key] = len(th.responses)
            idx.append(len(th.responses))
            th.responses.append(Response(rid or key, text, score, created))
        if drop is not None:
            counts.inc("shp_rows", drop)
            continue
        counts.inc("shp_rows", "kept")
        a, b = idx
        th.given_pairs.append((a, b) if label == 1 else (b, a))
    if bad.seen == seen0:
        raise AmbientError(f"{path}: no records (only a header or blank lines)")
    counts.inc("responses", "assembled", sum(len(t.responses) for t in posts.values()))
    for th in posts.values():
        th.given_pairs = sorted(set(th.given_pairs))
        yield th


def read_input(inp: Input, cfg: DataConfig, counts: Counts, bad: BadRecords) -> Iterator[Thread]:
    if inp.kind == "reddit":
        return read_reddit(inp, cfg, counts, bad)
    if inp.kind == "table":
        return read_table(inp, cfg, counts, bad)
    if inp.kind == "shp":
        return read_shp(inp, cfg, counts, bad)
    raise AmbientError(f"unknown input kind {inp.kind}")
