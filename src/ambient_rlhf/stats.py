"""Small statistics for evaluations: bootstrap intervals, win rates, distinct-n, ranks.

Pure functions over numbers and strings (numpy only), so the reward-model evaluation,
the policy evaluation, the report and the simulated community's recovery statistics
(``data/simulate.py``) share one definition of each.  It sits at the package root, next
to ``config`` and ``io``, because ``data/`` may import nothing from ``eval/``.

* :func:`bootstrap_ci`: percentile bootstrap interval of a statistic (Efron &
  Tibshirani 1993, ch. 13).  Resample the *independent units*: with ``clusters`` (the
  prompt of each sample, the thread of each pair) whole clusters are resampled, so that
  correlated samples of one prompt are not counted as independent.
* :func:`win_outcomes` / :func:`win_rate`: 1 for a win, 0.5 for a tie, 0 for a loss.
* :func:`distinct_n`: corpus-level distinct-n (Li et al. 2016), unique n-grams over all
  n-grams of all texts.
* :func:`spearman`: rank correlation with average ranks for ties; :func:`spearman_interval`
  adds a bootstrap interval; :func:`pair_accuracy`: the share of within-group pairs a
  score orders like a target (does a reward model rank a policy's answers right?).
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    clusters: Sequence | np.ndarray | None = None,
) -> dict[str, float]:
    """Point estimate and percentile bootstrap interval of ``statistic(values)``.

    Args:
        values: (N,) one number per observation (NaNs are dropped).
        statistic: maps a (R, N) array to (R,) statistics along axis 1; default the mean.
            Not with ``clusters``.
        n_resamples: bootstrap resamples R; 1000 gives interval ends stable to about
            +-0.01 for a proportion near 0.5 with N >= 50.
        confidence: coverage of the interval.
        seed: seed of the resampling generator (same seed, same interval).
        clusters: (N,) cluster label per value (e.g. the prompt or thread).  Whole
            clusters are resampled (G draws with replacement from the G clusters) and the
            statistic is the mean over all values drawn, so correlated values of one
            cluster are never treated as independent.  ``n`` is then the cluster count.

    Returns:
        ``{"value", "low", "high", "n", "confidence"}``; for N = 0 the numbers are NaN,
        for one unit the interval collapses to the value.
    """
    x = np.asarray(values, dtype=float).ravel()
    keep = ~np.isnan(x)
    x = x[keep]
    nan = float("nan")
    if x.size == 0:
        return {"value": nan, "low": nan, "high": nan, "n": 0, "confidence": confidence}
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2
    if clusters is not None:
        if statistic is not None:
            raise ValueError("bootstrap_ci: a custom statistic cannot be combined with clusters")
        _, inv = np.unique(np.asarray(clusters)[keep], return_inverse=True)
        G = int(inv.max()) + 1
        sums = np.bincount(inv, weights=x, minlength=G)  # (G,)
        counts = np.bincount(inv, minlength=G).astype(float)  # (G,)
        w = rng.multinomial(G, np.full(G, 1.0 / G), size=n_resamples)  # (R, G) draws of each cluster
        boot = (w @ sums) / np.maximum(w @ counts, 1e-12)  # (R,) mean of the values drawn
        low, high = np.quantile(boot, [alpha, 1 - alpha])
        return {"value": float(x.mean()), "low": float(low), "high": float(high), "n": G, "confidence": confidence}
    stat = statistic or (lambda a: a.mean(axis=-1))
    n = int(x.size)
    point = float(stat(x[None, :])[0])
    # (R, N) resampled indices; chunked so that R x N stays small in memory
    stats = []
    chunk = max(1, min(n_resamples, 2_000_000 // n))
    done = 0
    while done < n_resamples:
        r = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(r, n))
        stats.append(np.asarray(stat(x[idx]), dtype=float))
        done += r
    s = np.concatenate(stats)
    low, high = np.quantile(s, [alpha, 1 - alpha])
    return {"value": point, "low": float(low), "high": float(high), "n": n, "confidence": confidence}


def win_outcomes(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    """Element-wise outcome of ``a`` against ``b``: 1 win, 0.5 tie, 0 loss.  (N,) -> (N,)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"win_outcomes: shapes differ {a.shape} vs {b.shape}")
    return np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))


def win_rate(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Fraction of pairs where ``a`` beats ``b``, ties counted half (NaN for no pairs)."""
    o = win_outcomes(a, b)
    return float(o.mean()) if o.size else float("nan")


def words(text: str) -> list[str]:
    """Lower-cased whitespace tokens: the unit of distinct-n."""
    return text.lower().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams / total n-grams over all ``texts`` (0.0 when there are none).

    Example: ["a b a", "a b"] has bigrams (a,b), (b,a), (a,b): 2 unique of 3 -> 0.667."""
    total = 0
    seen: set = set()
    for t in texts:
        g = ngrams(words(t), n)
        total += len(g)
        seen.update(g)
    return len(seen) / total if total else 0.0


def rankdata(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Ranks 1..N with ties given their average rank.  (N,) -> (N,)."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=float)
    sx = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1  # average of ranks i+1 .. j+1
        i = j + 1
    return ranks


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN if undefined."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def describe(values: Sequence[float] | np.ndarray, n_resamples: int = 1000, seed: int = 0,
             groups: Sequence | None = None) -> dict[str, float]:
    """Mean with a bootstrap interval (resampling whole ``groups`` when given) and the std."""
    v = np.asarray(values, dtype=float)
    out = bootstrap_ci(v, n_resamples=n_resamples, seed=seed, clusters=groups)
    out["std"] = float(np.nanstd(v)) if v.size else float("nan")
    return out


def spearman_interval(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, n_resamples: int = 1000,
                      seed: int = 0) -> dict:
    """Spearman of ``x`` with ``y`` and a percentile bootstrap interval (pairs resampled)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    value = spearman(x, y) if n >= 2 else float("nan")
    rng = np.random.default_rng(seed)
    boot = [spearman(x[i], y[i]) for i in (rng.integers(0, n, n) for _ in range(n_resamples))] if n >= 3 else []
    boot = np.asarray([b for b in boot if np.isfinite(b)])
    lo, hi = (np.quantile(boot, [0.025, 0.975]) if len(boot) else (float("nan"), float("nan")))
    return {"value": float(value), "low": float(lo), "high": float(hi), "n": int(n)}


def pair_accuracy(score: Sequence[float] | np.ndarray, utility: Sequence[float] | np.ndarray, group: Sequence,
                  mask: np.ndarray | None = None) -> dict:
    """Within-``group`` pairs with different utility, at least one of them in ``mask``: the
    share the score orders like the utility (a score tie counts 1/2)."""
    score, utility = np.asarray(score, dtype=float), np.asarray(utility, dtype=float)
    mask = np.ones(len(score), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    group = np.asarray(group)
    hits, n = 0.0, 0
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        for a in range(len(idx)):
            for b in range(a + 1, len(idx)):
                i, j = idx[a], idx[b]
                if not (mask[i] or mask[j]) or utility[i] == utility[j]:
                    continue
                n += 1
                d = (score[i] - score[j]) * np.sign(utility[i] - utility[j])
                hits += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    return {"value": hits / n if n else float("nan"), "n": n}
