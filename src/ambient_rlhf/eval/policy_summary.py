"""eval.json of ``ambient eval`` from its per-sample rows: win rate, score differences, KL,
length and distinct-n, each with a bootstrap interval over prompts, and the verdict.

Pure (numpy and :mod:`ambient_rlhf.stats`): the tests call :func:`summarize` on rows
written by hand, and the report reads :func:`verdict` without loading any model code."""

from __future__ import annotations

from typing import Any

import numpy as np

from ambient_rlhf import stats


def summarize(rows: list[dict[str, Any]], cfg: Any) -> dict[str, Any]:
    """eval.json from the per-sample rows (pure; the tests call it on hand-made rows);
    ``cfg`` is the :class:`~ambient_rlhf.eval.policy_eval.EvalConfig` they were made with.

    Intervals resample prompts (``thread_id``): each prompt's samples form one unit."""
    B, seed = cfg.bootstrap_resamples, cfg.seed
    g = [r["thread_id"] for r in rows]

    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], dtype=float)

    def side_by_side(pol: str, ref: str) -> dict[str, Any]:
        p, r = col(pol), col(ref)
        out = {
            "policy": stats.describe(p, B, seed, g),
            "reference": stats.describe(r, B, seed, g),
            "difference": stats.describe(p - r, B, seed, g),
            "win_rate": stats.describe(stats.win_outcomes(p, r), B, seed, g),
        }
        return out

    outcomes = stats.win_outcomes(col("policy_score"), col("reference_score"))
    result: dict[str, Any] = {
        "policy": cfg.policy, "reference": cfg.reference, "judge": cfg.judge, "proxy": cfg.proxy,
        "data": cfg.data, "split": cfg.split, "goal": cfg.goal, "temperature": cfg.temperature,
        "max_new_tokens": cfg.max_new_tokens,
        "n_prompts": len(set(g)), "samples_per_prompt": cfg.samples_per_prompt, "n_pairs": len(rows),
        "win_rate": stats.describe(outcomes, B, seed, g),
        "wins": int((outcomes == 1).sum()), "ties": int((outcomes == 0.5).sum()), "losses": int((outcomes == 0).sum()),
        "judge_score": side_by_side("policy_score", "reference_score"),
        "kl": stats.describe(col("kl"), B, seed, g),
    }
    n_tok = col("policy_tokens") + col("policy_stopped")  # the EOS token is scored too
    result["kl"]["per_token"] = float(col("kl").sum() / max(n_tok.sum(), 1))
    result["length"] = {}
    result["distinct"] = {}
    for side in ("policy", "reference"):
        texts = [r[side] for r in rows]
        toks = col(f"{side}_tokens")
        result["length"][side] = {
            "mean_tokens": float(toks.mean()) if len(rows) else float("nan"),
            "mean_words": float(np.mean([len(stats.words(t)) for t in texts])) if texts else float("nan"),
            "stopped_rate": float(np.mean([r[f"{side}_stopped"] for r in rows])) if rows else float("nan"),
        }
        result["distinct"][side] = {"distinct_1": stats.distinct_n(texts, 1), "distinct_2": stats.distinct_n(texts, 2)}
    # tokens, policy minus reference, paired by prompt and sample
    result["length"]["difference"] = stats.describe(col("policy_tokens") - col("reference_tokens"), B, seed, g)
    if rows and "policy_proxy" in rows[0]:
        result["proxy_score"] = side_by_side("policy_proxy", "reference_proxy")
    if rows and "policy_true_utility" in rows[0]:
        tu = side_by_side("policy_true_utility", "reference_true_utility")
        both_u = np.concatenate([col("policy_true_utility"), col("reference_true_utility")])
        tu["spearman_judge"] = stats.spearman(np.concatenate([col("policy_score"), col("reference_score")]), both_u)
        if "policy_proxy" in rows[0]:
            tu["spearman_proxy"] = stats.spearman(np.concatenate([col("policy_proxy"), col("reference_proxy")]), both_u)
        tu["policy_samples"] = policy_sample_judge(rows, B, seed)
        result["true_utility"] = tu
    result["length_controlled_win_rate"] = length_controlled_win_rate(
        outcomes, col("policy_tokens") - col("reference_tokens"), g, B, seed)
    result["verdict"] = verdict(result["win_rate"])
    if getattr(cfg, "reference_goal", None) is not None:
        result["steering"] = steering(result, cfg)
    # side-by-side table: the first n_table prompts, first sample of each
    table = [r for r in rows if r["sample"] == 0][: cfg.n_table]
    result["table"] = [{k: r[k] for k in r if k not in ("thread_id",)} for r in table]
    return result


def policy_sample_judge(rows: list[dict[str, Any]], n_resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Does a reward model rank the policy's *own* answers right?  Per reward model
    (``judge``, and ``proxy`` when scored): Spearman of its score with the true utility
    over the policy's samples alone (bootstrap interval), and the pair accuracy over the
    pairs of one prompt that involve a policy sample (policy vs policy, policy vs
    reference), ties in utility left out."""
    u_pol = np.array([r["policy_true_utility"] for r in rows], dtype=float)
    u_all = np.concatenate([u_pol, [r["reference_true_utility"] for r in rows]])
    group = [r["thread_id"] for r in rows] * 2
    is_pol = np.arange(2 * len(rows)) < len(rows)
    out: dict[str, Any] = {}
    for name, pol, ref in (("judge", "policy_score", "reference_score"), ("proxy", "policy_proxy", "reference_proxy")):
        if not rows or pol not in rows[0]:
            continue
        s_pol = np.array([r[pol] for r in rows], dtype=float)
        s_all = np.concatenate([s_pol, [r[ref] for r in rows]])
        out[name] = {"spearman": stats.spearman_interval(s_pol, u_pol, n_resamples, seed),
                     "pair_accuracy": stats.pair_accuracy(s_all, u_all, group, is_pol)}
    return out


LC_L2 = 1e-4
"""Ridge on the length-controlled fit: keeps it finite when the outcomes separate by length
(small data), negligible otherwise."""


def _lc_fit(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of the logistic regression of the outcome on ``x``."""
    from ambient_rlhf.eval.reward_metrics import fit_logistic

    w = fit_logistic(np.column_stack([np.ones_like(x), x]), y, l2=LC_L2)
    return float(w[0]), float(w[1])


def length_controlled_win_rate(outcomes: np.ndarray, len_diff: np.ndarray, groups: list, n_resamples: int = 1000,
                               seed: int = 0, confidence: float = 0.95) -> dict[str, Any]:
    """The win rate at zero length difference: the regression adjustment of AlpacaEval 2.0's
    length-controlled win rate (Dubois et al. 2024), for one policy against one reference.

    The judge's outcome (1 win, 0.5 tie, 0 loss) is modelled as
    ``sigmoid(b + phi * tanh(d / std(d)))`` with ``d`` the policy's minus the reference's
    answer length in tokens; the length-controlled win rate is ``sigmoid(b)``, the
    predicted win rate of an answer as long as the reference's.  A policy that wins only by
    writing longer has a large ``phi`` and an LC win rate near 0.5.  The interval resamples
    prompts (``groups``), refitting each time.

    Args: outcomes, len_diff (N,); groups (N,) prompt of each row.
    Returns: ``{"value", "low", "high", "n", "confidence", "length_slope"}``."""
    y, d = np.asarray(outcomes, float), np.asarray(len_diff, float)
    nan = float("nan")
    if y.size == 0:
        return {"value": nan, "low": nan, "high": nan, "n": 0, "confidence": confidence, "length_slope": nan}
    sd = float(d.std())
    x = np.tanh(d / sd) if sd > 0 else np.zeros_like(d)
    b, phi = _lc_fit(y, x)
    _, inv = np.unique(np.asarray(groups), return_inverse=True)
    G = int(inv.max()) + 1
    members = [np.flatnonzero(inv == k) for k in range(G)]
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_resamples):
        idx = np.concatenate([members[k] for k in rng.integers(0, G, size=G)])
        boot.append(_lc_fit(y[idx], x[idx])[0])
    alpha = (1.0 - confidence) / 2
    low, high = 1.0 / (1.0 + np.exp(-np.quantile(boot, [alpha, 1 - alpha])))
    return {"value": float(1.0 / (1.0 + np.exp(-b))), "low": float(low), "high": float(high), "n": G,
            "confidence": confidence, "length_slope": phi}


def steering(result: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The steering test's summary: goal minus reference goal on every judge, and whether
    the goal steers.

    The verdict reads the best judge available: the hidden true utility (a simulated
    community), else the gold judge.  ``steers`` when the whole interval of the
    difference lies above 0, ``reversed`` when below, ``no clear effect`` when it
    contains 0 (what a goal token the model ignores must give).  Length is reported
    beside it: on real data a goal that only lengthens answers shows up there."""
    out: dict[str, Any] = {"goal": cfg.goal, "reference_goal": cfg.reference_goal,
                           "same_model": cfg.policy == cfg.reference}
    for key, src in (("true_utility", result.get("true_utility")), ("judge", result.get("judge_score")),
                     ("proxy", result.get("proxy_score"))):
        if src:
            out[key] = src["difference"]
    out["length_tokens"] = result["length"]["difference"]
    out["kl"] = result["kl"]
    out["by"] = "true_utility" if "true_utility" in out else "judge"
    d = out[out["by"]]
    lo, hi = d.get("low"), d.get("high")
    ok = isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and np.isfinite(lo) and np.isfinite(hi)
    out["verdict"] = "steers" if ok and lo > 0 else "reversed" if ok and hi < 0 else "no clear effect"
    return out


def verdict(win: dict[str, float]) -> str:
    """``better`` when the whole interval is above 0.5, ``worse`` when below, else ``unclear``."""
    if not isinstance(win, dict) or not all(isinstance(win.get(k), (int, float)) for k in ("low", "high")):
        return "unclear"
    if not (np.isfinite(win["low"]) and np.isfinite(win["high"])):
        return "unclear"
    if win["low"] > 0.5:
        return "better"
    if win["high"] < 0.5:
        return "worse"
    return "unclear"
