"""The two-pass streaming reader of a Reddit dump pair (submissions + comments).

Dumps are read in two passes (see docs/data.md, "Memory"):

1. submissions: each is filtered once; the kept ones leave a small ``SubMeta`` (prompt
   text, score, times) keyed by id;
2. comments, in file order (dumps are sorted by ``created_utc``): a thread is *opened*
   by its first comment and *closed* -- labelled, written and forgotten -- once the
   stream time passes ``created_utc + window_days`` of its submission (Reddit archives
   a thread after six months: no new comments or votes).  Only top-level comments of
   open threads are held; a direct reply's text goes to the reply scorer (VADER, in a
   second process) and is dropped, and its score is added to its parent's sum when the
   thread closes.  Memory is bounded by the threads open in one window,
   not by the number of comments.

Every record ends in exactly one counter (``Counts``): kept, or dropped for a named
reason -- nothing is dropped silently.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ambient_rlhf import AmbientError
from ambient_rlhf.data.config import DataConfig
from ambient_rlhf.data.records import (DAY, DELETED_AUTHOR, DELETED_TEXT, MOD_DISTINGUISHED, Comment, Counts, RecordError,
                                       Response, Submission, Thread, bot_set, finite, maturity_reason, prompt_text,
                                       record_id, response_drop_reason, strip_prefix)
from ambient_rlhf.data.reply_scorer import ReplyScorer
from ambient_rlhf.data.sources import BadRecords, Input, StreamDamage, iter_records


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
    __slots__ = ("meta", "responses", "pending")

    def __init__(self, meta: SubMeta):
        self.meta = meta
        self.responses: dict[str, Response] = {}  # fullname t1_... -> Response
        self.pending: dict[str, list[int]] = {}  # fullname -> its replies' sentiment tickets


def read_reddit(inp: Input, cfg: DataConfig, counts: Counts, bad: BadRecords) -> Iterator[Thread]:
    """Pass 1 over submissions, then stream comments and yield threads as they close
    (reply sentiment scored beside the reader: :mod:`~ambient_rlhf.data.reply_scorer`)."""
    with ReplyScorer(process=cfg.labels.sentiment_process) as scorer:
        yield from _read_reddit(inp, cfg, counts, bad, scorer)


def _read_reddit(inp: Input, cfg: DataConfig, counts: Counts, bad: BadRecords,
                 scorer: ReplyScorer) -> Iterator[Thread]:
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

    closed: deque[tuple[Thread, _Open, int]] = deque()  # closed, waiting for reply scores

    def close(tid: str) -> None:
        th = open_.pop(tid)
        status[tid] = _CLOSED
        m = th.meta
        if damage.gaps and damage.touches(m.created_utc, window):
            # it may have lost comments in a gap: its answer set is incomplete
            counts.inc("damage", "threads_dropped")
            counts.inc("damage", "responses_dropped", len(th.responses))
            for tickets in th.pending.values():
                scorer.drop(tickets)
            return
        rs = sorted(th.responses.values(), key=lambda r: (r.created_utc, r.response_id))
        last = max((ts[-1] for ts in th.pending.values()), default=-1)
        closed.append((Thread(tid, m.prompt, m.score, m.created_utc, source, m.subreddit, rs), th, last))

    def settled(wait: bool) -> Iterator[Thread]:
        """The closed threads, in closing order, as far as their replies are scored."""
        while closed and (wait or scorer.ready(closed[0][2])):
            t, th, _ = closed.popleft()
            for name, tickets in th.pending.items():
                scorer.settle(th.responses[name], tickets)
            yield t

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
                close(tid)
            if closed:
                yield from settled(wait=False)
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
            tickets = th.pending.get(parent)
            if tickets is None:
                tickets = th.pending[parent] = []
            tickets.append(scorer.add(body))
    if bad.seen == seen0:
        raise AmbientError(f"{path}: no records (the file holds no non-blank line)")
    for _, tid in sorted(heap):
        if tid in open_:
            close(tid)
    yield from settled(wait=True)
    counts.inc("memory", "peak_open_threads", peak_open)
