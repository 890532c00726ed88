"""``ambient data acts DATA_DIR``: acts.parquet and act_pairs.parquet in a data directory.

Flow:

1. read the data directory's manifest (its Reddit dump and data config) and the split of
   every kept thread (responses.parquet);
2. read the kept submissions again (prompt, asker) and every comment of their threads,
   linked into trees (:mod:`.trees`; malformed trees counted);
3. index every comment with text (BM25, :mod:`.retrieve`) and score it against each act's
   cue query; a comment at or above the act's ``min_score`` performs it;
4. per act: its direct replies, their role and class, the act's feedback (:mod:`.feedback`);
5. act_pairs.parquet: within a thread, sibling acts (same parent) whose feedback scores
   have opposite signs -- the one that drew gratitude/agreement over the one that drew
   disagreement -- in the pairs.parquet contract, for ``ambient rm pairs=acts``;
6. manifest.json gets an ``acts`` section (counts, feedback mix, agreement with upvotes),
   report.md an "Acts" section.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ambient_rlhf import AmbientError
from ambient_rlhf.config import from_dict, to_dict
from ambient_rlhf.data.acts.config import ActsConfig
from ambient_rlhf.data.acts.feedback import CLASSES, ROLES, Reply, Weights, classify, role, summarize
from ambient_rlhf.data.acts.retrieve import ActIndex
from ambient_rlhf.data.acts.trees import Node, ThreadMeta, Tree, read_trees
from ambient_rlhf.data.config import DataConfig
from ambient_rlhf.data.schema import ACT_PAIRS_FILE, ACTS_FILE, RESPONSES_FILE
from ambient_rlhf.data.sources import BadRecords
from ambient_rlhf.data.records import Counts, bot_set
from ambient_rlhf.data.reddit import read_submissions
from ambient_rlhf.io import write_json
from ambient_rlhf.logging import get_logger

log = get_logger("data.acts")

REPLY_TYPE = pa.struct([("id", pa.string()), ("role", pa.string()), ("label", pa.string()),
                        ("created_utc", pa.int64()), ("text", pa.string())])
ACTS_SCHEMA = pa.schema([
    ("thread_id", pa.string()), ("comment_id", pa.string()), ("act", pa.string()),
    ("act_score", pa.float64()), ("rerank_score", pa.float64()), ("act_rank", pa.int64()), ("prompt", pa.string()),
    ("context", pa.string()), ("comment", pa.string()), ("parent_id", pa.string()), ("depth", pa.int64()),
    ("score", pa.int64()), ("created_utc", pa.int64()), ("replies", pa.list_(REPLY_TYPE)),
    ("num_replies", pa.int64()), ("feedback", pa.string()), ("feedback_role", pa.string()),
    ("feedback_score", pa.float64()), ("delay", pa.int64()), ("split", pa.string()),
])
PAIRS_SCHEMA = pa.schema([
    ("thread_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("chosen_score", pa.int64()), ("rejected_score", pa.int64()), ("chosen_created_utc", pa.int64()),
    ("rejected_created_utc", pa.int64()), ("score_ratio", pa.float64()), ("seconds_difference", pa.int64()),
    ("split", pa.string()), ("chosen_id", pa.string()), ("rejected_id", pa.string()),
    ("chosen_feedback", pa.string()), ("rejected_feedback", pa.string()),
    ("chosen_feedback_score", pa.float64()), ("rejected_feedback_score", pa.float64()), ("source", pa.string()),
])

# rerank(query, texts) -> one similarity per text
Rerank = Callable[[str, list[str]], np.ndarray]


def _read_manifest(d: Path) -> dict[str, Any]:
    p = d / "manifest.json"
    if not p.is_file():
        raise AmbientError(f"{p}: missing; is {d} a data directory (`ambient data build`)?")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise AmbientError(f"{p}:{e.lineno}: invalid JSON ({e.msg})") from None


def context_of(tree: Tree, node: Node, max_chars: int) -> str:
    """The prompt and the parent chain down to ``node``'s parent, oldest first, blank-line
    separated; the last ``max_chars`` characters."""
    chain, cur = [], node
    while cur.parent:
        cur = tree.by_id[cur.parent]
        chain.append(cur.text)
    text = "\n\n".join([tree.prompt, *reversed(chain)])
    return text[-max_chars:] if max_chars else ""


def feedback_rows(tree: Tree, node: Node, w: Weights,
                  bots: frozenset[str] = frozenset()) -> tuple[list[Reply], dict[str, Any]]:
    """The direct replies of ``node`` (deleted texts and bots skipped) and its feedback columns."""
    replies = [Reply(c.id, role(c.author, tree.asker, node.author), classify(c.text), c.created_utc, c.text)
               for c in node.children if not c.deleted and (c.author or "").lower() not in bots]
    label, score, frole, best = summarize(replies, w)
    delay = int(best.created_utc - node.created_utc) if best is not None else None
    return replies, {"feedback": label, "feedback_score": score, "feedback_role": frole, "delay": delay}


def sibling_pairs(rows: list[dict[str, Any]], per_thread: int) -> list[dict[str, Any]]:
    """Pairs of one thread's acts: same parent, feedback scores of opposite signs, the
    positive one chosen; one row per comment (a comment performing two acts pairs once).
    ``per_thread`` > 0 keeps the pairs with the largest score gap (train only)."""
    by_comment = {}
    for r in rows:
        if r["feedback_score"] is not None:
            by_comment.setdefault(r["comment_id"], r)
    by_parent: dict[str, list[dict]] = {}
    for r in by_comment.values():
        by_parent.setdefault(r["parent_id"], []).append(r)
    out = []
    for sibs in by_parent.values():
        pos = [r for r in sibs if r["feedback_score"] > 0]
        neg = [r for r in sibs if r["feedback_score"] < 0]
        for a in pos:
            for b in neg:
                ratio = a["score"] / b["score"] if b["score"] > 0 else float("nan")
                out.append({
                    "thread_id": a["thread_id"], "prompt": a["context"], "chosen": a["comment"],
                    "rejected": b["comment"], "chosen_score": a["score"], "rejected_score": b["score"],
                    "chosen_created_utc": a["created_utc"], "rejected_created_utc": b["created_utc"],
                    "score_ratio": ratio, "seconds_difference": a["created_utc"] - b["created_utc"],
                    "split": a["split"], "chosen_id": a["comment_id"], "rejected_id": b["comment_id"],
                    "chosen_feedback": a["feedback"], "rejected_feedback": b["feedback"],
                    "chosen_feedback_score": a["feedback_score"], "rejected_feedback_score": b["feedback_score"],
                    "source": "acts",
                })
    out.sort(key=lambda p: (-(p["chosen_feedback_score"] - p["rejected_feedback_score"]), p["chosen_id"], p["rejected_id"]))
    if per_thread and out and out[0]["split"] == "train":
        out = out[:per_thread]
    return out


def _spearman(x: list[float], y: list[float]) -> float | None:
    from ambient_rlhf.stats import spearman

    return None if len(x) < 3 else float(spearman(np.asarray(x, float), np.asarray(y, float)))


def build_acts(data_dir: str | Path, cfg: ActsConfig, rerank: Rerank | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Write acts.parquet and act_pairs.parquet into ``data_dir``; return the ``acts``
    section added to its manifest.json (see the module docstring)."""
    t0 = time.time()
    d = Path(data_dir)
    manifest = _read_manifest(d)
    for name in (ACTS_FILE, ACT_PAIRS_FILE):
        if (d / name).exists() and not overwrite:
            raise AmbientError(f"{d / name}: exists; pass --overwrite to replace it")
    dumps = [i for i in manifest.get("inputs_by_kind", []) if i.get("kind") == "reddit"]
    if not dumps:
        kinds = sorted({i.get("kind", "?") for i in manifest.get("inputs_by_kind", [])}) or ["none recorded"]
        raise AmbientError(f"{d / 'manifest.json'}: acts need nested comments, i.e. a Reddit dump input; "
                           f"this directory was built from {kinds}")
    data_cfg = from_dict(DataConfig, manifest.get("config", {}))
    specs = cfg.specs()
    w = Weights(**to_dict(cfg.weights))
    bots = bot_set(data_cfg.filters)

    # step 1. the kept threads and their splits
    resp = pq.read_table(d / RESPONSES_FILE, columns=["thread_id", "split"]).to_pandas()
    split = dict(zip(resp["thread_id"], resp["split"]))

    # step 2. the trees
    counts, bad = Counts(), BadRecords()
    trees: list[Tree] = []
    for dump in dumps:
        sub_path, com_path = (Path(p) for p in dump["paths"])
        for p in (sub_path, com_path):
            if not p.is_file():
                raise AmbientError(f"{p}: the dump this data directory was built from is missing")
        status, _ = read_submissions(sub_path, data_cfg, Counts(), bad)
        metas = {t: ThreadMeta(m.prompt, m.author, m.created_utc) for t, m in status.items()
                 if t in split and not isinstance(m, int)}
        counts.inc("trees", "threads", len(metas))
        trees += list(read_trees(com_path, metas, counts, bad, data_cfg.source.keep_damaged))
    if bad.fraction > cfg.max_bad_fraction:
        raise AmbientError(f"{bad.total} bad records of {bad.seen} ({bad.fraction:.2%}) > max_bad_fraction="
                           f"{cfg.max_bad_fraction}; first: {bad.examples[0] if bad.examples else '?'}")

    # step 3. candidates and their act scores
    cands: list[tuple[Tree, Node]] = []
    for tr in trees:
        for n in tr.walk():
            if n.deleted or not n.text.strip():
                counts.inc("candidates", "deleted_or_empty")
            elif n.author is not None and n.author.lower() in bots:
                counts.inc("candidates", "bot")
            else:
                cands.append((tr, n))
    counts.inc("candidates", "indexed", len(cands))
    index = ActIndex([n.text for _, n in cands], k1=cfg.k1, b=cfg.b)

    rows_by_thread: dict[str, list[dict[str, Any]]] = {}
    fb_cache: dict[str, tuple[list[Reply], dict[str, Any]]] = {}
    for spec in specs:
        s = index.scores(spec.query)
        hits = [i for i in np.flatnonzero(s >= spec.min_score)
                if spec.admits(cands[i][1].depth, _parent_text(*cands[i]))]
        counts.inc("acts", spec.name, len(hits))
        # the act's ranking: BM25 order, ties by comment id; with a re-ranker, its top
        # rerank_top hits re-ordered by the embedding cosine (the rest keep BM25 order below)
        order = sorted(hits, key=lambda i: (-s[i], cands[i][1].id))
        rr: dict[int, float] = {}
        if rerank is not None and hits:
            top = order[: cfg.rerank_top]
            sims = rerank(spec.query, [cands[i][1].text for i in top])
            rr = dict(zip(top, (float(x) for x in sims)))
            order = sorted(top, key=lambda i: (-rr[i], cands[i][1].id)) + order[cfg.rerank_top:]
        rank_of = {i: r + 1 for r, i in enumerate(order)}
        for i in hits:
            tr, n = cands[i]
            if n.id not in fb_cache:
                fb_cache[n.id] = feedback_rows(tr, n, w, bots)
            replies, fb = fb_cache[n.id]
            rows_by_thread.setdefault(tr.thread_id, []).append({
                "thread_id": tr.thread_id, "comment_id": n.id, "act": spec.name, "act_score": float(s[i]),
                "rerank_score": rr.get(i), "act_rank": rank_of[i], "prompt": tr.prompt, "context": context_of(tr, n, cfg.max_context_chars),
                "comment": n.text, "parent_id": n.parent, "depth": n.depth, "score": n.score,
                "created_utc": int(n.created_utc),
                "replies": [{"id": r.id, "role": r.role, "label": r.label, "created_utc": int(r.created_utc),
                             "text": r.text} for r in replies],
                "num_replies": len(replies), "split": split[tr.thread_id], **fb,
            })

    # step 4-5. write acts and pairs
    rows = [r for t in sorted(rows_by_thread) for r in rows_by_thread[t]]
    pairs = [p for t in sorted(rows_by_thread) for p in sibling_pairs(rows_by_thread[t], cfg.pairs_per_thread)]
    _write(d / ACTS_FILE, rows, ACTS_SCHEMA)
    _write(d / ACT_PAIRS_FILE, pairs, PAIRS_SCHEMA)

    # step 6. numbers, manifest, report
    section = _summary(rows, pairs, fb_cache, counts, bad, specs, cfg, time.time() - t0)
    manifest["acts"] = section
    write_json(d / "manifest.json", manifest)
    from ambient_rlhf.data.acts.report import write_acts_report

    write_acts_report(d, section)
    return section


def _parent_text(tree: Tree, node: Node) -> str:
    return tree.by_id[node.parent].text if node.parent else tree.prompt


def _write(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)
    os.replace(tmp, path)


def _summary(rows, pairs, fb_cache, counts, bad, specs, cfg, seconds) -> dict[str, Any]:
    """The ``acts`` section of manifest.json."""
    per_thread = Counter(r["thread_id"] for r in rows)
    threads = counts.get("trees", "threads")
    mix = {a.name: dict(Counter(r["feedback"] or "none" for r in rows if r["act"] == a.name)) for a in specs}
    replies = [x for rs, _ in fb_cache.values() for x in rs]
    by_role = {ro: dict(Counter(x.label for x in replies if x.role == ro)) for ro in ROLES}
    with_fb = [r for r in rows if r["feedback_score"] is not None]
    seen, fs, up = set(), [], []
    for r in with_fb:
        if r["comment_id"] not in seen:
            seen.add(r["comment_id"])
            fs.append(r["feedback_score"])
            up.append(r["score"])
    agree = [p["chosen_score"] > p["rejected_score"] for p in pairs if p["chosen_score"] != p["rejected_score"]]
    return {
        "config": to_dict(cfg),
        "counts": counts.as_dict(),
        "bad_records": bad.as_dict(),
        "acts": len(rows), "comments_with_acts": len({r["comment_id"] for r in rows}),
        "threads": threads, "threads_with_acts": len(per_thread),
        "acts_per_thread": {"mean": round(len(rows) / max(threads, 1), 3),
                            "median_over_threads_with_acts": float(np.median(list(per_thread.values()))) if per_thread else 0.0},
        "feedback_mix": mix,
        "reply_classes_by_role": by_role,
        "feedback_classes": list(CLASSES),
        "with_feedback": len(with_fb),
        "feedback_upvote_spearman": _spearman(fs, up),
        "pairs": dict(Counter(p["split"] for p in pairs)),
        "pairs_upvote_agreement": round(float(np.mean(agree)), 4) if agree else None,
        "pairs_upvote_agreement_n": len(agree),
        "files": [ACTS_FILE, ACT_PAIRS_FILE],
        "seconds": round(seconds, 1),
    }
