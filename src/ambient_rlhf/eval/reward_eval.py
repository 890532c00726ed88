"""``ambient rm eval``: how well a reward model orders held-out preference pairs, next to
the text-only baselines it must beat.

On one split of any data directory (a model trained on one community can be judged on
another) :func:`evaluate_reward` reports:

* pairwise accuracy on ``pairs.parquet``, with a 95% bootstrap interval that resamples
  whole threads (pairs of one thread share a prompt and responses, so they are not
  independent); ties count one half;
* the baselines on the same pairs: the longer answer wins (characters), and the
  log-likelihood of the response under a causal LM (summed and per token);
* the accuracy on the pairs whose preferred answer is the shorter one (where the length
  shortcut fails);
* accuracy by score-ratio bucket, by seconds_difference bucket, and by length-ratio
  bucket (``|log(words_chosen / words_rejected)|``, :data:`LENGTH_EDGES`), and on the
  similar-length pairs (``|log ratio| < SIMILAR_LENGTH``) where length says little;
* "beyond length" (:func:`beyond_length`): whether the reward difference predicts the
  preference better than the length difference alone, in thread-grouped
  cross-validated logistic regressions;
* on pairs built *without* the time rule: "the earlier answer wins" (the exposure
  confound; 0% on time-rule pairs by construction, so no baseline there), the longer
  answer, and the reward model.  They come from the data directory when it has them
  (``schema.PAIRS_NO_TIME_FILE`` or ``pairs_no_time_rule.parquet``), else they are built
  here from responses.parquet: within a thread, A over B when score_A >= 2 score_B and
  score_B >= 2, regardless of posting time, at most 10 per thread;
* calibration of ``sigmoid(r_a - r_b)`` on the model's raw (trained Bradley-Terry) scale:
  reliability by confidence bin (``max(p, 1-p)`` against the fraction ordered right) and
  the expected calibration error;
* the correlation of the reward with response length (Pearson and Spearman);
* the bag-of-words baseline (:class:`~ambient_rlhf.eval.baselines.BagOfWordsReward`:
  TF-IDF + log length, fitted on the reward model's own training pairs, which its
  ``reward_config.json`` names) on every pair set above, and ``which_part``: one table of
  the reward model next to the length-only, delay-only (earlier wins, on the pairs
  without the time rule) and bag-of-words baselines -- accuracy on all pairs, on the
  pairs whose chosen answer is the shorter one, on similar-length pairs, on the pairs
  without the time rule and on those of them the time rule drops (the chosen answer came
  first), and the Spearman correlation of each score with length;
* PNG plots next to ``eval.json``.

This module scores the texts (:func:`score_rows`) and assembles the evaluation
(:func:`evaluate_reward`, its plots).  The pure metrics are in
:mod:`ambient_rlhf.eval.reward_metrics`, the extra pair sets (thread subsets, pairs
without the time rule, bag-of-words training pairs) in :mod:`ambient_rlhf.eval.reward_pairs`,
the printed summary in :mod:`ambient_rlhf.eval.reward_summary`; every name is re-exported here.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.data import schema
from ambient_rlhf.eval.reward_metrics import (BEYOND_LENGTH_FOLDS, BEYOND_LENGTH_L2, BEYOND_LENGTH_MIN_THREADS,
                                              beyond_length, bootstrap_ci, bucket_table, correlations, fit_logistic,
                                              grouped_folds, log_word_ratio, reliability, which_part)
from ambient_rlhf.eval.reward_pairs import (BOW_MAX_TRAIN, NO_TIME_FILES, UNTIMED_MIN_RATIO, UNTIMED_MIN_SCORE,
                                            UNTIMED_PER_THREAD, _bag_of_words, _load_untimed, _subset,
                                            build_untimed_pairs)
from ambient_rlhf.eval.reward_summary import format_summary
from ambient_rlhf.io import write_json
from ambient_rlhf.logging import get_logger, progress
from ambient_rlhf.stats import win_outcomes

log = get_logger("rm.eval")

__all__ = [  # the metrics, pair sets and summary live in their own modules and are re-exported here
    "evaluate_reward", "score_rows", "format_summary", "RATIO_EDGES", "HOUR_EDGES", "LENGTH_EDGES", "SIMILAR_LENGTH",
    "BEYOND_LENGTH_FOLDS", "BEYOND_LENGTH_L2", "BEYOND_LENGTH_MIN_THREADS", "beyond_length", "bootstrap_ci",
    "bucket_table", "correlations", "fit_logistic", "grouped_folds", "log_word_ratio", "reliability", "which_part",
    "win_outcomes", "BOW_MAX_TRAIN", "NO_TIME_FILES", "UNTIMED_MIN_RATIO", "UNTIMED_MIN_SCORE", "UNTIMED_PER_THREAD",
    "build_untimed_pairs",
]

RATIO_EDGES = (0.0, 2.0, 3.0, 5.0, 10.0, math.inf)
HOUR_EDGES = (-math.inf, 0.0, 1.0, 6.0, 24.0, math.inf)
# |log(words_chosen / words_rejected)|: 0.1 is about 10% longer, 0.25 about 28%, 0.5 about
# 65%, 1 about 2.7 times; below 0.25 "the longer answer wins" has little to go on
LENGTH_EDGES = (0.0, 0.1, 0.25, 0.5, 1.0, math.inf)
SIMILAR_LENGTH = 0.25


# ---- scoring ----------------------------------------------------------------------------
@torch.no_grad()
def score_rows(rm, table, rows: list[int], batch_size: int = 8, loglik: Any = None,
               store=None) -> dict[str, dict[int, float]]:
    """Normalised reward, and optionally the response log-likelihood (sum and mean per
    token) under ``loglik`` (``"self"``: the reward model's own LM, from the same forward
    pass; a causal LM; or None), for each row of ``table``.

    ``store``: a :class:`~ambient_rlhf.models.features.FeatureStore` of the backbone of a
    head-only model: rows found there skip the backbone, new rows are added to it.
    A combined reward model is scored through ``models.reward_inputs.RewardFunction``
    (each member renders the rows' texts itself)."""
    from ambient_rlhf.models.features import text_key
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.tokenize import pad_batch

    dev = next(rm.parameters()).device
    res: dict[str, dict[int, float]] = {"reward": {}, "loglik_sum": {}, "loglik_mean": {}}
    rows = sorted(set(rows), key=lambda r: len(table.ids[r]))
    if store is not None and isinstance(rm, ScalarHeadModel) and loglik in (None, "self"):
        done, feats = [], []
        for r in rows:
            k = text_key(table.ids[r])
            f, ll = store.features.get(store.key(table.ids[r], table.prompt_len[r])), \
                store.loglik.get(f"{k}:{table.prompt_len[r]}")
            if f is not None and (loglik is None or ll is not None):
                done.append(r)
                feats.append(f)
                if ll is not None:
                    res["loglik_sum"][r], res["loglik_mean"][r] = ll
        if done:
            raw = rm.raw_reward(rm.head(torch.stack(feats).to(dev, rm.head.weight.dtype)))
            res["reward"].update(zip(done, ((raw - rm.norm_mean) / rm.norm_std).float().tolist()))
        rows = [r for r in rows if r not in res["reward"]]
    else:
        store = None
    if not isinstance(rm, ScalarHeadModel):
        from ambient_rlhf.models.reward_inputs import RewardFunction

        texts = [table.texts[r] for r in rows]
        got = RewardFunction(rm, device=dev, batch_size=batch_size).texts(
            [t[0] for t in texts], [t[1] for t in texts], [t[2] for t in texts])
        res["reward"].update(zip(rows, got.tolist()))
        if loglik is None:
            return res
    # rewards alone: a thread's texts batched together, each prompt run once
    share = isinstance(rm, ScalarHeadModel) and loglik is None and store is None
    if share:
        rows.sort(key=lambda r: (table.prompt_len[r], table.ids[r][: table.prompt_len[r]], len(table.ids[r])))
    bar = progress(total=len(rows), desc="scoring", unit="text")
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        got = rm.shared_prompt_outputs([table.ids[r] for r in chunk], [table.prompt_len[r] for r in chunk]) \
            if share else None
        if got is not None:
            rew = (rm.raw_reward(got) - rm.norm_mean) / rm.norm_std
            res["reward"].update(zip(chunk, rew.float().tolist()))
            bar.update(len(chunk))
            continue
        ids, mask = pad_batch([table.ids[r] for r in chunk], 0, "right")  # (n, T); the pad value is never attended to
        ids, mask = ids.to(dev), mask.to(dev)
        h = None
        if isinstance(rm, ScalarHeadModel):
            h = rm.hidden_states(ids, mask)  # (n, T, d)
            last = rm.pool(h, mask, torch.tensor([table.prompt_len[r] for r in chunk], device=dev))
            raw = rm.raw_reward(rm.head(last.to(rm.head.weight.dtype)))
            rew = (raw - rm.norm_mean) / rm.norm_std
            if store is not None:
                for r, f in zip(chunk, last.float().cpu()):
                    store.features[store.key(table.ids[r], table.prompt_len[r])] = f.clone()
            res["reward"].update(zip(chunk, rew.float().tolist()))
        if loglik is not None:
            labels = ids.clone()
            for j, r in enumerate(chunk):
                labels[j, : table.prompt_len[r]] = -100
            labels[mask == 0] = -100
            target, keep = labels[:, 1:], labels[:, 1:] != -100  # (n, T-1)
            if loglik == "self":
                lm_head = rm.lm.get_output_embeddings()
                logits = lm_head(h[:, :-1][keep]).float()  # (N, V)
                nll_tok = torch.nn.functional.cross_entropy(logits, target[keep], reduction="none")
                nll = torch.zeros(len(chunk), device=dev).index_add(0, keep.nonzero()[:, 0], nll_tok)
            else:
                from ambient_rlhf.train.common import token_nll_per_example

                nll, _ = token_nll_per_example(loglik, ids, mask, labels)
            n = keep.sum(1).clamp(min=1)
            res["loglik_sum"].update(zip(chunk, (-nll).tolist()))
            res["loglik_mean"].update(zip(chunk, (-nll / n).tolist()))
            if store is not None:
                for r in chunk:
                    store.loglik[f"{text_key(table.ids[r])}:{table.prompt_len[r]}"] = (
                        res["loglik_sum"][r], res["loglik_mean"][r])
        bar.update(len(chunk))
    bar.close()
    if store is not None and rows:
        store.save()
    return res


# ---- the evaluation ----------------------------------------------------------------------
def evaluate_reward(model_dir: str | Path, data_dir: str | Path, split: str = "test", out: str | Path | None = None,
                    loglik_model: str = "auto", max_pairs: int = 0, batch_size: int = 8, n_boot: int = 1000,
                    seed: int = 0, plots: bool = True, model=None, feature_cache: str | None = None,
                    bow_train: Any = "auto") -> dict[str, Any]:
    """Evaluate a reward model directory on ``split`` of ``data_dir``; write ``eval.json``
    (and plots) into ``out`` (default ``model_dir/eval/<community>-<split>``).

    ``loglik_model``: ``auto`` (the model's own backbone when it was trained frozen,
    i.e. it still is the base LM; else none), ``none``, ``self``, or a model name/dir.
    ``model``: an already loaded reward model (skips loading ``model_dir``).
    ``feature_cache``: the ``feature_cache`` directory of a head-only model's training
    (its backbone features and log-likelihoods are reused and extended).
    ``bow_train``: the training pairs of the bag-of-words baseline: ``auto`` (the reward
    model's own training pairs, from the data directories and half its config names),
    ``none``, or a DataFrame with ``chosen`` and ``rejected``."""
    import pandas as pd

    from ambient_rlhf.data.tables import community_name, read_table
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.reward_model import load_reward_model
    from ambient_rlhf.models.load import load_causal_lm
    from ambient_rlhf.models.reward_inputs import TextTable, reward_inputs_of

    data_dir = Path(data_dir)
    rm = model if model is not None else load_reward_model(model_dir)
    meta = getattr(rm, "meta", {}) or {}
    community = community_name(data_dir)
    # the texts as the reward model reads them (a combined model's members each render
    # their own when scored; the table then follows the first member, for lengths and
    # the log-likelihood baseline)
    table = TextTable(reward_inputs_of(rm.members[0] if hasattr(rm, "members") else rm))
    pairs = _subset(read_table(data_dir, schema.PAIRS_FILE, schema.PAIR_COLUMNS, split), max_pairs, seed)
    if len(pairs) == 0:
        raise AmbientError(f"{data_dir / schema.PAIRS_FILE}: no pairs in split {split!r}")
    untimed, untimed_src = _load_untimed(data_dir, split, seed)
    if max_pairs > 0:  # the same threads as the pairs first: their texts are scored anyway
        same = untimed["thread_id"].isin(set(pairs["thread_id"]))
        untimed = pd.concat([untimed[same], _subset(untimed[~same], max_pairs, seed)]).head(max_pairs).reset_index(drop=True)

    def rows_of(df):
        c = [table.add(p, x, community) for p, x in zip(df["prompt"], df["chosen"])]
        r = [table.add(p, x, community) for p, x in zip(df["prompt"], df["rejected"])]
        return np.array(c, dtype=int), np.array(r, dtype=int)

    pc, pr = rows_of(pairs)
    uc, ur = rows_of(untimed) if len(untimed) else (np.zeros(0, int), np.zeros(0, int))

    ll: Any = None
    if loglik_model == "self" or (loglik_model == "auto" and isinstance(rm, ScalarHeadModel) and meta.get("train_layers") == 0):
        if not isinstance(rm, ScalarHeadModel):
            raise AmbientError("loglik_model=self needs a single reward model, not a composite")
        ll = "self"
    elif loglik_model not in ("auto", "none", "", None):
        ll = load_causal_lm(loglik_model).to(next(rm.parameters()).device).eval()
    store = None
    if feature_cache and isinstance(rm, ScalarHeadModel) and meta.get("train_layers") == 0:
        from ambient_rlhf.models.features import FeatureStore
        from ambient_rlhf.models.load import resolve_model

        store = FeatureStore(feature_cache, resolve_model(meta.get("base_model", model_dir)),
                             int(meta.get("backbone_layers", 0) or 0), rm.pooling)
    scores = score_rows(rm, table, list(pc) + list(pr) + list(uc) + list(ur), batch_size, ll, store)
    rew = scores["reward"]
    r_c = np.array([rew[i] for i in pc])
    r_r = np.array([rew[i] for i in pr])
    threads = pairs["thread_id"].to_numpy()
    correct = win_outcomes(r_c, r_r)
    len_c = np.array([table.resp_chars[i] for i in pc])
    len_r = np.array([table.resp_chars[i] for i in pr])
    longer = win_outcomes(len_c, len_r)
    ci = lambda v, cl=threads: bootstrap_ci(v, cl, n_boot, seed)  # noqa: E731

    res: dict[str, Any] = {
        "model": str(model_dir), "data": str(data_dir), "community": community, "split": split,
        "n_pairs": int(len(pairs)), "n_threads": int(len(set(threads))),
        "accuracy": ci(correct),
        "baselines": {"longer_wins": ci(longer)},
    }
    cols = {"accuracy": correct, "longer_wins": longer}
    if ll is not None:
        for k in ("loglik_sum", "loglik_mean"):
            w = win_outcomes([scores[k][i] for i in pc], [scores[k][i] for i in pr])
            res["baselines"][k] = ci(w)
            cols[k] = w
        res["baselines"]["loglik_model"] = "reward model backbone" if ll == "self" else str(loglik_model)
    short = len_c < len_r
    res["preferred_shorter"] = {"n": int(short.sum()), "accuracy": ci(correct[short], threads[short]),
                                "longer_wins": float(longer[short].mean()) if short.any() else float("nan")}
    ratio = pairs["score_ratio"].to_numpy(float)
    hours = pairs["seconds_difference"].to_numpy(float) / 3600.0
    res["by_score_ratio"] = bucket_table(RATIO_EDGES, ratio, cols, fmt=lambda x: f"{x:g}")
    res["by_seconds_difference"] = bucket_table(HOUR_EDGES, hours, cols, fmt=lambda x: f"{x:g}h")
    # how much of the accuracy is length: buckets of |log word ratio|, the similar-length
    # pairs, and whether the reward adds to the length difference in a logistic regression
    lr = log_word_ratio(pairs["chosen"], pairs["rejected"])
    res["by_length_ratio"] = bucket_table(LENGTH_EDGES, np.abs(lr), cols, fmt=lambda x: f"{x:g}")
    sim = np.abs(lr) < SIMILAR_LENGTH
    res["similar_length"] = {"max_abs_log_word_ratio": SIMILAR_LENGTH, "n": int(sim.sum()),
                             "n_threads": int(len(set(threads[sim]))),
                             **{k: ci(v[sim], threads[sim]) for k, v in cols.items()}}
    res["beyond_length"] = {"length": "log words", "reward": "normalised reward",
                            **beyond_length(lr, r_c - r_r, threads, seed=seed, n_boot=n_boot)}
    if len(untimed):
        u_threads = untimed["thread_id"].to_numpy()
        earlier = win_outcomes(-untimed["chosen_created_utc"].to_numpy(float), -untimed["rejected_created_utc"].to_numpy(float))
        u_len = win_outcomes([table.resp_chars[i] for i in uc], [table.resp_chars[i] for i in ur])
        res["untimed_pairs"] = {"source": untimed_src, "n": int(len(untimed)),
                                "earlier_wins": bootstrap_ci(earlier, u_threads, n_boot, seed),
                                "longer_wins": bootstrap_ci(u_len, u_threads, n_boot, seed),
                                "accuracy": bootstrap_ci(win_outcomes([rew[i] for i in uc], [rew[i] for i in ur]), u_threads, n_boot, seed)}
    else:
        res["untimed_pairs"] = {"source": untimed_src, "n": 0}
    # which part is learned: the reward model beside the length-only, delay-only and
    # bag-of-words baselines on the same pair sets, and each score's correlation with length
    rows_all = sorted(rew)
    scores_of = {"reward model": rew, "longer wins": dict(zip(rows_all, (float(table.resp_chars[i]) for i in rows_all)))}
    bow = _bag_of_words(meta, bow_train, seed)
    if bow is not None:
        scores_of["bag of words"] = dict(zip(rows_all, bow.score([table.texts[i][1] for i in rows_all]).tolist()))
        res["bag_of_words"] = {"train_pairs": bow.n_train, "length_coef": bow.length_coef,
                               "note": "TF-IDF (1-2 grams) + log length, fitted on the reward model's train pairs"}
        bw = win_outcomes([scores_of["bag of words"][i] for i in pc], [scores_of["bag of words"][i] for i in pr])
        res["baselines"]["bag_of_words"] = ci(bw)
        res["similar_length"]["bag_of_words"] = ci(bw[sim], threads[sim])
        res["preferred_shorter"]["bag_of_words"] = float(bw[short].mean()) if short.any() else float("nan")
    delay = win_outcomes(-pairs["chosen_created_utc"].to_numpy(float), -pairs["rejected_created_utc"].to_numpy(float))
    sets = {"all": (pc, pr, threads, delay, np.ones(len(pc), bool)),
            "chosen shorter": (pc, pr, threads, delay, short),
            "similar length": (pc, pr, threads, delay, sim)}
    if len(untimed):
        u_delay = win_outcomes(-untimed["chosen_created_utc"].to_numpy(float), -untimed["rejected_created_utc"].to_numpy(float))
        u_thr = untimed["thread_id"].to_numpy()
        sets["no time rule"] = (uc, ur, u_thr, u_delay, np.ones(len(uc), bool))
        first = untimed["chosen_created_utc"].to_numpy(float) < untimed["rejected_created_utc"].to_numpy(float)
        sets["dropped by time rule"] = (uc, ur, u_thr, u_delay, first)
    lengths = np.array([table.resp_chars[i] for i in rows_all], float)
    res["which_part"] = which_part(scores_of, sets, lengths, rows_all, n_boot, seed)
    scale = float(rm.norm_std) if isinstance(rm, ScalarHeadModel) else 1.0
    p = 1.0 / (1.0 + np.exp(-(r_c - r_r) * scale))
    res["calibration"] = {"scale": "raw" if isinstance(rm, ScalarHeadModel) else "normalised", **reliability(p)}
    all_rows = sorted(rew)
    r_all = np.array([rew[i] for i in all_rows])
    res["length_correlation"] = correlations(r_all, np.array([table.resp_chars[i] for i in all_rows]))
    res["reward_stats"] = {"mean": float(r_all.mean()), "std": float(r_all.std()), "n_texts": len(all_rows)}
    res["truncation"] = {"prompt": table.prompt_truncated, "response": table.response_truncated, "texts": len(table)}

    out = Path(out) if out is not None else Path(model_dir) / "eval" / f"{community}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        res["plots"] = _plots(res, r_all, np.array([table.resp_chars[i] for i in all_rows]), out)
    write_json(out / "eval.json", res)
    return res


def _plots(res: dict[str, Any], rewards: np.ndarray, lengths: np.ndarray, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(4.5, 4))
    bins = res["calibration"]["bins"]
    ax.plot([0.5, 1], [0.5, 1], "k--", lw=1, label="perfect")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="reward model")
    ax.set(xlabel="confidence max(p, 1-p)", ylabel="fraction ordered right",
           title=f"reliability (ECE {res['calibration']['ece']:.3f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)
    files.append("reliability.png")

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 3.5))
    for ax, key, title in ((axes[0], "by_score_ratio", "score ratio"), (axes[1], "by_seconds_difference", "chosen later by"),
                           (axes[2], "by_length_ratio", "|log word ratio|")):
        rows = res[key]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["accuracy"] for r in rows], 0.4, label="reward model")
        ax.bar(x + 0.2, [r["longer_wins"] for r in rows], 0.4, label="longer wins")
        ax.set_xticks(x, [f"{r['bucket']}\nn={r['n']}" for r in rows], fontsize=7)
        ax.axhline(0.5, color="k", lw=0.5)
        ax.set(ylim=(0, 1), title=f"accuracy by {title}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_buckets.png", dpi=100)
    plt.close(fig)
    files.append("accuracy_buckets.png")

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(lengths, rewards, s=4, alpha=0.4)
    ax.set(xscale="log", xlabel="response length (characters)", ylabel="reward (normalised)",
           title=f"reward vs length (Spearman {res['length_correlation']['spearman']:.2f})")
    fig.tight_layout()
    fig.savefig(out / "reward_vs_length.png", dpi=100)
    plt.close(fig)
    files.append("reward_vs_length.png")
    return files


