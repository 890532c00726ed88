"""``ambient data build``: community dumps/tables -> a labelled data directory.

Flow (each thread is handled once, then forgotten):

1. discover the inputs (dumps, tables, SHP files)            -> sources.discover
2. stream records, filter them, assemble threads              -> threads.read_input
3. per thread: min-responses filter, split by hash, labels, SHP pairs, ranking
   -> appended to parquet files in chunks                      -> labels, pairs, splits
4. bad-record check against ``max_bad_fraction``
5. tiers: quantiles of ``adjusted`` over the train split; responses rewritten with them
6. report.md + plots, manifest.json; the temp dir is renamed to ``out``
"""

from __future__ import annotations

import array
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ambient_rlhf import AmbientError
from ambient_rlhf.config import to_dict
from ambient_rlhf.data import labels as L
from ambient_rlhf.data.config import DataConfig
from ambient_rlhf.data.pairs import PairRule, is_pair, thread_pairs
from ambient_rlhf.data.schema import PAIRS_FILE, RANKINGS_FILE, RESPONSES_FILE
from ambient_rlhf.data.sources import BadRecords, discover
from ambient_rlhf.data.splits import split_of
from ambient_rlhf.data.records import Counts, Thread
from ambient_rlhf.data.threads import read_input
from ambient_rlhf.io import atomic_dir, write_manifest
from ambient_rlhf.logging import get_logger

log = get_logger("data.build")

SHOW_BAD = 5  # bad records printed (all are counted)
CHUNK_ROWS = 4096  # rows buffered before a parquet row group is written


# ---------------------------------------------------------------- output schemas

RESPONSES_SCHEMA = pa.schema([
    ("thread_id", pa.string()), ("response_id", pa.string()), ("prompt", pa.string()),
    ("response", pa.string()), ("score", pa.int64()), ("created_utc", pa.int64()),
    ("prompt_score", pa.int64()), ("prompt_created_utc", pa.int64()), ("rank", pa.int64()),
    ("rank_z", pa.float64()), ("delay_z", pa.float64()), ("adjusted", pa.float64()),
    ("tier", pa.string()), ("reply_sentiment", pa.float64()), ("split", pa.string()),
    # extras
    ("delay", pa.float64()), ("num_replies", pa.int64()), ("thread_size", pa.int64()),
    ("community", pa.string()), ("source", pa.string()),
])
PAIRS_SCHEMA = pa.schema([
    ("thread_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()),
    ("rejected", pa.string()), ("chosen_score", pa.int64()), ("rejected_score", pa.int64()),
    ("chosen_created_utc", pa.int64()), ("rejected_created_utc", pa.int64()),
    ("score_ratio", pa.float64()), ("seconds_difference", pa.int64()), ("split", pa.string()),
    # extras
    ("chosen_id", pa.string()), ("rejected_id", pa.string()), ("prompt_score", pa.int64()),
    ("source", pa.string()),
])
RANKINGS_SCHEMA = pa.schema([
    ("thread_id", pa.string()), ("prompt", pa.string()), ("responses", pa.list_(pa.string())),
    ("scores", pa.list_(pa.int64())), ("adjusted", pa.list_(pa.float64())), ("split", pa.string()),
    # extras
    ("response_ids", pa.list_(pa.string())), ("ranks", pa.list_(pa.int64())),
    ("created_utc", pa.list_(pa.int64())), ("prompt_score", pa.int64()),
])


class ChunkWriter:
    """Buffered rows -> parquet row groups with a fixed schema (so all-null columns keep
    their type and every file loads with ``datasets``)."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self.rows: list[dict] = []
        self.n = 0
        self.w = pq.ParquetWriter(str(path), schema)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        if len(self.rows) >= CHUNK_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.w.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.n += len(self.rows)
            self.rows = []

    def close(self) -> None:
        self.flush()
        self.w.close()


def _int(x: float | None) -> int | None:
    return None if x is None else int(round(x))


# ---------------------------------------------------------------- per-thread work

class Sink:
    """Labels each thread as it arrives and appends its rows to the output files."""

    def __init__(self, tmp: Path, cfg: DataConfig, counts: Counts):
        self.cfg, self.counts = cfg, counts
        self.tmp_responses = tmp / ".responses.untiered.parquet"
        self.responses = ChunkWriter(self.tmp_responses, RESPONSES_SCHEMA)
        self.pairs = ChunkWriter(tmp / PAIRS_FILE, PAIRS_SCHEMA)
        self.rankings = ChunkWriter(tmp / RANKINGS_FILE, RANKINGS_SCHEMA)
        lab = cfg.labels
        self.rule = PairRule(lab.min_score, lab.min_prompt_score, lab.min_score_ratio, lab.time_rule,
                             lab.max_pairs_per_thread)
        self.fractions = (cfg.splits.train, cfg.splits.valid, cfg.splits.test)
        self.train_adjusted = array.array("d")  # for the tier quantiles
        self.all_adjusted = array.array("d")  # fallback when train is empty
        # rank_z*delay_z summed per train thread, and the responses they cover: summed in
        # thread order at the end (a parallel build appends each input's terms in input order)
        self.rz_terms = array.array("d")
        self.rz_n = 0
        self.seen_threads: set[str] = set()

    def add(self, th: Thread) -> None:
        c, lab = self.counts, self.cfg.labels
        c.inc("threads", "assembled")
        if th.thread_id in self.seen_threads:
            c.inc("threads", "duplicate_id")
            c.inc("responses", "in_duplicate_thread", len(th.responses))
            return
        self.seen_threads.add(th.thread_id)
        k = len(th.responses)
        if k < self.cfg.filters.min_responses:
            c.inc("threads", "too_few_responses")
            c.inc("responses", "in_too_small_thread", k)
            return
        split = split_of(th.thread_id, self.fractions, self.cfg.splits.salt)
        c.inc("threads", "kept")
        c.inc("threads_per_split", split)
        c.inc("responses_per_split", split, k)
        c.inc("responses", "written", k)

        # step 1. within-thread labels
        rs = th.responses
        scores = [r.score for r in rs]
        created = [r.created_utc for r in rs]
        lb = L.thread_labels(scores, created, th.prompt_created_utc, lab.rank_weight, lab.delay_weight)
        adj = lb["adjusted"]
        if split == "train":
            self.train_adjusted.extend(adj.tolist())
        self.all_adjusted.extend(adj.tolist())
        if split == "train" and k >= 2:
            self.rz_terms.append(float((lb["rank_z"] * lb["delay_z"]).sum()))
            self.rz_n += k
        p_created = _int(th.prompt_created_utc)
        for i, r in enumerate(rs):
            self.responses.add({
                "thread_id": th.thread_id, "response_id": r.response_id, "prompt": th.prompt,
                "response": r.text, "score": r.score, "created_utc": _int(r.created_utc),
                "prompt_score": th.prompt_score, "prompt_created_utc": p_created,
                "rank": int(lb["rank"][i]), "rank_z": float(lb["rank_z"][i]),
                "delay_z": float(lb["delay_z"][i]), "adjusted": float(adj[i]), "tier": None,
                "reply_sentiment": r.reply_sentiment, "split": split, "delay": float(lb["delay"][i]),
                "num_replies": r.n_replies, "thread_size": k, "community": th.community, "source": th.source,
            })

        # step 2. ranking (best first by adjusted; ties by score then time)
        order = sorted(range(k), key=lambda i: (-adj[i], -scores[i], created[i]))
        self.rankings.add({
            "thread_id": th.thread_id, "prompt": th.prompt, "responses": [rs[i].text for i in order],
            "scores": [scores[i] for i in order], "adjusted": [float(adj[i]) for i in order], "split": split,
            "response_ids": [rs[i].response_id for i in order], "ranks": [int(lb["rank"][i]) for i in order],
            "created_utc": [_int(created[i]) for i in order], "prompt_score": th.prompt_score,
        })

        # step 3. SHP pairs (given by the source, or derived)
        cap = split == "train"
        if th.given_pairs is None:
            pairs, pc = thread_pairs(scores, created, th.prompt_score, self.rule, cap)
            for key, n in pc.items():
                if n:
                    c.inc("pairs", key, n)
        else:
            pairs = [(a, b) for a, b in th.given_pairs
                     if is_pair(scores[a], scores[b], created[a], created[b], th.prompt_score, self.rule)]
            c.inc("pairs", "candidates", len(th.given_pairs))
            c.inc("pairs", "given_but_break_rule", len(th.given_pairs) - len(pairs))
            if cap and len(pairs) > self.rule.max_pairs:
                kept = sorted(pairs, key=lambda ab: (-scores[ab[0]] / scores[ab[1]], ab))[: self.rule.max_pairs]
                c.inc("pairs", "cap", len(pairs) - len(kept))
                pairs = sorted(kept)
            c.inc("pairs", "kept", len(pairs))
        c.inc("pairs_per_split", split, len(pairs))
        for a, b in pairs:
            ra, rb = rs[a], rs[b]
            self.pairs.add({
                "thread_id": th.thread_id, "prompt": th.prompt, "chosen": ra.text, "rejected": rb.text,
                "chosen_score": ra.score, "rejected_score": rb.score,
                "chosen_created_utc": _int(ra.created_utc), "rejected_created_utc": _int(rb.created_utc),
                "score_ratio": ra.score / rb.score if rb.score > 0 else math.inf,
                "seconds_difference": _int(ra.created_utc - rb.created_utc), "split": split,
                "chosen_id": ra.response_id, "rejected_id": rb.response_id,
                "prompt_score": th.prompt_score, "source": th.source,
            })

    def finish(self, out: Path) -> dict[str, Any]:
        """Close the files; compute tier thresholds; rewrite responses with tiers."""
        for w in (self.responses, self.pairs, self.rankings):
            w.close()
        q = self.cfg.labels.tier_quantiles
        basis = "train"
        values = self.train_adjusted
        if len(values) == 0:
            basis, values = "all splits (train is empty)", self.all_adjusted
        info: dict[str, Any] = {"tier_basis": basis}
        if len(values) == 0:
            lo = hi = None
        else:
            lo, hi = L.tier_thresholds(np.frombuffer(values, dtype=np.float64), q)
        info["tier_thresholds"] = {"bad_below": lo, "good_above": hi}
        rz = 0.0
        for x in self.rz_terms:  # in order, one by one: the same float whatever the engine
            rz += x
        info["rank_delay_correlation"] = round(rz / self.rz_n, 4) if self.rz_n else None
        pf = pq.ParquetFile(str(self.tmp_responses))
        w = pq.ParquetWriter(str(out / RESPONSES_FILE), RESPONSES_SCHEMA)
        for batch in pf.iter_batches(batch_size=CHUNK_ROWS):
            t = pa.Table.from_batches([batch], schema=RESPONSES_SCHEMA)
            if lo is not None:
                adj = t.column("adjusted").to_numpy()
                tiers = L.assign_tiers(adj, lo, hi)
                splits = t.column("split").to_pylist()
                for s, tier in zip(splits, tiers):
                    self.counts.inc(f"tiers_{s}", tier)
                t = t.set_column(t.schema.get_field_index("tier"), "tier", pa.array(tiers.tolist(), pa.string()))
            w.write_table(t)
        w.close()
        self.tmp_responses.unlink()
        return info


# ---------------------------------------------------------------- entry point

def build(sources: list[str], out: str, cfg: DataConfig, overwrite: bool = False) -> dict:
    """Build the data directory ``out`` from ``sources``; return the manifest."""
    cfg.validate()
    t0 = time.time()
    inputs = discover(list(sources), cfg.source.format)
    counts = Counts()
    bad = BadRecords(show=SHOW_BAD)
    communities: dict[str, int] = {}  # threads offered to the sink, by community
    with atomic_dir(out, overwrite) as tmp:
        sink = Sink(tmp, cfg, counts)
        for inp in inputs:
            log.info("reading %s: %s", inp.kind, ", ".join(map(str, inp.paths)))
            for th in read_input(inp, cfg, counts, bad):
                if th.community:
                    communities[th.community] = communities.get(th.community, 0) + 1
                sink.add(th)
        manifest = finalize(tmp, t0, sources, inputs, cfg, sink, counts, bad, communities)
    return manifest


def finalize(tmp: Path, t0: float, sources: list[str], inputs: list, cfg: DataConfig, sink: Sink,
             counts: Counts, bad: BadRecords, communities: dict[str, int]) -> dict:
    """Steps 4-6 once every thread is in ``sink``: the bad-record check, tiers, report and
    manifest in ``tmp``.  The single-process build and the parallel one (data/parallel.py,
    after merging the inputs' parts) both end here."""
    if bad.total and bad.fraction > cfg.max_bad_fraction:
        raise AmbientError(
            f"{bad.total} of {bad.seen} records are bad ({bad.fraction:.2%} > max_bad_fraction "
            f"{cfg.max_bad_fraction:.2%}); first: {bad.examples[0] if bad.examples else '?'}. "
            f"Check the input and --format, or raise --max-bad-fraction")
    if sink.responses.n + len(sink.responses.rows) == 0:
        raise AmbientError(_nothing_kept(sources, counts))
    info = sink.finish(tmp)
    from ambient_rlhf.data.report import write_report

    c = counts.as_dict()
    plots = write_report(tmp, cfg, c, bad.as_dict(), info)
    manifest = write_manifest(
        tmp, "data", config=to_dict(cfg),
        inputs=[p for inp in inputs for p in inp.paths],
        counts=c, bad_records=bad.as_dict(), labels=info,
        inputs_by_kind=[{"kind": i.kind, "paths": [str(p) for p in i.paths]} for i in inputs],
        files=[RESPONSES_FILE, PAIRS_FILE, RANKINGS_FILE, "report.md", *plots],
        seconds=round(time.time() - t0, 2),
        community=max(communities, key=communities.get) if communities else None, communities=communities,
        simulated=_from_simulator(p for inp in inputs for p in inp.paths),
    )
    return manifest


def _from_simulator(paths) -> bool:
    """Whether every input is a file that ``ambient data simulate`` wrote (its folder's
    manifest says stage ``simulate``): the hidden utility is known for this data."""
    import json

    seen = False
    for p in paths:
        try:
            m = json.loads((Path(p).parent / "manifest.json").read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(m, dict) or m.get("stage") != "simulate":
            return False
        seen = True
    return seen


def _nothing_kept(sources: list[str], counts: Counts) -> str:
    c = counts.as_dict()
    drops = []
    for g in ("submissions", "prompts", "responses", "shp_rows", "threads"):
        for k, v in c.get(g, {}).items():
            if k not in ("read", "kept", "assembled", "written", "kept_without_retrieved_on") and v:
                drops.append((v, f"{g}.{k}={v}"))
    drops.sort(reverse=True)
    hint = ""
    if any("no_retrieved_on" in d for _, d in drops):
        hint = ("; records without retrieved_on are dropped for score maturity: pass "
                "filters.allow_missing_retrieved_on=true when their scores are final")
    top = ", ".join(d for _, d in drops[:4]) or "no records read"
    return f"{', '.join(sources)}: no thread survived the filters ({top}){hint}"
