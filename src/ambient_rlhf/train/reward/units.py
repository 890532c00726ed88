"""Training units of each objective (pairs, ranked threads, single responses), read from
data directories, and the subsets taken of them."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema
from ambient_rlhf.data.splits import half_of
from ambient_rlhf.data.tables import community_name, read_table
from ambient_rlhf.models.reward_inputs import TextTable
from ambient_rlhf.train.reward.config import RewardConfig


@dataclass
class Unit:
    """One training example: its thread, its (prompt, response) texts as written in the
    data, and its target.  ``rows`` (their indices in a :class:`TextTable`, which renders
    them for the reward model) are filled by :func:`index_units`, after subsetting, so
    only the texts in use are tokenised."""
    thread: str
    texts: list[tuple[str, str]]
    target: Any = None
    """pairwise: None (rows = [chosen, rejected]); ranking: list of scores (higher is
    better); tiers: tier index; reply-sentiment: the sentiment."""
    rows: list[int] = field(default_factory=list)
    community: str | None = None
    """The community of the thread (the reward model may prefix it to the prompt)."""
    cov: list[list[float]] | None = None
    """``covariates``: one vector per text (the raw values, ``data.covariates``)."""
    weight: float = 1.0
    """``pairwise``: the weight of its term in the loss (its data directory's ``data_weights``)."""


def index_units(units: list[Unit], table: TextTable) -> list[Unit]:
    """Tokenise the units' texts into ``table`` (each distinct text once); set ``rows``."""
    for u in units:
        u.rows = [table.add(p, r, u.community) for p, r in u.texts]
    return units


def load_units(cfg: RewardConfig, split: str, objective: str | None = None,
               half: str = "all", counts: dict | None = None) -> list[Unit]:
    """Units of ``objective`` from every data directory's ``split``."""
    objective = objective or cfg.objective
    counts = counts if counts is not None else {}
    units: list[Unit] = []
    rng = np.random.RandomState(cfg.seed)
    weights = cfg.data_weights or [1.0] * len(cfg.data)
    for d, w in zip(cfg.data, weights):
        com = community_name(d)
        keep = (lambda t: True) if half == "all" else (lambda t: half_of(t) == half)
        if objective == "pairwise":
            for u in _pair_units(cfg, d, com, split, counts):
                if keep(u.thread.split("/", 1)[1]):
                    u.weight = float(w)
                    units.append(u)
        elif objective == "ranking":
            df = read_table(d, schema.RANKINGS_FILE, schema.RANKING_COLUMNS, split)
            for r in df.itertuples(index=False):
                if not keep(r.thread_id) or len(r.responses) < 2:
                    continue
                idx = np.arange(len(r.responses))
                if len(idx) > cfg.max_ranked:
                    idx = np.sort(rng.choice(idx, cfg.max_ranked, replace=False))
                    counts["ranking_responses_dropped"] = counts.get("ranking_responses_dropped", 0) + len(r.responses) - len(idx)
                units.append(Unit(f"{com}/{r.thread_id}", [(r.prompt, r.responses[i]) for i in idx],
                                  [float(r.adjusted[i]) for i in idx], community=com))
        else:
            df = read_table(d, schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS, split)
            col = "tier" if objective == "tiers" else "reply_sentiment"
            n0 = len(df)
            df = df[df[col].notna()]
            counts[f"{split}_without_{col}"] = counts.get(f"{split}_without_{col}", 0) + n0 - len(df)
            for r in df.itertuples(index=False):
                if not keep(r.thread_id):
                    continue
                if objective == "tiers" and r.tier not in schema.TIERS:
                    raise AmbientError(f"{Path(d) / schema.RESPONSES_FILE}: tier {r.tier!r} of response "
                                       f"{r.response_id} is not one of {schema.TIERS}")
                target = schema.TIERS.index(r.tier) if objective == "tiers" else float(r.reply_sentiment)
                units.append(Unit(f"{com}/{r.thread_id}", [(r.prompt, r.response)], target, community=com))
    return units


def _is_label_export(data_dir) -> bool:
    """Whether a data directory holds explicit comparisons (its manifest's stage is ``label``)."""
    try:
        return json.loads((Path(data_dir) / "manifest.json").read_text()).get("stage") == "label"
    except (OSError, ValueError, AttributeError):
        return False


def _pair_units(cfg: RewardConfig, data_dir, com: str, split: str, counts: dict) -> list[Unit]:
    """Pairwise units of one data directory's ``split``: pairs.parquet (``pairs=time_rule``),
    every candidate pair of responses.parquet (``pairs=all``) or act_pairs.parquet
    (``pairs=acts``, ``ambient data acts``), with the covariates of
    both answers when ``cfg.covariates`` asks for them."""
    from ambient_rlhf.data.covariates import candidate_pairs, response_covariates

    if _is_label_export(data_dir):
        # a person's explicit choices (ambient label export): its pairs.parquet whatever
        # ``pairs`` says (its answers have no scores to form candidate pairs from), and no
        # exposure: both answers get the same covariates, so the covariate term is 0
        df = read_table(data_dir, schema.PAIRS_FILE, schema.PAIR_COLUMNS, split)
        counts[f"{split}_explicit_pairs"] = counts.get(f"{split}_explicit_pairs", 0) + len(df)
        zero = [0.0] * len(cfg.covariates)
        return [Unit(f"{com}/{r.thread_id}", [(r.prompt, r.chosen), (r.prompt, r.rejected)], community=com,
                     cov=[zero, zero] if cfg.covariates else None) for r in df.itertuples(index=False)]
    need_responses = cfg.pairs == "all" or bool(cfg.covariates)
    resp = read_table(data_dir, schema.RESPONSES_FILE, schema.RESPONSE_COLUMNS, split) if need_responses else None
    if cfg.pairs == "all":
        df = candidate_pairs(resp, cfg.all_pairs_min_ratio, cfg.all_pairs_min_score, cfg.all_pairs_per_thread, cfg.seed)
        counts[f"{split}_candidate_pairs"] = counts.get(f"{split}_candidate_pairs", 0) + len(df)
    elif cfg.pairs == "acts":
        df = read_table(data_dir, schema.ACT_PAIRS_FILE, schema.PAIR_COLUMNS, split)
    else:
        df = read_table(data_dir, schema.PAIRS_FILE, schema.PAIR_COLUMNS, split)
    cov = None
    if cfg.covariates:
        x = response_covariates(resp, cfg.covariates)  # (N, k)
        if cfg.pairs == "all":
            cov = [(x[a].tolist(), x[b].tolist()) for a, b in zip(df["chosen_row"], df["rejected_row"])]
        else:  # pairs.parquet names its answers by text: find them among the thread's responses
            where = {(t, r): i for i, (t, r) in enumerate(zip(resp["thread_id"], resp["response"]))}
            cov = []
            for t, c, r in zip(df["thread_id"], df["chosen"], df["rejected"]):
                ic, ir = where.get((t, c)), where.get((t, r))
                cov.append(None if ic is None or ir is None else (x[ic].tolist(), x[ir].tolist()))
    units = []
    for n, r in enumerate(df.itertuples(index=False)):
        u = Unit(f"{com}/{r.thread_id}", [(r.prompt, r.chosen), (r.prompt, r.rejected)], community=com)
        if cov is not None:
            if cov[n] is None:  # an answer of pairs.parquet missing from responses.parquet
                counts["pairs_without_covariates"] = counts.get("pairs_without_covariates", 0) + 1
                continue
            u.cov = [cov[n][0], cov[n][1]]
        units.append(u)
    return units


def balance_by_length(units: list[Unit], seed: int, counts: dict | None = None) -> list[Unit]:
    """Pairwise units with as many "preferred is longer" as "preferred is shorter" pairs
    (in whitespace words): a seeded random subset of the larger side is dropped; pairs of
    equal length stay.  Order is kept.  ``counts["length_balance_dropped"]`` says how many
    went."""
    longer = [i for i, u in enumerate(units) if len(u.texts[0][1].split()) > len(u.texts[1][1].split())]
    shorter = [i for i, u in enumerate(units) if len(u.texts[0][1].split()) < len(u.texts[1][1].split())]
    big, small = (longer, shorter) if len(longer) > len(shorter) else (shorter, longer)
    rng = np.random.RandomState(seed)
    drop = set(rng.choice(big, len(big) - len(small), replace=False).tolist()) if len(big) > len(small) else set()
    if counts is not None:
        counts["length_balance_dropped"] = counts.get("length_balance_dropped", 0) + len(drop)
    return [u for i, u in enumerate(units) if i not in drop]


def subset_threads(units: list[Unit], n: int, seed: int) -> list[Unit]:
    """At most ``n`` units, taking whole threads in a seeded random order."""
    if n <= 0 or len(units) <= n:
        return units
    threads = sorted({u.thread for u in units})
    order = np.random.RandomState(seed).permutation(len(threads))
    by = defaultdict(list)
    for u in units:
        by[u.thread].append(u)
    out: list[Unit] = []
    for i in order:
        out.extend(by[threads[i]])
        if len(out) >= n:
            break
    return out[:n]


def reference_units(cfg: RewardConfig) -> list[Unit]:
    """The valid split's responses (all of them: the human responses are the reference the
    policy's samples are compared against), one unit each."""
    units = []
    for d in cfg.data:
        com = community_name(d)
        df = read_table(d, schema.RESPONSES_FILE, ("thread_id", "prompt", "response", "split"), "valid")
        for r in df.itertuples(index=False):
            units.append(Unit(f"{com}/{r.thread_id}", [(r.prompt, r.response)], community=com))
    return units
