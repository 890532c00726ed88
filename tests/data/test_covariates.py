"""Covariates of a response and the candidate pairs without the time rule, by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from ambient_rlhf.data.covariates import COVARIATES, candidate_pairs, response_covariates


def frame():
    # thread a: prompt at t=0; answers at 2h (score 10), 1h (score 4), 3h (score 1)
    # thread b: prompt at t=100h; answers at 100.5h (score 3), 101h (score 9)
    h = 3600.0
    rows = [("a", "ten words " * 5, 10, 2 * h, 0.0), ("a", "four", 4, 1 * h, 0.0), ("a", "one two", 1, 3 * h, 0.0),
            ("b", "x y z", 3, 100.5 * h, 100 * h), ("b", "late but good", 9, 101 * h, 100 * h)]
    return pd.DataFrame([{"thread_id": t, "prompt": f"q {t}", "response": r, "score": s, "created_utc": c,
                          "prompt_created_utc": p, "split": "train"} for t, r, s, c, p in rows])


def test_response_covariates_by_hand():
    x = response_covariates(frame())
    assert x.shape == (5, len(COVARIATES))
    d = dict(zip(COVARIATES, x.T))
    assert d["delay"] == pytest.approx(np.log1p([2, 1, 3, 0.5, 1]))
    # arrival order within the thread: a: 1h answer first, then 2h, then 3h; b: in row order
    assert d["order"] == pytest.approx(np.log1p([1, 0, 2, 0, 1]))
    assert d["length"] == pytest.approx(np.log1p([10, 1, 2, 3, 3]))
    assert d["delay_x_thread"] == pytest.approx(np.log1p([2, 1, 3, 0.5, 1]) * np.log([3, 3, 3, 2, 2]))
    assert d["order_x_thread"] == pytest.approx(np.log1p([1, 0, 2, 0, 1]) * np.log([3, 3, 3, 2, 2]))
    assert response_covariates(frame(), ["length"]).shape == (5, 1)
    with pytest.raises(ValueError, match="unknown covariates"):
        response_covariates(frame(), ["karma"])


def test_candidate_pairs_ignore_the_time_rule():
    p = candidate_pairs(frame(), min_ratio=2.0, min_score=2)
    got = sorted(zip(p["chosen"], p["rejected"]))
    # a: 10 vs 4 (ratio 2.5, passes; the 10 came later), 10 vs 1 and 4 vs 1 (score 1 < 2: out);
    # b: 9 vs 3 (ratio 3; the 9 came later).  The time rule would keep both, so flip a's
    # times to see one it would drop: the preferred "four"-beating answer was first here.
    assert got == [("late but good", "x y z"), ("ten words " * 5, "four")]
    assert list(p["chosen_row"]) == [0, 4] and list(p["rejected_row"]) == [1, 3]
    f = frame()
    f.loc[0, "created_utc"] = 0.5 * 3600  # the 10-point answer now came before the 4-point one
    p2 = candidate_pairs(f)
    assert ("ten words " * 5, "four") in set(zip(p2["chosen"], p2["rejected"]))  # kept without the time rule
    assert p2.loc[p2["chosen"] == "ten words " * 5, "seconds_difference"].item() == pytest.approx(-0.5 * 3600)
    assert len(candidate_pairs(frame(), per_thread=1)) == 2
    assert math.isclose(p["score_ratio"].iloc[0], 2.5) and math.isclose(p["score_ratio"].iloc[1], 3.0)
