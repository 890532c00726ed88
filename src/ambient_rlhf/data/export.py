"""``ambient export trl DATA_DIR``: a data directory as files TRL and ``datasets`` read as they are.

Two datasets, one JSON Lines file per split (``train.jsonl``, ``valid.jsonl``,
``test.jsonl``; a split with no rows gets no file):

* ``preference/``: the pairs of ``pairs.parquet`` in TRL's *preference* format --
  ``prompt``, ``chosen``, ``rejected`` -- what ``RewardTrainer`` and ``DPOTrainer`` take;
* ``prompt_completion/``: the responses of ``responses.parquet`` in TRL's
  *prompt-completion* format -- ``prompt``, ``completion`` -- what ``SFTTrainer`` takes,
  with the community's signals (``score``, ``rank``, ``tier``, ...) as extra columns to
  filter on (``ds.filter(lambda r: r["tier"] == "good")``).

``conversational`` (the default) writes messages (``[{"role": "user", "content": ...}]``),
so TRL applies the tokenizer's chat template; ``standard`` writes plain strings.
``datasets.load_dataset("OUT/preference")`` gives a ``DatasetDict`` with ``train``,
``validation`` (from ``valid.jsonl``) and ``test``.

Rows whose prompt or answer text is empty or missing are skipped and counted (a data
directory built by ``ambient data build`` has none).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator, Literal

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema
from ambient_rlhf.data.tables import community_name, read_table
from ambient_rlhf.io import atomic_dir, write_manifest

FORMATS = ("conversational", "standard")
PREFERENCE_DIR = "preference"
COMPLETION_DIR = "prompt_completion"
EXTRA_PAIR_COLUMNS = ("thread_id", "chosen_score", "rejected_score", "score_ratio")
EXTRA_RESPONSE_COLUMNS = ("thread_id", "response_id", "score", "rank", "adjusted", "tier", "reply_sentiment")


def _text(v: Any) -> str | None:
    """A non-empty string, else None (null, NaN, blank)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v)
    return s if s.strip() else None


def _plain(v: Any) -> Any:
    """A JSON value from a pandas/numpy cell (NaN -> null)."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def _user(text: str, fmt: str) -> Any:
    return [{"role": "user", "content": text}] if fmt == "conversational" else text


def _assistant(text: str, fmt: str) -> Any:
    return [{"role": "assistant", "content": text}] if fmt == "conversational" else text


def preference_rows(df, fmt: str, counts: dict[str, int]) -> Iterator[tuple[str, dict]]:
    """(split, row) for every usable pair; ``counts['skipped_pairs']`` counts the rest."""
    for r in df.itertuples(index=False):
        prompt, chosen, rejected = _text(r.prompt), _text(r.chosen), _text(r.rejected)
        if prompt is None or chosen is None or rejected is None:
            counts["skipped_pairs"] += 1
            continue
        row = {"prompt": _user(prompt, fmt), "chosen": _assistant(chosen, fmt),
               "rejected": _assistant(rejected, fmt)}
        row.update({c: _plain(getattr(r, c)) for c in EXTRA_PAIR_COLUMNS})
        yield str(r.split), row


def completion_rows(df, fmt: str, counts: dict[str, int]) -> Iterator[tuple[str, dict]]:
    """(split, row) for every usable response; ``counts['skipped_responses']`` counts the rest."""
    for r in df.itertuples(index=False):
        prompt, response = _text(r.prompt), _text(r.response)
        if prompt is None or response is None:
            counts["skipped_responses"] += 1
            continue
        row = {"prompt": _user(prompt, fmt), "completion": _assistant(response, fmt)}
        row.update({c: _plain(getattr(r, c)) for c in EXTRA_RESPONSE_COLUMNS})
        yield str(r.split), row


def _write_splits(folder: Path, rows: Iterator[tuple[str, dict]], community: str) -> dict[str, int]:
    folder.mkdir(parents=True, exist_ok=True)
    handles: dict[str, Any] = {}
    n: dict[str, int] = {}
    try:
        for split, row in rows:
            if split not in schema.SPLITS:
                raise AmbientError(f"split {split!r} is not one of {list(schema.SPLITS)} "
                                   f"(thread {row.get('thread_id')}); rebuild the data directory")
            if split not in handles:
                handles[split] = (folder / f"{split}.jsonl").open("w", encoding="utf-8")
                n[split] = 0
            row["community"] = community
            handles[split].write(json.dumps(row, ensure_ascii=False) + "\n")
            n[split] += 1
    finally:
        for h in handles.values():
            h.close()
    return {s: n[s] for s in schema.SPLITS if s in n}


def export_trl(data_dir: str | Path, out: str | Path, fmt: Literal["conversational", "standard"] = "conversational",
               overwrite: bool = False) -> dict[str, Any]:
    """Write ``out/preference/<split>.jsonl`` and ``out/prompt_completion/<split>.jsonl``
    from the data directory ``data_dir`` (module docstring); return the manifest."""
    if fmt not in FORMATS:
        raise AmbientError(f"format {fmt!r}: expected one of {list(FORMATS)}")
    data_dir, out = Path(data_dir), Path(out)
    if out.resolve() == data_dir.resolve() or data_dir.resolve() in out.resolve().parents:
        raise AmbientError(f"{out}: the output lies inside the data directory {data_dir}; choose another --out")
    pairs = read_table(data_dir, schema.PAIRS_FILE, ("prompt", "chosen", "rejected", "split", *EXTRA_PAIR_COLUMNS))
    responses = read_table(data_dir, schema.RESPONSES_FILE,
                           ("prompt", "response", "split", *EXTRA_RESPONSE_COLUMNS))
    community = community_name(data_dir)
    counts = {"skipped_pairs": 0, "skipped_responses": 0}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        counts["pairs_per_split"] = _write_splits(tmp / PREFERENCE_DIR, preference_rows(pairs, fmt, counts), community)
        counts["responses_per_split"] = _write_splits(tmp / COMPLETION_DIR, completion_rows(responses, fmt, counts),
                                                      community)
        (tmp / "README.md").write_text(_readme(community, fmt, counts))
        manifest = write_manifest(tmp, "export-trl", config={"format": fmt}, inputs=[data_dir / schema.PAIRS_FILE,
                                                                                    data_dir / schema.RESPONSES_FILE],
                                  counts=counts, community=community)
    return manifest


def _readme(community: str, fmt: str, counts: dict[str, Any]) -> str:
    return f"""# {community}: community preferences for TRL

Written by `ambient export trl` ({fmt} format).

| dataset | TRL format | rows per split |
|---|---|---|
| `{PREFERENCE_DIR}/` | preference (`prompt`, `chosen`, `rejected`) | {json.dumps(counts['pairs_per_split'])} |
| `{COMPLETION_DIR}/` | prompt-completion (`prompt`, `completion`) | {json.dumps(counts['responses_per_split'])} |

Skipped (empty text): {counts['skipped_pairs']} pairs, {counts['skipped_responses']} responses.

```python
from datasets import load_dataset
pairs = load_dataset("{PREFERENCE_DIR}")        # DatasetDict: train, validation, test
# trl.RewardTrainer(..., train_dataset=pairs["train"]) or trl.DPOTrainer(...)
sft = load_dataset("{COMPLETION_DIR}")["train"].filter(lambda r: r["tier"] == "good")
```

Pairs follow the SHP rule (the preferred answer was posted later and scored at least
twice as high); responses carry the community's score, rank, adjusted rank and tier.
"""
