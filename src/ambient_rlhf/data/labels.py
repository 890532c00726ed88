"""Per-response labels: pure functions of one thread's scores and timestamps.

Everything here is computed within a thread (except the tier thresholds, which are
quantiles over the train split), so the build can label a thread the moment it is
assembled and forget it.

* ``rank``: 0 = best; ties share the best rank of their group ("1224" competition
  ranking), i.e. ``rank = number of responses with a strictly higher score``.
* ``rank_z`` / ``delay_z``: population z-scores (ddof=0) within the thread of the rank
  and of the delay after the prompt; 0 when the thread has no spread (all tied).
* ``adjusted = -rank_weight * rank_z + delay_weight * delay_z``: higher = better.  An
  answer that ranks well although it came late beat the early-answer advantage, so
  lateness counts in its favour (the seed's "adjusted ranking").
* ``tier``: good / ok / bad by quantiles of ``adjusted`` over the train split.
* ``reply_sentiment``: mean VADER compound of the direct replies (None without replies).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ambient_rlhf.data import vader
from ambient_rlhf.data.schema import TIERS

GOOD, OK, BAD = TIERS


def rank_by_score(scores: Sequence[float]) -> np.ndarray:
    """Rank within a thread, 0 = highest score, ties share the best rank of their group.

    ``[5, 9, 5, 1] -> [1, 0, 1, 3]``. Shape: (k,) -> (k,) int64.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0, np.int64)
    # rank_i = #{j : s_j > s_i} = k - #{j : s_j <= s_i}
    return (s.size - np.searchsorted(np.sort(s), s, side="right")).astype(np.int64)


def zscore(x: Sequence[float]) -> np.ndarray:
    """Population z-score (ddof=0) of ``x``; all zeros when ``x`` has no spread."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a
    sd = a.std()
    if not np.isfinite(sd) or sd <= 1e-12 * max(1.0, float(np.abs(a).max())):
        return np.zeros_like(a)
    return (a - a.mean()) / sd


def adjusted_score(rank_z: np.ndarray, delay_z: np.ndarray, rank_weight: float, delay_weight: float) -> np.ndarray:
    """``-rank_weight * rank_z + delay_weight * delay_z`` (higher = better)."""
    return -rank_weight * np.asarray(rank_z, dtype=np.float64) + delay_weight * np.asarray(delay_z, dtype=np.float64)


def thread_labels(
    scores: Sequence[float],
    created_utc: Sequence[float],
    prompt_created_utc: float | None,
    rank_weight: float,
    delay_weight: float,
) -> dict[str, np.ndarray]:
    """All within-thread labels at once: ``rank, rank_z, delay, delay_z, adjusted``.

    ``delay`` is seconds after the prompt; when the prompt time is unknown (SHP files)
    it is measured from the earliest response -- ``delay_z`` is shift-invariant, so it
    is the same either way.
    """
    t = np.asarray(created_utc, dtype=np.float64)
    origin = float(prompt_created_utc) if prompt_created_utc is not None else (float(t.min()) if t.size else 0.0)
    delay = t - origin
    rank = rank_by_score(scores)
    rank_z = zscore(rank)
    delay_z = zscore(delay)
    return {
        "rank": rank,
        "rank_z": rank_z,
        "delay": delay,
        "delay_z": delay_z,
        "adjusted": adjusted_score(rank_z, delay_z, rank_weight, delay_weight),
    }


def tier_thresholds(values: Sequence[float], quantiles: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` = the two quantiles of ``values`` (linear interpolation)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no values to take tier quantiles from")
    lo, hi = np.quantile(a, [quantiles[0], quantiles[1]])
    return float(lo), float(hi)


def assign_tier(adjusted: float, lo: float, hi: float) -> str:
    """``bad`` when ``adjusted < lo``, ``good`` when ``adjusted > hi``, else ``ok``.

    Values exactly on a threshold go to ``ok`` (the middle tier absorbs ties)."""
    if adjusted < lo:
        return BAD
    if adjusted > hi:
        return GOOD
    return OK


def assign_tiers(adjusted: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Vectorised :func:`assign_tier` -> array of ``"good"|"ok"|"bad"`` strings."""
    a = np.asarray(adjusted, dtype=np.float64)
    out = np.full(a.shape, OK, dtype=object)
    out[a < lo] = BAD
    out[a > hi] = GOOD
    return out


def sentiment(text: str) -> float:
    """VADER compound score of ``text`` in [-1, 1] (:mod:`ambient_rlhf.data.vader`: the same
    number as ``vaderSentiment``'s ``polarity_scores(text)["compound"]``, several times faster)."""
    return vader.compound(text)


def mean_or_none(total: float, n: int) -> float | None:
    """``total / n`` or None when ``n == 0`` (reply_sentiment without replies)."""
    return None if n == 0 else total / n
