"""The comparisons a labeller is shown, read from the project's own outputs.

Two kinds of item, each a prompt and two responses ``a`` and ``b``:

* ``policy_vs_reference``: a row of an ``ambient eval`` directory's ``samples.jsonl``
  (``a`` = the policy's answer, ``b`` = the reference's, usually the SFT model);
* ``upvote``: a row of a data directory's ``pairs.parquet`` (``a`` = the answer the
  community upvoted more, ``b`` = the other), to measure how often a person agrees with
  the upvotes.

Which of ``a``/``b`` is shown on the left is drawn at random per labeller when the item
is first shown (:mod:`ambient_rlhf.label.store`), never here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema
from ambient_rlhf.data.tables import community_name, read_table

KINDS = ("policy_vs_reference", "upvote")
SAMPLES_FILE = "samples.jsonl"


@dataclass(frozen=True)
class Item:
    item_id: str
    kind: str
    thread_id: str
    prompt: str
    a: str
    b: str
    source: str
    """Where it came from (``file:line`` or ``file#row``)."""
    community: str = ""


def item_id(kind: str, thread_id: str, prompt: str, a: str, b: str) -> str:
    """A stable id from the content: the same comparison read twice is one item."""
    h = hashlib.sha256(json.dumps([kind, thread_id, prompt, a, b]).encode("utf-8")).hexdigest()
    return h[:20]


def _eval_community(eval_dir: Path) -> str:
    """The community of the data directory an ``ambient eval`` run read (its manifest)."""
    try:
        cfg = json.loads((eval_dir / "manifest.json").read_text()).get("config", {})
        data = cfg.get("data")
        if data and Path(data).is_dir():
            return community_name(data)
    except (OSError, json.JSONDecodeError):
        pass
    return ""


def read_samples(path: str | Path, counts: dict) -> list[Item]:
    """Items from an ``ambient eval`` ``samples.jsonl``: one per row (policy vs reference).
    A malformed line is an error naming ``file:line`` and the field."""
    path = Path(path)
    community = _eval_community(path.parent)
    out = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AmbientError(f"{path}:{n}: not JSON ({e.msg}); expected one ambient eval sample per line") from None
            for key in ("thread_id", "prompt", "policy", "reference"):
                if not isinstance(row.get(key), str):
                    raise AmbientError(f"{path}:{n}: field '{key}' missing or not text; is this an "
                                       f"`ambient eval` samples.jsonl?")
            if row["policy"] == row["reference"]:
                counts["identical_answers"] = counts.get("identical_answers", 0) + 1
                continue
            kind = "policy_vs_reference"
            iid = item_id(kind, row["thread_id"], row["prompt"], row["policy"], row["reference"])
            out.append(Item(iid, kind, row["thread_id"], row["prompt"], row["policy"], row["reference"],
                            f"{path}:{n}", community))
    counts["policy_vs_reference"] = counts.get("policy_vs_reference", 0) + len(out)
    return out


def read_upvote_pairs(data_dir: str | Path, counts: dict, max_pairs: int, seed: int, split: str | None) -> list[Item]:
    """At most ``max_pairs`` (0 = all) pairs of a data directory's ``pairs.parquet``, a
    seeded choice; ``a`` is the upvoted answer."""
    df = read_table(data_dir, schema.PAIRS_FILE, ("thread_id", "prompt", "chosen", "rejected", "split"), split or None)
    rows = np.arange(len(df))
    if max_pairs and len(rows) > max_pairs:
        rows = np.sort(np.random.RandomState(seed).choice(rows, max_pairs, replace=False))
    com = community_name(data_dir)
    path = Path(data_dir) / schema.PAIRS_FILE
    out = []
    for i in rows:
        r = df.iloc[int(i)]
        kind = "upvote"
        iid = item_id(kind, str(r.thread_id), r.prompt, r.chosen, r.rejected)
        out.append(Item(iid, kind, str(r.thread_id), r.prompt, r.chosen, r.rejected, f"{path}#{int(i)}", com))
    counts["upvote"] = counts.get("upvote", 0) + len(out)
    return out


def _is_data_dir(p: Path) -> bool:
    """A data directory with upvote pairs (not an ``ambient label export``, whose pairs are
    a person's choices)."""
    if not ((p / schema.PAIRS_FILE).is_file() and (p / schema.RESPONSES_FILE).is_file()):
        return False
    try:
        return json.loads((p / "manifest.json").read_text()).get("stage") != "label"
    except (OSError, json.JSONDecodeError, AttributeError):
        return True


def find_items(sources: list[str], max_upvote_pairs: int = 50, seed: int = 0,
               upvote_split: str = "", counts: dict | None = None) -> list[Item]:
    """Every item of ``sources``: ``samples.jsonl`` files, ``pairs.parquet`` files, eval
    directories, data directories, or run directories holding them (searched two levels
    deep).  Duplicates (same content) are kept once."""
    counts = counts if counts is not None else {}
    items: list[Item] = []
    for s in sources:
        p = Path(s)
        if not p.exists():
            raise AmbientError(f"--samples {s}: no such file or directory")
        found = []
        if p.is_file():
            if p.name.endswith(".jsonl"):
                found = read_samples(p, counts)
            elif p.name.endswith(".parquet"):
                found = read_upvote_pairs(p.parent, counts, max_upvote_pairs, seed, upvote_split)
            else:
                raise AmbientError(f"--samples {s}: expected an ambient eval samples.jsonl or a data "
                                   f"directory's pairs.parquet")
        else:
            dirs = [p] + sorted(q for q in p.iterdir() if q.is_dir())
            dirs += sorted(r for q in dirs[1:] for r in q.iterdir() if r.is_dir())
            for d in dirs:
                if (d / SAMPLES_FILE).is_file():
                    found += read_samples(d / SAMPLES_FILE, counts)
                elif _is_data_dir(d):
                    found += read_upvote_pairs(d, counts, max_upvote_pairs, seed, upvote_split)
            if not found:
                raise AmbientError(f"--samples {s}: no {SAMPLES_FILE} (ambient eval) and no data directory "
                                   f"(pairs.parquet + responses.parquet) in it or two levels below")
        items += found
    seen, unique = set(), []
    for it in items:
        if it.item_id in seen:
            counts["duplicates"] = counts.get("duplicates", 0) + 1
            continue
        seen.add(it.item_id)
        unique.append(it)
    return unique
