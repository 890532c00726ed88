"""Precision of act retrieval and of the feedback rules on hand-labelled samples.

Files (JSON lines; ``tests/data/acts/README.md`` says how they were drawn and labelled):

* acts sample: ``comment_id, depth, parent, comment, acts`` (the hand labels: a list of act
  names, possibly empty), ``drawn`` (``top10``: among the first 10 an act retrieved from the
  whole AskAcademia corpus; ``random``);
* feedback sample: ``reply, role, label`` (the hand label, one of ``feedback.CLASSES``).

Two act numbers: ``corpus_precision`` -- P@k of each act's ranking over a whole data
directory (acts.parquet's ``act_score`` order; every comment must be labelled, else it is
reported as unlabelled); ``sample_precision`` -- P@k of the BM25 ranking built over the
sample's own comments (the structural conditions applied), next to the act's base rate;
and ``threshold_precision`` -- precision/recall of the act column itself on the random half.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from ambient_rlhf import AmbientError
from ambient_rlhf.data.acts.feedback import CLASSES, classify
from ambient_rlhf.data.acts.retrieve import ActIndex, ActSpec, precision_at_k, rank


def read_jsonl(path: str | Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of a labelled file; a bad line is an error naming file:line and the field."""
    p = Path(path)
    if not p.is_file():
        raise AmbientError(f"{p}: no such labelled file")
    rows = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            o = json.loads(line)
        except json.JSONDecodeError as e:
            raise AmbientError(f"{p}:{i}: invalid JSON ({e.msg})") from None
        missing = [k for k in required if k not in o]
        if missing:
            raise AmbientError(f"{p}:{i}: missing field '{missing[0]}'")
        rows.append(o)
    return rows


def sample_precision(rows: list[dict[str, Any]], specs: Sequence[ActSpec], ks: Sequence[int] = (5, 10),
                     k1: float = 1.5, b: float = 0.75) -> dict[str, dict[str, Any]]:
    """Per act: P@k of the BM25 ranking over the sample's comments, the base rate, and the
    number of comments the structural conditions admit."""
    index = ActIndex([r["comment"] for r in rows], k1=k1, b=b)
    out = {}
    for a in specs:
        s = index.scores(a.query)
        ok = [i for i, r in enumerate(rows) if a.admits(int(r["depth"]), r["parent"])]
        ranked = rank(s[ok], [rows[i]["comment_id"] for i in ok])
        pos = {r["comment_id"] for r in rows if a.name in r["acts"]}
        out[a.name] = {"admitted": len(ok), "positives": len(pos), "base_rate": round(len(pos) / len(rows), 3),
                       **{f"p@{k}": round(precision_at_k(ranked, pos, k), 3) for k in ks}}
    return out


def corpus_precision(acts_df, rows: list[dict[str, Any]], names: Sequence[str], k: int = 10) -> dict[str, dict[str, Any]]:
    """Per act: P@k of acts.parquet's ranking (``act_rank`` when present: BM25, or the
    re-ranker's order of the top hits; else ``act_score``, ties by comment id) against the
    hand labels; comments of the top k without a label are counted, not guessed."""
    labels = {r["comment_id"]: set(r["acts"]) for r in rows}
    out = {}
    for name in names:
        sub = acts_df[acts_df["act"] == name]
        top = sub.sort_values("act_rank") if "act_rank" in sub.columns else \
            sub.sort_values(["act_score", "comment_id"], ascending=[False, True])
        ids = list(top["comment_id"][:k])
        known = [c for c in ids if c in labels]
        out[name] = {"k": len(ids), "labelled": len(known),
                     "p@k": round(sum(name in labels[c] for c in known) / len(known), 3) if known else None}
    return out


def threshold_precision(acts_df, rows: list[dict[str, Any]], names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per act, on the sample's ``drawn == "random"`` comments: precision and recall of
    acts.parquet's decision (score >= min_score and the structural conditions) against the
    hand labels -- what the act column is worth on comments as they come."""
    rand = [r for r in rows if r.get("drawn") == "random"]
    out = {}
    for name in names:
        marked = set(acts_df.loc[acts_df["act"] == name, "comment_id"])
        pred = [r for r in rand if r["comment_id"] in marked]
        gold = [r for r in rand if name in r["acts"]]
        tp = sum(1 for r in pred if name in r["acts"])
        out[name] = {"n": len(rand), "marked": len(pred), "labelled": len(gold),
                     "precision": round(tp / len(pred), 3) if pred else None,
                     "recall": round(tp / len(gold), 3) if gold else None}
    return out


def feedback_precision(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per class: precision and recall of :func:`feedback.classify` against the hand labels,
    the confusion counts, and overall accuracy."""
    bad = [r["label"] for r in rows if r["label"] not in CLASSES]
    if bad:
        raise AmbientError(f"feedback labels must be one of {list(CLASSES)}; got {bad[0]!r}")
    pred = [classify(r["reply"]) for r in rows]
    gold = [r["label"] for r in rows]
    per = {}
    for c in CLASSES:
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        npred, ngold = pred.count(c), gold.count(c)
        per[c] = {"predicted": npred, "labelled": ngold,
                  "precision": round(tp / npred, 3) if npred else None,
                  "recall": round(tp / ngold, 3) if ngold else None}
    confusion = Counter(f"{g}->{p}" for p, g in zip(pred, gold) if p != g)
    acc = sum(p == g for p, g in zip(pred, gold)) / len(rows)
    return {"n": len(rows), "accuracy": round(acc, 3), "per_class": per, "errors": dict(confusion.most_common())}
