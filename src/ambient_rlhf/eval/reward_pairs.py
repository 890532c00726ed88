"""The pair sets of ``ambient rm eval`` beside the data directory's own pairs: a subset of
whole threads (``max_pairs``), the pairs without the time rule, and the training pairs
of the bag-of-words baseline.

Pairs without the time rule come from the data directory when it has them
(``schema.PAIRS_NO_TIME_FILE`` or one of :data:`NO_TIME_FILES`), else they are built from
responses.parquet: within a thread, A over B when score_A >= 2 score_B and score_B >= 2,
regardless of posting time, at most 10 per thread.

:mod:`ambient_rlhf.eval.reward_eval` uses them and re-exports the public names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ambient_rlhf.data import schema
from ambient_rlhf.logging import get_logger

log = get_logger("rm.eval")

NO_TIME_FILES = ("pairs_no_time_rule.parquet", "pairs_untimed.parquet")
UNTIMED_MIN_RATIO, UNTIMED_MIN_SCORE, UNTIMED_PER_THREAD = 2.0, 2, 10


BOW_MAX_TRAIN = 100_000


def _bag_of_words(meta: dict[str, Any], bow_train: Any, seed: int):
    """The bag-of-words baseline fitted on ``bow_train`` (see :func:`evaluate_reward`), or None."""
    import pandas as pd

    from ambient_rlhf.data.splits import half_of
    from ambient_rlhf.data.tables import read_table
    from ambient_rlhf.eval.baselines import BagOfWordsReward

    if bow_train is None or (isinstance(bow_train, str) and bow_train == "none"):
        return None
    if isinstance(bow_train, str):
        dirs = [d for d in meta.get("train_data") or [] if (Path(d) / schema.PAIRS_FILE).is_file()]
        if not dirs:
            log.info("rm eval: the reward model's config names no training data here; no bag-of-words baseline")
            return None
        half = meta.get("train_half", "all")
        frames = []
        for d in dirs:
            df = read_table(d, schema.PAIRS_FILE, ("thread_id", "chosen", "rejected", "split"), "train")
            if half in ("a", "b"):
                df = df[[half_of(t) == half for t in df["thread_id"]]]
            frames.append(df)
        bow_train = pd.concat(frames, ignore_index=True)
    if len(bow_train) < 2:
        return None
    if len(bow_train) > BOW_MAX_TRAIN:
        bow_train = bow_train.sample(BOW_MAX_TRAIN, random_state=seed)
    bow = BagOfWordsReward(seed=seed).fit(bow_train["chosen"].tolist(), bow_train["rejected"].tolist())
    bow.n_train = int(len(bow_train))
    return bow


def build_untimed_pairs(responses, per_thread: int = UNTIMED_PER_THREAD, seed: int = 0):
    """Pairs ignoring the time rule (module doc), as a DataFrame in the pairs layout: the
    candidate pairs of ``data.covariates.candidate_pairs`` (the rule ``ambient rm
    pairs=all`` trains on), at most ``per_thread`` per thread."""
    from ambient_rlhf.data.covariates import candidate_pairs

    cols = ["thread_id", "prompt", "chosen", "rejected", "chosen_created_utc", "rejected_created_utc"]
    return candidate_pairs(responses, UNTIMED_MIN_RATIO, UNTIMED_MIN_SCORE, per_thread, seed)[cols].reset_index(drop=True)


def _subset(df, max_pairs: int, seed: int):
    if max_pairs <= 0 or len(df) <= max_pairs:
        return df
    threads = np.array(sorted(df["thread_id"].unique()))
    order = np.random.default_rng(seed).permutation(len(threads))
    keep, n = [], 0
    counts = df["thread_id"].value_counts()
    for i in order:
        keep.append(threads[i])
        n += counts[threads[i]]
        if n >= max_pairs:
            break
    return df[df["thread_id"].isin(keep)].head(max_pairs).reset_index(drop=True)


def _load_untimed(data_dir: Path, split: str, seed: int):
    import pandas as pd

    names = [getattr(schema, "PAIRS_NO_TIME_FILE", None), *NO_TIME_FILES]
    for name in names:
        if name and (data_dir / name).is_file():
            df = pd.read_parquet(data_dir / name)
            if "split" in df.columns:
                df = df[df["split"] == split]
            return df.reset_index(drop=True), f"file:{name}"
    from ambient_rlhf.data.tables import read_table

    resp = read_table(data_dir, schema.RESPONSES_FILE, ("thread_id", "prompt", "response", "score", "created_utc", "split"), split)
    return build_untimed_pairs(resp, seed=seed), "built from responses.parquet without the time rule"
