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
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient_rlhf import AmbientError, stats
from ambient_rlhf.data import schema
from ambient_rlhf.io import write_json
from ambient_rlhf.logging import get_logger, progress
from ambient_rlhf.stats import win_outcomes

log = get_logger("rm.eval")

RATIO_EDGES = (0.0, 2.0, 3.0, 5.0, 10.0, math.inf)
HOUR_EDGES = (-math.inf, 0.0, 1.0, 6.0, 24.0, math.inf)
NO_TIME_FILES = ("pairs_no_time_rule.parquet", "pairs_untimed.parquet")
UNTIMED_MIN_RATIO, UNTIMED_MIN_SCORE, UNTIMED_PER_THREAD = 2.0, 2, 10
# |log(words_chosen / words_rejected)|: 0.1 is about 10% longer, 0.25 about 28%, 0.5 about
# 65%, 1 about 2.7 times; below 0.25 "the longer answer wins" has little to go on
LENGTH_EDGES = (0.0, 0.1, 0.25, 0.5, 1.0, math.inf)
SIMILAR_LENGTH = 0.25
BEYOND_LENGTH_FOLDS, BEYOND_LENGTH_L2 = 5, 1.0
# fewer threads than this: the thread bootstrap has too little to resample, no interval is claimed
BEYOND_LENGTH_MIN_THREADS = 20


# ---- metrics (pure numpy) -----------------------------------------------------------------
def bootstrap_ci(values: np.ndarray, clusters: np.ndarray, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, float]:
    """Mean of ``values`` with a percentile interval from resampling whole clusters
    (:func:`ambient_rlhf.stats.bootstrap_ci`), in eval.json's form: ``{"value", "ci_low",
    "ci_high", "n"}`` with ``n`` the number of values (pairs), not of clusters."""
    values = np.asarray(values, float)
    r = stats.bootstrap_ci(values, n_resamples=n_boot, confidence=level, seed=seed, clusters=clusters)
    return {"value": r["value"], "ci_low": r["low"], "ci_high": r["high"], "n": int(len(values))}


def reliability(p: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    """Calibration of pairwise probabilities ``p`` = P(first is preferred), the first being
    the preferred one.  Symmetric form: confidence ``max(p, 1-p)`` in bins over [0.5, 1],
    against the fraction of those pairs the model orders right (p > 0.5; p = 0.5 counts
    one half).  ECE = sum_b n_b / N * |accuracy_b - confidence_b|."""
    p = np.asarray(p, float)
    conf = np.maximum(p, 1 - p)
    right = np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))
    edges = np.linspace(0.5, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for i in range(n_bins):
        m = b == i
        if not m.any():
            continue
        c, a = float(conf[m].mean()), float(right[m].mean())
        ece += m.sum() / len(p) * abs(a - c)
        bins.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(m.sum()), "confidence": c, "accuracy": a})
    return {"ece": float(ece) if len(p) else float("nan"), "bins": bins}


def correlations(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "n": int(len(x))}
    return {"pearson": float(np.corrcoef(x, y)[0, 1]), "spearman": stats.spearman(x, y), "n": int(len(x))}


def bucket_table(edges, key: np.ndarray, columns: dict[str, np.ndarray], fmt=str) -> list[dict[str, Any]]:
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (key >= lo) & (key < hi)
        if not m.any():
            continue
        rows.append({"bucket": f"[{fmt(lo)}, {fmt(hi)})", "n": int(m.sum()),
                     **{k: float(v[m].mean()) for k, v in columns.items()}})
    return rows


def log_word_ratio(chosen, rejected) -> np.ndarray:
    """(N,) ``log(words_chosen / words_rejected)``, words split on whitespace, an empty
    text counted as one word (so the ratio stays finite)."""
    wc = np.array([max(len(str(t).split()), 1) for t in chosen], float)
    wr = np.array([max(len(str(t).split()), 1) for t in rejected], float)
    return np.log(wc / wr)


# ---- beyond length: does the reward add information over the length difference? ---------
def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = BEYOND_LENGTH_L2, max_iter: int = 100,
                 tol: float = 1e-10) -> np.ndarray:
    """Logistic regression without intercept by Newton's method (IRLS) with a backtracking
    line search: the ``w`` minimising ``sum_i logloss(sigmoid(X_i w), y_i) + l2/2 |w|^2``.

    Args:
        X: (N, d) features; y: (N,) labels in {0, 1}.
        l2: ridge strength; it keeps ``w`` finite when the classes are separable and is
            negligible against hundreds of pairs otherwise (features of scale 1).
    Returns:
        (d,) coefficients.
    """
    X, y = np.asarray(X, float), np.asarray(y, float)
    d = X.shape[1]

    def objective(w):
        z = X @ w
        return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    w = np.zeros(d)
    f = objective(w)
    for _ in range(max_iter):
        p = _sigmoid(X @ w)  # (N,)
        g = X.T @ (p - y) + l2 * w  # (d,)
        H = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.eye(d)  # (d, d)
        step = np.linalg.solve(H, g)
        t = 1.0
        while True:  # the objective is convex: halve the step until it decreases
            f_new = objective(w - t * step)
            if f_new <= f or t < 1e-8:
                break
            t /= 2
        w, f = w - t * step, f_new
        if np.max(np.abs(t * step)) < tol:
            break
    return w


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def grouped_folds(groups, k: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index in ``0..k-1`` per item such that all items of one group share a
    fold: groups in a seeded random order, each to the fold with the fewest items so far
    (balanced folds; with at least k groups none is empty)."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    sizes = np.bincount(inv, minlength=len(uniq))
    fold_of_group = np.zeros(len(uniq), int)
    load = np.zeros(k, int)
    for gi in np.random.default_rng(seed).permutation(len(uniq)):
        f = int(np.argmin(load))
        fold_of_group[gi] = f
        load[f] += sizes[gi]
    return fold_of_group[inv]


def beyond_length(d_length: np.ndarray, d_reward: np.ndarray, threads: np.ndarray, k: int = BEYOND_LENGTH_FOLDS,
                  seed: int = 0, n_boot: int = 1000, l2: float = BEYOND_LENGTH_L2) -> dict[str, Any]:
    """Does the reward difference predict the preference beyond the length difference?

    Two logistic regressions without intercept, of "the first answer is the preferred
    one" on [d_length] and on [d_length, d_reward] (differences chosen minus rejected;
    each pair's orientation drawn at random with ``seed`` so the labels are balanced --
    without an intercept the fit does not depend on the orientation, since
    logloss(x, 1) = logloss(-x, 0)).  Each is judged by K-fold cross-validation in
    which the folds are whole threads (``grouped_folds``), so no thread is in the
    training and the test folds.  Features are scaled by their root mean square on the
    training folds (so ``l2`` acts on comparable coefficients).

    The gains (length+reward minus length-only accuracy; length-only minus
    length+reward log-loss) are paired per pair on the same out-of-fold predictions,
    with a 95% interval from resampling threads; it holds the fitted models fixed (two
    or three coefficients fitted on hundreds of pairs vary little next to which threads
    were sampled).  A gain whose interval is above 0 says the reward model learned
    something about the preference that the length does not carry -- if it points the
    right way.  A reward anti-correlated with the preference would "add information"
    through a negative coefficient, so in a fold where the fitted reward coefficient is
    not positive the length+reward prediction is the length-only one, and ``verdict`` is
    ``adds`` only when the log-loss gain's interval is above 0 *and* the reward's
    coefficient on all pairs is positive, with at least
    :data:`BEYOND_LENGTH_MIN_THREADS` threads (fewer: ``too_few_threads``, and no
    interval is claimed); ``reversed`` when the reward predicts the preference only with
    its sign flipped; else ``none``.

    Returns:
        ``{"folds", "n", "n_threads", "length_only": {"accuracy", "log_loss"},
        "length_reward": {...}, "gain": {"accuracy", "log_loss"}, "coef": {"length",
        "reward"}, "verdict"}``, intervals as :func:`bootstrap_ci`; ``coef`` is the
        length+reward fit on all pairs in log-odds per unit of each difference.
    """
    d_length, d_reward = np.asarray(d_length, float), np.asarray(d_reward, float)
    threads = np.asarray(threads)
    n, G = len(d_length), len(np.unique(threads)) if len(threads) else 0
    if G < 2:
        return {"folds": 0, "n": int(n), "n_threads": int(G), "note": "needs pairs from at least 2 threads"}
    rng = np.random.default_rng(seed)
    sign = rng.choice([-1.0, 1.0], size=n)  # (N,) +1: the chosen answer is first
    X = sign[:, None] * np.column_stack([d_length, d_reward])  # (N, 2) first minus second
    y = (sign > 0).astype(float)
    k = min(k, G)
    folds = grouped_folds(threads, k, seed)
    z = {"length_only": np.zeros(n), "length_reward": np.zeros(n)}  # out-of-fold logits
    for f in range(k):
        tr, te = folds != f, folds == f
        for key, cols in (("length_only", [0]), ("length_reward", [0, 1])):
            scale = np.sqrt(np.mean(X[tr][:, cols] ** 2, axis=0))
            scale = np.where(scale > 0, scale, 1.0)
            w = fit_logistic(X[tr][:, cols] / scale, y[tr], l2)
            if key == "length_reward" and w[1] <= 0:  # a reversed reward may not count
                w = np.array([*fit_logistic(X[tr][:, [0]] / scale[:1], y[tr], l2), 0.0])
            z[key][te] = (X[te][:, cols] / scale) @ w
    per = {}
    for key, zz in z.items():
        right = np.where(zz == 0, 0.5, ((zz > 0) == (y > 0)).astype(float))
        loss = np.logaddexp(0.0, zz) - y * zz  # -log p(y)
        per[key] = (right, loss)
    few = G < BEYOND_LENGTH_MIN_THREADS
    if few:  # a point estimate only
        ci = lambda v: {"value": float(np.mean(v)), "ci_low": None, "ci_high": None, "n": int(len(v))}  # noqa: E731
    else:
        ci = lambda v: bootstrap_ci(v, threads, n_boot, seed)  # noqa: E731
    scale = np.sqrt(np.mean(X ** 2, axis=0))
    scale = np.where(scale > 0, scale, 1.0)
    w_all = fit_logistic(X / scale, y, l2) / scale
    gain = {"accuracy": ci(per["length_reward"][0] - per["length_only"][0]),
            "log_loss": ci(per["length_only"][1] - per["length_reward"][1])}
    if few:
        verdict = "too_few_threads"
    elif gain["log_loss"]["ci_low"] > 0 and w_all[1] > 0:
        verdict = "adds"
    elif w_all[1] < 0 and _reversed_helps(X, y, folds, k, l2):
        verdict = "reversed"
    else:
        verdict = "none"
    return {
        "folds": int(k), "n": int(n), "n_threads": int(G),
        **{key: {"accuracy": ci(r), "log_loss": ci(lo)} for key, (r, lo) in per.items()},
        "gain": gain, "coef": {"length": float(w_all[0]), "reward": float(w_all[1])}, "verdict": verdict,
    }


def _reversed_helps(X: np.ndarray, y: np.ndarray, folds: np.ndarray, k: int, l2: float) -> bool:
    """Whether the unconstrained length+reward fit (any sign) beats length alone in
    cross-validated log-loss: then the reward carries the preference upside down."""
    loss = np.zeros(2)
    for f in range(k):
        tr, te = folds != f, folds == f
        for j, cols in enumerate(([0], [0, 1])):
            scale = np.sqrt(np.mean(X[tr][:, cols] ** 2, axis=0))
            scale = np.where(scale > 0, scale, 1.0)
            z = (X[te][:, cols] / scale) @ fit_logistic(X[tr][:, cols] / scale, y[tr], l2)
            loss[j] += float(np.sum(np.logaddexp(0.0, z) - y[te] * z))
    return bool(loss[1] < loss[0])


def which_part(scores_of: dict[str, dict[int, float]], sets: dict[str, tuple], lengths: np.ndarray,
               rows: list[int], n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of every scorer on every pair set, plus ``earlier wins`` (the delay-only
    baseline), and each scorer's Spearman correlation with response length.

    Args:
        scores_of: scorer name -> {text row: score} (higher = preferred).
        sets: set name -> ``(chosen_rows, rejected_rows, threads, earlier_wins, mask)``:
            the pairs, their threads, the (N,) wins of the earlier answer and a (N,) bool
            mask selecting the set's pairs.
        lengths, rows: the length of each text row in ``rows`` (for the correlations).
    Returns:
        ``{"sets": {set: {"n": pairs, scorer: interval, "earlier wins": interval}},
        "spearman_length": {scorer: value}}``; intervals resample threads.
    """
    out: dict[str, Any] = {"sets": {}, "spearman_length": {}}
    for name, (c, r, thr, earlier, mask) in sets.items():
        mask = np.asarray(mask, bool)
        cell: dict[str, Any] = {"n": int(mask.sum())}
        for scorer, sc in scores_of.items():
            w = win_outcomes([sc[i] for i in np.asarray(c)[mask]], [sc[i] for i in np.asarray(r)[mask]])
            cell[scorer] = bootstrap_ci(w, np.asarray(thr)[mask], n_boot, seed)
        cell["earlier wins"] = bootstrap_ci(np.asarray(earlier)[mask], np.asarray(thr)[mask], n_boot, seed)
        out["sets"][name] = cell
    for scorer, sc in scores_of.items():
        out["spearman_length"][scorer] = correlations(np.array([sc[i] for i in rows]), lengths)["spearman"]
    return out


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
    """Pairs ignoring the time rule (module doc), as a DataFrame in the pairs layout."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    out = []
    for tid, g in responses.groupby("thread_id", sort=True):
        rs = g.to_dict("records")
        cand = [(a, b) for a in rs for b in rs
                if b["score"] >= UNTIMED_MIN_SCORE and a["score"] >= UNTIMED_MIN_RATIO * b["score"]]
        if len(cand) > per_thread:
            cand = [cand[i] for i in sorted(rng.choice(len(cand), per_thread, replace=False))]
        for a, b in cand:
            out.append({"thread_id": tid, "prompt": a["prompt"], "chosen": a["response"], "rejected": b["response"],
                        "chosen_created_utc": a["created_utc"], "rejected_created_utc": b["created_utc"]})
    return pd.DataFrame(out, columns=["thread_id", "prompt", "chosen", "rejected", "chosen_created_utc",
                                      "rejected_created_utc"])


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
    from ambient_rlhf.rl.masking import last_token_index

    dev = next(rm.parameters()).device
    res: dict[str, dict[int, float]] = {"reward": {}, "loglik_sum": {}, "loglik_mean": {}}
    rows = sorted(set(rows), key=lambda r: len(table.ids[r]))
    if store is not None and isinstance(rm, ScalarHeadModel) and loglik in (None, "self"):
        done, feats = [], []
        for r in rows:
            k = text_key(table.ids[r])
            f, ll = store.features.get(k), store.loglik.get(f"{k}:{table.prompt_len[r]}")
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
    bar = progress(total=len(rows), desc="scoring", unit="text")
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        ids, mask = pad_batch([table.ids[r] for r in chunk], 0, "right")  # (n, T); the pad value is never attended to
        ids, mask = ids.to(dev), mask.to(dev)
        h = None
        if isinstance(rm, ScalarHeadModel):
            h = rm.hidden_states(ids, mask)  # (n, T, d)
            last = h[torch.arange(len(chunk), device=dev), last_token_index(mask)]
            raw = rm.raw_reward(rm.head(last.to(rm.head.weight.dtype)))
            rew = (raw - rm.norm_mean) / rm.norm_std
            if store is not None:
                for r, f in zip(chunk, last.float().cpu()):
                    store.features[text_key(table.ids[r])] = f.clone()
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
    from ambient_rlhf.models.heads import ScalarHeadModel, load_reward_model
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

        store = FeatureStore(feature_cache, resolve_model(meta.get("base_model", model_dir)))
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


def _fmt(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def format_summary(res: dict[str, Any]) -> str:
    """A short text table of an evaluation."""
    lines = [f"{res['community']} / {res['split']}: {res['n_pairs']} pairs in {res['n_threads']} threads",
             f"  reward model        {_fmt(res['accuracy'])}"]
    for k, v in res["baselines"].items():
        if isinstance(v, dict):
            lines.append(f"  {k:<19} {_fmt(v)}")
    ps = res["preferred_shorter"]
    if ps["n"]:
        lines.append(f"  preferred shorter   {_fmt(ps['accuracy'])} (n={ps['n']})")
    u = res.get("untimed_pairs", {})
    if u.get("n"):
        lines.append(f"  untimed pairs (n={u['n']}): reward model {_fmt(u['accuracy'])}, earlier wins "
                     f"{_fmt(u['earlier_wins'])}, longer wins {_fmt(u['longer_wins'])}")
    sl = res.get("similar_length") or {}
    if sl.get("n"):
        lines.append(f"  similar length (|log word ratio| < {sl['max_abs_log_word_ratio']:g}, n={sl['n']}): reward model "
                     f"{_fmt(sl['accuracy'])}, longer wins {_fmt(sl['longer_wins'])}")
    bl = res.get("beyond_length") or {}
    if bl.get("folds"):
        a0, a1, g = bl["length_only"]["accuracy"], bl["length_reward"]["accuracy"], bl["gain"]["accuracy"]
        l0, l1, gl = bl["length_only"]["log_loss"], bl["length_reward"]["log_loss"], bl["gain"]["log_loss"]
        iv = lambda c: f" [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if c.get("ci_low") is not None else ""  # noqa: E731
        lines.append(f"  beyond length: length-only {a0['value']:.3f} -> length+reward {a1['value']:.3f} "
                     f"(gain {g['value']:+.3f}{iv(g)}); log-loss {l0['value']:.3f} -> "
                     f"{l1['value']:.3f} (gain {gl['value']:+.3f}{iv(gl)}); "
                     f"{bl['folds']}-fold cross-validated by thread; verdict: {bl.get('verdict', '?')}")
    lines.append(f"  ECE {res['calibration']['ece']:.3f}; reward~length Spearman {res['length_correlation']['spearman']:.2f}")
    wp = res.get("which_part") or {}
    if wp.get("sets"):
        scorers = [k for k in next(iter(wp["sets"].values())) if k != "n"]
        lines.append("  which part is learned (accuracy; Spearman with length last):")
        lines.append("    " + f"{'pairs':<22}{'n':>6}" + "".join(f"{k:>16}" for k in scorers))
        for name, cell in wp["sets"].items():
            lines.append("    " + f"{name:<22}{cell['n']:>6}" + "".join(f"{cell[k]['value']:>16.3f}" for k in scorers))
        sp = wp.get("spearman_length") or {}
        lines.append("    " + f"{'Spearman(score, length)':<28}" + "".join(
            f"{sp[k]:>16.2f}" if k in sp else f"{'':>16}" for k in scorers))
    return "\n".join(lines)
