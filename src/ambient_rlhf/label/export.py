"""``ambient label export``: judgements -> a data directory ``ambient rm`` trains on, and
the agreement of the labellers with each other and with the upvotes.

The directory has the data stage's layout (:mod:`ambient_rlhf.data.schema`):

* ``pairs.parquet``: one row per decisive live judgement (A or B; ties and skips are
  counted, not written): ``chosen`` is the answer the person picked.  The data stage's
  columns (scores, times and ratio are null: a person's choice has none), its extras
  (``chosen_id``/``rejected_id`` = sha256 of the text, ``source`` = ``label:<kind>``) and
  ``labeller``, ``kind``, ``note``, ``judged_at``.  Every row is in one ``split``
  (``train`` by default: explicit labels are for training; the eval samples they come
  from are usually of the data's test prompts, so a ``--split`` by thread would put them
  all in test);
* ``responses.parquet``: each distinct answer of those pairs once (what a reward model's
  normalisation and covariates read);
* ``manifest.json`` (stage ``label``): counts, the agreement below, the community.

``ambient rm --data AMBIENT_DIR EXPORT_DIR data_weights=[1,W]`` trains on both, an
explicit pair weighing ``W`` times an ambient one.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema
from ambient_rlhf.data.build import PAIRS_SCHEMA, RESPONSES_SCHEMA
from ambient_rlhf.io import atomic_dir, write_manifest
from ambient_rlhf.label.store import Store

EXPORT_PAIRS_SCHEMA = PAIRS_SCHEMA.append(pa.field("labeller", pa.string())) \
    .append(pa.field("kind", pa.string())).append(pa.field("note", pa.string())) \
    .append(pa.field("judged_at", pa.float64()))


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion ``k / n`` (95% by default); None for n = 0."""
    if n == 0:
        return None
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (mid - half, mid + half)


def cohen_kappa(x: list[str], y: list[str]) -> float | None:
    """Cohen's kappa of two labellers' labels of the same items (None when chance
    agreement is 1, i.e. both always gave one and the same label)."""
    n = len(x)
    if n == 0:
        return None
    po = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    pe = sum(cx[c] * cy[c] for c in cx) / (n * n)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def _proportion(k: int, n: int) -> dict:
    ci = wilson(k, n)
    return {"n": n, "agree": k, "rate": (k / n) if n else None,
            "low": ci[0] if ci else None, "high": ci[1] if ci else None}


def agreement(judgements: list[dict]) -> dict:
    """Agreement of live judgements (dicts with ``item_id, labeller, winner, kind``).

    * ``labellers``: over items judged (a, b or tie; skips left out) by two or more
      labellers, every pair of labellers on every such item: the share that gave the same
      answer, and per pair of labellers that share and Cohen's kappa (labels a/b/tie);
    * ``upvotes``: decisive judgements (a or b) of upvote pairs: the share picking the
      answer the community upvoted more, with a 95% Wilson interval; ties counted;
    * ``policy``: decisive judgements of policy-vs-reference items: the share preferring
      the policy (a person's win rate of the policy), with its interval; ties counted."""
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for j in judgements:
        if j["winner"] != "skip":
            by_item[j["item_id"]][j["labeller"]] = j["winner"]
    same = total = 0
    per_pair: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for votes in by_item.values():
        for p, q in combinations(sorted(votes), 2):
            total += 1
            same += votes[p] == votes[q]
            per_pair[(p, q)][0].append(votes[p])
            per_pair[(p, q)][1].append(votes[q])
    pairs = {f"{p}|{q}": {**_proportion(sum(a == b for a, b in zip(x, y)), len(x)), "kappa": cohen_kappa(x, y)}
             for (p, q), (x, y) in sorted(per_pair.items())}
    out = {"labellers": {**_proportion(same, total), "items": sum(len(v) >= 2 for v in by_item.values()),
                         "by_pair": pairs}}
    for kind, key in (("upvote", "upvotes"), ("policy_vs_reference", "policy")):
        js = [j for j in judgements if j["kind"] == kind]
        dec = [j for j in js if j["winner"] in ("a", "b")]
        out[key] = {**_proportion(sum(j["winner"] == "a" for j in dec), len(dec)),
                    "ties": sum(j["winner"] == "tie" for j in js), "skips": sum(j["winner"] == "skip" for j in js)}
    return out


def _text_id(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def export_labels(db: str | Path, out: str | Path, split: str = "train", overwrite: bool = False) -> dict:
    """Write the export directory ``out`` from the database ``db``; returns its manifest."""
    if split not in schema.SPLITS:
        raise AmbientError(f"--split {split!r}: one of {list(schema.SPLITS)}")
    if not Path(db).is_file():
        raise AmbientError(f"{db}: no such database; label first (`ambient label --samples ... --db {db}`)")
    if Path(out).resolve() in Path(db).resolve().parents:  # replacing out would delete the judgements
        raise AmbientError(f"--out {out} holds the database {db}; choose an --out outside it")
    store = Store(db)
    try:
        js = store.live_judgements()
        counts = store.counts()
    finally:
        store.close()
    decisive = [j for j in js if j["winner"] in ("a", "b")]
    counts.update(live_judgements=len(js), pairs=len(decisive),
                  ties=sum(j["winner"] == "tie" for j in js), skips=sum(j["winner"] == "skip" for j in js))
    if not decisive:
        raise AmbientError(f"{db}: no A/B judgement to export ({counts['live_judgements']} live judgements: "
                           f"{counts['ties']} ties, {counts['skips']} skips)")
    pairs, responses, seen = [], [], set()
    for j in decisive:
        chosen, rejected = (j["a"], j["b"]) if j["winner"] == "a" else (j["b"], j["a"])
        pairs.append({"thread_id": j["thread_id"], "prompt": j["prompt"], "chosen": chosen, "rejected": rejected,
                      "split": split, "chosen_id": _text_id(chosen), "rejected_id": _text_id(rejected),
                      "source": f"label:{j['kind']}", "labeller": j["labeller"], "kind": j["kind"],
                      "note": j["note"], "judged_at": j["judged_at"]})
        for text in (chosen, rejected):
            if (j["thread_id"], text) not in seen:
                seen.add((j["thread_id"], text))
                responses.append({"thread_id": j["thread_id"], "response_id": _text_id(text), "prompt": j["prompt"],
                                  "response": text, "split": split, "community": j["community"] or None,
                                  "source": "label"})
    communities = Counter(j["community"] for j in decisive if j["community"])
    agree = agreement(js)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        pq.write_table(pa.Table.from_pylist(pairs, schema=EXPORT_PAIRS_SCHEMA), tmp / schema.PAIRS_FILE)
        pq.write_table(pa.Table.from_pylist(responses, schema=RESPONSES_SCHEMA), tmp / schema.RESPONSES_FILE)
        m = write_manifest(tmp, "label", {"db": str(db), "split": split}, inputs=[db], counts=counts,
                           agreement=agree, community=communities.most_common(1)[0][0] if communities else "",
                           files=[schema.PAIRS_FILE, schema.RESPONSES_FILE])
    return m


def format_summary(m: dict) -> str:
    """The lines ``ambient label export`` prints."""
    c, a = m["counts"], m["agreement"]

    def prop(d: dict) -> str:
        if not d["n"]:
            return "no judgements"
        return f"{d['rate']:.3f} [{d['low']:.3f}, {d['high']:.3f}] of {d['n']}"
    lines = [f"{c['pairs']} pairs from {c['live_judgements']} judgements by {c['labellers']} labeller(s) "
             f"({c['ties']} ties, {c['skips']} skips, {c['undone']} undone) on {c['items']} items",
             f"labellers agree: {prop(a['labellers'])} labeller pairs on {a['labellers']['items']} shared items"]
    for k, v in a["labellers"]["by_pair"].items():
        kappa = "n/a" if v["kappa"] is None else f"{v['kappa']:.3f}"
        lines.append(f"  {k}: {v['rate']:.3f} of {v['n']}, kappa {kappa}")
    lines.append(f"agree with the upvotes: {prop(a['upvotes'])} ({a['upvotes']['ties']} ties)")
    lines.append(f"prefer the policy to the reference: {prop(a['policy'])} ({a['policy']['ties']} ties)")
    return "\n".join(lines)
