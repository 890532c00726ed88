"""Thread assembly: records from :mod:`sources` -> filtered :class:`Thread` objects.

Every record ends in exactly one counter (``Counts``): kept, or dropped for a named
reason -- nothing is dropped silently.  :func:`read_input` picks the reader of an input:

* Reddit dumps: :mod:`ambient_rlhf.data.reddit` (two streaming passes, bounded memory);
* tables (here): assembled from runs of rows with the same ``prompt_id`` (the layout of
  the reddit_writing_prompts CSV);
* SHP pair files (here): grouped by ``post_id`` in memory (they are pairs, already
  filtered, and small).

The thread and response records, the counters, field parsing and the filters are in
:mod:`ambient_rlhf.data.records` (re-exported here).
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from ambient_rlhf import AmbientError
from ambient_rlhf.data import labels as L
from ambient_rlhf.data.config import ColumnMap, DataConfig
from ambient_rlhf.data.records import (DAY, DELETED_AUTHOR, DELETED_TEXT, MOD_DISTINGUISHED, BadField, Counts,
                                       Response, Thread, bot_set, get_bool, get_int, get_num, get_str,
                                       maturity_reason, prompt_text, response_drop_reason, strip_prefix)
from ambient_rlhf.data.reddit import read_reddit
from ambient_rlhf.data.sources import BadRecords, Input, iter_table_rows, table_columns
from ambient_rlhf.logging import get_logger

log = get_logger("data.threads")

__all__ = [  # the records are re-exported: build and the benchmarks import them from here
    "read_input", "read_reddit", "read_table", "read_shp", "DAY", "DELETED_AUTHOR", "DELETED_TEXT",
    "MOD_DISTINGUISHED", "BadField", "Counts", "Response", "Thread", "bot_set", "get_bool", "get_int",
    "get_num", "get_str", "maturity_reason", "prompt_text", "response_drop_reason", "strip_prefix",
]


# ---- responses table ---------------------------------------------------------------------
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
    for line, row in iter_table_rows(path, bad, desc="rows"):
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
            cur_author = get_str(row, cm.prompt_author, required=False) if has["prompt_author"] else None
            counts.inc("prompts", "read")
            cur_dropped = None
            if prompt.strip() in DELETED_TEXT or not prompt.strip():
                cur_dropped = "deleted_prompt"
            elif pscore < f.min_prompt_score:
                cur_dropped = "low_prompt_score"
            elif len(prompt) > f.max_prompt_chars:
                cur_dropped = "prompt_too_long"
            counts.inc("prompts", cur_dropped or "kept")
        if cur_dropped is not None:
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


# ---- SHP pair files -----------------------------------------------------------------------
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
        except BadField as e:
            bad.add(path, line, str(e), kind=str(e).split(":")[0])
            continue
        if label not in (0, 1):
            bad.add(path, line, f"field 'labels': expected 0 or 1, got {label}", kind="field 'labels'")
            continue
        counts.inc("shp_rows", "read")
        th = posts.get(pid)
        if th is None:
            th = posts[pid] = Thread(pid, prompt, None, None, str(path), row.get("domain"), [], [])
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
