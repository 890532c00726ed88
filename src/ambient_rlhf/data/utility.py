"""The simulated community's hidden utility, and how well a signal recovers it.

:func:`true_utility` is a deterministic function of the prompt and response text, fixed
here so that every stage and the report compute the same number::

    utility = 1.0 * relevance + 0.5 * sentiment + 0.5 * length - 1.0 * repetition

* ``relevance`` = min(#shared content words, 4) / 4: content words of the response
  that also occur in the prompt (lower-cased alphabetic words of >= 4 letters, not
  stopwords, a trailing plural ``s`` removed); 4 shared words count as fully on topic.
* ``sentiment`` = VADER compound score of the response, in [-1, 1] (readers like a
  friendly tone).
* ``length`` = exp(-ln(n / 40)^2 / (2 * 0.5^2)) for n whitespace-separated words
  (1 at 40 words, 0.38 at 20 or 80 words, 0 for an empty response).
* ``repetition`` = 1 - distinct / total content words of the response (0 when it
  has none): readers punish loops, the usual symptom of reward over-optimisation.

The recovery statistics (:func:`within_thread_spearman`, :func:`within_thread_pair_accuracy`,
:func:`compare_recovery`, :func:`recovery_stats`) measure, within threads, how well a
column (the raw score, the adjusted rank, a reward model) orders answers as the utility does.
Pure: numpy, pandas and VADER; :mod:`ambient_rlhf.data.simulate` re-exports every name.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
import pandas as pd

from ambient_rlhf import stats
from ambient_rlhf.data import vader

UTILITY_WEIGHTS = {"relevance": 1.0, "sentiment": 0.5, "length": 0.5, "repetition": -1.0}
"""utility = sum(weight * component); see the module docstring for each component."""
RELEVANCE_CAP = 4
"""Shared content words at which an answer counts as fully on topic."""
PREFERRED_WORDS = 40
"""Answer length (words) the readers like best."""
LENGTH_SIGMA = 0.5
"""Width of the length preference in log-words."""

STOPWORDS = frozenset("""
about above after again against all also always another any anyone anything are around
back because been before being below between both cannot could does doing done down
during each either else even ever every everyone everything first from further get gets
getting give going good have having here hers herself himself into just know like make
many maybe might more most much must myself need never next only other others ought ours
over own really same should some something still such than that their theirs them
themselves then there these they thing things think this those though through thus too
under until upon very want well were what whatever when where whether which while will
with within without would your yours yourself yourselves you'd you'll you're you've i'm
i've it's don't that's there's can't won't isn't doesn't didn't
""".split())
_WORD = re.compile(r"[a-z][a-z']*")


def content_words(text: str) -> list[str]:
    """Content words of ``text`` in order: lower-cased alphabetic words of >= 4 letters
    that are not stopwords, with one trailing plural ``s`` removed (``starters`` ->
    ``starter``; ``glass`` stays)."""
    out = []
    for w in _WORD.findall(text.lower()):
        w = w.strip("'")
        if len(w) < 4 or w in STOPWORDS:
            continue
        if len(w) > 4 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def sentiment(text: str) -> float:
    """VADER compound sentiment in [-1, 1] (Hutto & Gilbert 2014), via :mod:`ambient_rlhf.data.vader`."""
    return vader.compound(text)


def utility_components(prompt: str, response: str) -> dict[str, float]:
    """The four components of :func:`true_utility` (each documented in the module docstring)."""
    n_words = len(response.split())
    resp = content_words(response)
    shared = set(content_words(prompt)) & set(resp)
    length = math.exp(-math.log(n_words / PREFERRED_WORDS) ** 2 / (2 * LENGTH_SIGMA**2)) if n_words else 0.0
    return {
        "relevance": min(len(shared), RELEVANCE_CAP) / RELEVANCE_CAP,
        "sentiment": sentiment(response) if response.strip() else 0.0,
        "length": length,
        "repetition": 1.0 - len(set(resp)) / len(resp) if resp else 0.0,
    }


def true_utility(prompt: str, response: str) -> float:
    """The simulated readers' hidden utility of ``response`` to ``prompt`` (higher is better).

    Deterministic; about -1.5 (an off-topic, hostile, looping answer) to 2.0."""
    c = utility_components(prompt, response)
    return float(sum(UTILITY_WEIGHTS[k] * c[k] for k in UTILITY_WEIGHTS))


# ---- how well a signal recovers the utility --------------------------------------------
def thread_spearmans(df: pd.DataFrame, col: str, target: str = "utility", group: str = "thread_id") -> pd.Series:
    """Spearman correlation between ``col`` and ``target`` in each thread (index: the
    thread); NaN for threads where either is constant or that have one answer."""
    vals = {}
    for t, g in df.groupby(group):
        ok = len(g) >= 2 and g[col].nunique() >= 2 and g[target].nunique() >= 2
        vals[t] = stats.spearman(g[col].to_numpy(float), g[target].to_numpy(float)) if ok else float("nan")
    return pd.Series(vals, dtype=float)


def within_thread_spearman(df: pd.DataFrame, col: str, target: str = "utility", group: str = "thread_id") -> float:
    """Mean over threads of the Spearman correlation between ``col`` and ``target``
    (threads where either is constant are skipped); NaN when no thread qualifies."""
    vals = thread_spearmans(df, col, target, group).dropna()
    return float(vals.mean()) if len(vals) else float("nan")


def compare_recovery(df: pd.DataFrame, col: str, other: str, target: str = "utility", group: str = "thread_id",
                     n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Is ``col`` a better recovery of ``target`` than ``other``?  The mean over threads
    of the difference of their within-thread Spearman correlations, with a percentile
    interval from resampling threads (a thread where either correlation is undefined
    counts 0 for the undefined one, so both sides see the same threads)."""
    a = thread_spearmans(df, col, target, group)
    b = thread_spearmans(df, other, target, group)
    keep = a.notna() | b.notna()
    d = (a.fillna(0.0) - b.fillna(0.0))[keep].to_numpy(float)
    if len(d) == 0:
        return {"difference": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "threads": 0}
    ci = stats.bootstrap_ci(d, n_resamples=n_boot, confidence=0.95, seed=seed)
    return {"difference": ci["value"], "ci_low": ci["low"], "ci_high": ci["high"], "threads": int(len(d))}


def within_thread_pair_accuracy(df: pd.DataFrame, col: str, target: str = "utility", group: str = "thread_id") -> float:
    """Over all pairs of answers of a thread whose ``target`` differs: the fraction that
    ``col`` orders the same way (a tie in ``col`` counts one half); NaN without pairs."""
    hits, n = 0.0, 0
    for _, g in df.groupby(group):
        x, y = g[col].to_numpy(float), g[target].to_numpy(float)
        i, j = np.triu_indices(len(g), k=1)
        keep = y[i] != y[j]
        dx, dy = x[i][keep] - x[j][keep], y[i][keep] - y[j][keep]
        hits += float(np.sum(np.sign(dx) == np.sign(dy)) + 0.5 * np.sum(dx == 0))
        n += int(keep.sum())
    return hits / n if n else float("nan")


def recovery_stats(df: pd.DataFrame, cols: Sequence[str], target: str = "utility") -> dict[str, dict[str, float]]:
    """How well each column of ``df`` recovers ``target`` within threads: mean Spearman
    and pair accuracy (see the two functions above), plus the numbers of threads/answers."""
    out = {c: {"spearman": within_thread_spearman(df, c, target), "pair_accuracy": within_thread_pair_accuracy(df, c, target)}
           for c in cols}
    out["n"] = {"threads": int(df["thread_id"].nunique()), "responses": int(len(df))}
    return out
