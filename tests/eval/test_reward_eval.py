"""Reward-model evaluation metrics against hand-computed values."""

import numpy as np
import pandas as pd

from ambient_rlhf.eval import reward_eval as E


def test_bootstrap_resamples_threads():
    # all right -> every resample is 1
    ci = E.bootstrap_ci(np.ones(6), np.array([0, 0, 1, 1, 2, 2]), n_boot=200)
    assert ci["value"] == 1.0 and ci["ci_low"] == 1.0 and ci["ci_high"] == 1.0 and ci["n"] == 6
    # two threads: thread a all right (4 pairs), thread b all wrong (1 pair).  Resampling
    # threads, a resample is {a,a} -> 1, {b,b} -> 0, or {a,b} -> 4/5; so the 2.5% and
    # 97.5% quantiles over many resamples are exactly 0 and 1, and 0.8 is the mean.
    v = np.array([1, 1, 1, 1, 0.0])
    ci = E.bootstrap_ci(v, np.array(["a"] * 4 + ["b"]), n_boot=2000, seed=1)
    assert ci["value"] == 0.8 and ci["ci_low"] == 0.0 and ci["ci_high"] == 1.0


def test_reliability_hand_values():
    # p = (0.92, 0.92, 0.08, 0.62): confidence (0.92, 0.92, 0.92, 0.62), right (1, 1, 0, 1)
    # bin [0.90, 0.95): conf 0.92, accuracy 2/3, weight 3/4 -> 0.75 * |0.6667 - 0.92| = 0.19
    # bin [0.60, 0.65): conf 0.62, accuracy 1,   weight 1/4 -> 0.25 * |1 - 0.62|     = 0.095
    r = E.reliability(np.array([0.92, 0.92, 0.08, 0.62]))
    assert abs(r["ece"] - 0.285) < 1e-9
    assert [(round(b["lo"], 2), b["n"]) for b in r["bins"]] == [(0.6, 1), (0.9, 3)]


def test_correlations():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    c = E.correlations(x, np.array([1.0, 4.0, 9.0, 100.0]))
    assert abs(c["spearman"] - 1.0) < 1e-12 and c["pearson"] < 0.99
    assert abs(E.correlations(x, -x)["pearson"] + 1.0) < 1e-12


def test_untimed_pairs_rule():
    # scores 10, 4, 2, 1: pairs need score_A >= 2 score_B and score_B >= 2:
    # (10, 4), (10, 2), (4, 2); nothing against the 1 (below 2), times ignored
    df = pd.DataFrame({"thread_id": "t", "prompt": "q", "response": ["a", "b", "c", "d"],
                       "score": [10, 4, 2, 1], "created_utc": [400, 300, 200, 100]})
    u = E.build_untimed_pairs(df)
    assert sorted(zip(u.chosen, u.rejected)) == [("a", "b"), ("a", "c"), ("b", "c")]
    # here every preferred answer came later, so "earlier wins" scores 0
    assert E.win_outcomes(-u.chosen_created_utc.to_numpy(float), -u.rejected_created_utc.to_numpy(float)).mean() == 0.0


def test_bucket_table():
    rows = E.bucket_table(E.RATIO_EDGES, np.array([2.5, 2.9, 12.0]), {"accuracy": np.array([1.0, 0.0, 1.0])},
                          fmt=lambda x: f"{x:g}")
    assert rows == [{"bucket": "[2, 3)", "n": 2, "accuracy": 0.5}, {"bucket": "[10, inf)", "n": 1, "accuracy": 1.0}]
