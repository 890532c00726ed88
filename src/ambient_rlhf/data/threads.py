"""The table and SHP readers, and :func:`read_input`, which picks the reader of an input.

Tables are assembled from runs of rows with the same ``prompt_id`` (the layout of the
reddit_writing_prompts CSV); SHP pair files are grouped by ``post_id`` in memory (they
are pairs, already filtered, and small).  Reddit dumps are read by
:mod:`ambient_rlhf.data.reddit`; threads, counters and filters live in
:mod:`ambient_rlhf.data.records` (their names are re-exported here, where they were first
defined).  Every record ends in exactly one counter (``Counts``): kept, or dropped for a
named reason -- nothing is dropped silently.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from ambient_rlhf import AmbientError
from ambient_rlhf.data import labels as L
from ambient_rlhf.data.config import ColumnMap, DataConfig
from ambient_rlhf.data.records import (  # noqa: F401 (re-exported: the readers' old home)
    DAY, DELETED_AUTHOR, DELETED_TEXT, MOD_DISTINGUISHED, BadField, Counts, Response, Thread, bot_set, get_int, get_num,
    get_str, maturity_reason, prompt_text, response_drop_reason, strip_prefix)
from ambient_rlhf.data.reddit import SubMeta, read_reddit, read_submissions  # noqa: F401 (re-exported)
from ambient_rlhf.data.sources import BadRecords, Input, StreamDamage, iter_table_rows, table_columns

__all__ = ["read_table", "read_shp", "read_input",
           # re-exported from records and reddit, where they now live
           "DAY", "DELETED_AUTHOR", "DELETED_TEXT", "MOD_DISTINGUISHED", "BadField", "Counts", "Response", "Thread",
           "bot_set", "get_int", "get_num", "get_str", "maturity_reason", "prompt_text", "response_drop_reason",
           "strip_prefix", "SubMeta", "read_reddit", "read_submissions"]


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
