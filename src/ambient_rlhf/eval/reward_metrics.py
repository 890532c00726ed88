"""The numbers of ``ambient rm eval``, as pure functions of arrays (numpy only): thread-
clustered bootstrap intervals, the reliability table and expected calibration error,
correlations, bucket tables, log word ratios, and "beyond length" -- a thread-grouped
cross-validated logistic regression of the preference on the length difference with and
without the reward difference -- plus ``which_part``, every scorer on every pair set.

:mod:`ambient_rlhf.eval.reward_eval` calls them and re-exports every name."""

from __future__ import annotations

from typing import Any

import numpy as np

from ambient_rlhf import stats
from ambient_rlhf.stats import win_outcomes

BEYOND_LENGTH_FOLDS, BEYOND_LENGTH_L2 = 5, 1.0
# fewer threads than this: the thread bootstrap has too little to resample, no interval is claimed
BEYOND_LENGTH_MIN_THREADS = 20


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
