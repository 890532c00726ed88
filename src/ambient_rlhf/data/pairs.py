"""Preference pairs by the SHP rule (Ethayarajh et al. 2022, Stanford Human Preferences).

Within a thread, response A is preferred to B when

* A has the higher score and was written no earlier than B (``created_A >= created_B``:
  the "time rule" -- B had at least as long to collect votes, so A's lead is not an
  artefact of being early; it can be switched off for baselines),
* both scores are >= ``min_score``, the prompt score is >= ``min_prompt_score``,
* ``score_A >= min_score_ratio * score_B`` (compared as a product, so the boundary
  ratio itself counts as passing without float round-off).

In the train split at most ``max_pairs`` pairs are kept per thread (those with the
largest score ratio; SteamSHP used 5), in valid/test all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# reasons a candidate (two responses with different scores) is not a pair, in the
# order they are checked; every candidate gets exactly one
PAIR_DROP_REASONS = ("low_prompt_score", "low_score", "low_ratio", "time_rule", "cap")


@dataclass
class PairRule:
    min_score: int = 2
    min_prompt_score: int = 10
    min_score_ratio: float = 2.0
    time_rule: bool = True
    max_pairs: int = 5


def is_pair(
    score_a: float, score_b: float, created_a: float, created_b: float,
    prompt_score: float | None, rule: PairRule,
) -> bool:
    """True when A is preferred to B under ``rule`` (the per-thread cap aside)."""
    if prompt_score is not None and prompt_score < rule.min_prompt_score:
        return False
    if score_a <= score_b or score_a < rule.min_score or score_b < rule.min_score:
        return False
    if score_a < rule.min_score_ratio * score_b:
        return False
    if rule.time_rule and created_a < created_b:
        return False
    return True


def thread_pairs(
    scores: Sequence[float],
    created_utc: Sequence[float],
    prompt_score: float | None,
    rule: PairRule,
    cap: bool,
) -> tuple[list[tuple[int, int]], dict[str, int]]:
    """Pairs ``(chosen_index, rejected_index)`` of one thread and why the others failed.

    Candidates are ordered pairs (i, j) with ``score_i > score_j`` (ties are never pairs:
    counted as ``tied``).  With ``cap`` (train split) only the ``rule.max_pairs`` with
    the largest score ratio survive (ties broken by index order: deterministic).
    Returns ``(pairs, counts)`` with counts for ``candidates, tied, kept`` and each of
    ``PAIR_DROP_REASONS``.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(created_utc, dtype=np.float64)
    k = s.size
    counts = {"candidates": 0, "tied": 0, "kept": 0, **{r: 0 for r in PAIR_DROP_REASONS}}
    if k < 2:
        return [], counts
    higher = s[:, None] > s[None, :]  # (k, k): i scores higher than j
    iu = np.triu_indices(k, 1)
    counts["tied"] = int((s[:, None] == s[None, :])[iu].sum())
    n_cand = int(higher.sum())
    counts["candidates"] = n_cand
    alive = higher.copy()
    # one reason per candidate, first failing check wins
    checks = []
    if prompt_score is not None and prompt_score < rule.min_prompt_score:
        checks.append(("low_prompt_score", np.zeros_like(alive)))
    else:
        checks.append(("low_prompt_score", np.ones_like(alive)))
    ok_score = s >= rule.min_score
    checks.append(("low_score", ok_score[:, None] & ok_score[None, :]))
    checks.append(("low_ratio", s[:, None] >= rule.min_score_ratio * s[None, :]))
    checks.append(("time_rule", (t[:, None] >= t[None, :]) if rule.time_rule else np.ones_like(alive)))
    for name, ok in checks:
        fail = alive & ~ok
        counts[name] = int(fail.sum())
        alive &= ok
    ci, ri = np.nonzero(alive)
    pairs = list(zip(ci.tolist(), ri.tolist()))
    if cap and len(pairs) > rule.max_pairs:
        ratio = s[ci] / s[ri]
        order = sorted(range(len(pairs)), key=lambda n: (-ratio[n], pairs[n]))
        keep = sorted(order[: rule.max_pairs])
        counts["cap"] = len(pairs) - len(keep)
        pairs = [pairs[n] for n in keep]
    counts["kept"] = len(pairs)
    return pairs, counts
