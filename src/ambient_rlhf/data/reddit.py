"""Reading a Reddit dump pair (``*_submissions`` + ``*_comments``, NDJSON, plain or
``.zst``) into threads, in two streaming passes with bounded memory.

1. submissions: each is filtered once; the kept ones leave a small ``SubMeta`` (prompt
   text, score, times) keyed by id;
2. comments, in file order (dumps are sorted by ``created_utc``): a thread is *opened*
   by its first comment and *closed* -- labelled, written and forgotten -- once the
   stream time passes ``created_utc + window_days`` of its submission (Reddit archives
   a thread after six months: no new comments or votes).  Only top-level comments of
   open threads are held; a direct reply adds its VADER sentiment to its parent's
   running sum and is dropped.  Memory is bounded by the threads open in one window,
   not by the number of comments.  (docs/data.md, "Memory".)
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ambient_rlhf import AmbientError
from ambient_rlhf.data import labels as L
from ambient_rlhf.data.config import DataConfig
from ambient_rlhf.data.records import (DAY, DELETED_AUTHOR, DELETED_TEXT, MOD_DISTINGUISHED, BadField, Counts,
                                       Response, Thread, bot_set, get_bool, get_int, get_num, get_str,
                                       maturity_reason, prompt_text, response_drop_reason, strip_prefix)
from ambient_rlhf.data.sources import BadRecords, Input, iter_json_objects
from ambient_rlhf.logging import get_logger

log = get_logger("data.threads")


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


def _retrieved(o: dict) -> float | None:
    v = get_num(o, "retrieved_on", required=False)
    if v is None:
        v = get_num(o, "retrieved_utc", required=False)
    return v


def read_submissions(path: Path, cfg: DataConfig, counts: Counts, bad: BadRecords) -> dict[str, Any]:
    """Pass 1: ``{id: SubMeta}`` for kept submissions, ``{id: _DROPPED}`` for the others."""
    f = cfg.filters
    status: dict[str, Any] = {}
    sub_filter = f.subreddit.lower() if f.subreddit else None
    seen0 = bad.seen
    for line, o in iter_json_objects(path, bad, desc="submissions"):
        try:
            sid = get_str(o, "id", required=False) or strip_prefix(get_str(o, "name") or "")
            created = get_num(o, "created_utc")
            title = get_str(o, "title")
            body = get_str(o, "selftext", required=False, default="")
            score = get_int(o, "score")
            author = get_str(o, "author", required=False)
            retrieved = _retrieved(o)
        except BadField as e:
            bad.add(path, line, str(e), kind=str(e).split(":")[0])
            continue
        counts.inc("submissions", "read")
        reason = None
        if sub_filter and (o.get("subreddit") or "").lower() != sub_filter:
            reason = "other_subreddit"
        elif sid in status:
            reason = "duplicate_id"
        elif f.drop_nsfw and get_bool(o, "over_18"):
            reason = "nsfw"
        elif (body or "").strip() in DELETED_TEXT or not title.strip() or o.get("removed_by_category"):
            reason = "deleted_prompt"
        elif get_bool(o, "stickied") or (o.get("distinguished") or "") in MOD_DISTINGUISHED:
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
        status[sid] = SubMeta(prompt, score, created, author, o.get("subreddit"))
    if bad.seen == seen0:
        raise AmbientError(f"{path}: no records (the file holds no non-blank line)")
    return status


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
    status = read_submissions(inp.submissions, cfg, counts, bad)
    window = cfg.source.window_days * DAY if cfg.source.window_days > 0 else math.inf
    sub_filter = f.subreddit.lower() if f.subreddit else None
    open_: dict[str, _Open] = {}
    heap: list[tuple[float, str]] = []
    now = -math.inf
    path = inp.comments
    source = str(inp.submissions.parent)
    peak_open = 0

    def close(tid: str) -> Thread:
        th = open_.pop(tid)
        status[tid] = _CLOSED
        m = th.meta
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

    for line, o in iter_json_objects(path, bad, desc="comments"):
        cid, link, parent, created, body, score, author = (
            o.get("id"), o.get("link_id"), o.get("parent_id"), o.get("created_utc"), o.get("body"),
            o.get("score"), o.get("author"))
        if not (type(cid) is str and type(link) is str and type(parent) is str and type(created) is int
                and type(body) is str and type(score) is int and type(author) is str):
            try:  # the slow path: coerce numeric strings, or report what is wrong
                cid = get_str(o, "id", required=False) or strip_prefix(get_str(o, "name") or "")
                link = get_str(o, "link_id")
                parent = get_str(o, "parent_id")
                created = get_num(o, "created_utc")
                body = get_str(o, "body")
                score = get_int(o, "score")
                author = get_str(o, "author", required=False, default="")
            except BadField as e:
                bad.add(path, line, str(e), kind=str(e).split(":")[0])
                continue
        cc("read")
        if sub_filter and (o.get("subreddit") or "").lower() != sub_filter:
            cc("other_subreddit")
            continue
        if created > now:
            now = created
            # close every thread whose window has passed
            while heap and heap[0][0] < now:
                _, tid = heapq.heappop(heap)
                yield close(tid)
        tid = strip_prefix(link)
        st = status.get(tid)
        if st is None:
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
            reason = response_drop_reason(
                body, author, th.meta.author, get_bool(o, "stickied"), o.get("distinguished"), f, bots)
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
            yield close(tid)
    counts.inc("memory", "peak_open_threads", peak_open)
