"""Labels against values derived by hand (derivations in the comments)."""

import math

import numpy as np
import pytest

from ambient_rlhf.data import labels as L


def test_rank_ties_share_the_best_rank():
    # scores 5, 9, 5, 1: 9 is best (0); the two 5s each have one higher score -> 1;
    # 1 has three higher scores -> 3 (competition ranking, no rank 2)
    assert L.rank_by_score([5, 9, 5, 1]).tolist() == [1, 0, 1, 3]
    assert L.rank_by_score([7, 7, 7]).tolist() == [0, 0, 0]
    assert L.rank_by_score([]).tolist() == []
    assert L.rank_by_score([-1, 3]).tolist() == [1, 0]


def test_zscore_population_and_flat():
    # [0, 1, 3]: mean 4/3, var = ((16 + 1 + 25) / 9) / 3 = 42/27 -> sd = sqrt(14/9)
    sd = math.sqrt(14 / 9)
    np.testing.assert_allclose(L.zscore([0, 1, 3]), [-4 / 3 / sd, -1 / 3 / sd, 5 / 3 / sd], rtol=1e-12)
    assert L.zscore([2, 2, 2]).tolist() == [0.0, 0.0, 0.0]  # no spread -> 0, not nan
    assert L.zscore([5]).tolist() == [0.0]


def test_thread_labels_two_responses_by_hand():
    # A: score 10 at +60 s, B: score 3 at +600 s.  ranks [0, 1] -> rank_z [-1, 1];
    # delays [60, 600] -> delay_z [-1, 1]; adjusted = -1*rank_z + 0.5*delay_z = [1 - 0.5, -1 + 0.5]
    lb = L.thread_labels([10, 3], [1060, 1600], 1000, rank_weight=1.0, delay_weight=0.5)
    assert lb["rank"].tolist() == [0, 1]
    np.testing.assert_allclose(lb["rank_z"], [-1, 1])
    np.testing.assert_allclose(lb["delay"], [60, 600])
    np.testing.assert_allclose(lb["delay_z"], [-1, 1])
    np.testing.assert_allclose(lb["adjusted"], [0.5, -0.5])


def test_adjusted_late_answer_can_beat_early_one():
    # three answers: scores 10, 10, 4 at delays 0, 100, 200 -> ranks 0, 0, 2
    # rank_z: mean 2/3, sd = sqrt(((4/9)*2 + 16/9)/3) = sqrt(8/9) -> [-(2/3)/sd, -(2/3)/sd, (4/3)/sd]
    # delay_z: [-sqrt(1.5), 0, sqrt(1.5)] (mean 100, sd sqrt(20000/3))
    lb = L.thread_labels([10, 10, 4], [0, 100, 200], 0, rank_weight=1.0, delay_weight=1.0)
    sd = math.sqrt(8 / 9)
    np.testing.assert_allclose(lb["rank_z"], [-(2 / 3) / sd, -(2 / 3) / sd, (4 / 3) / sd], rtol=1e-12)
    np.testing.assert_allclose(lb["delay_z"], [-math.sqrt(1.5), 0, math.sqrt(1.5)], rtol=1e-12)
    # the tie in score is broken by lateness: the later of the two 10s is better
    assert lb["adjusted"][1] > lb["adjusted"][0]
    np.testing.assert_allclose(lb["adjusted"][1] - lb["adjusted"][0], math.sqrt(1.5), rtol=1e-12)


def test_equal_timestamps_give_zero_delay_z():
    lb = L.thread_labels([5, 1], [100, 100], 50, 1.0, 0.5)
    assert lb["delay_z"].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(lb["adjusted"], [1.0, -1.0])


def test_unknown_prompt_time_measures_delay_from_first_response():
    lb = L.thread_labels([1, 2], [500, 800], None, 1.0, 0.5)
    assert lb["delay"].tolist() == [0.0, 300.0]
    np.testing.assert_allclose(lb["delay_z"], [-1, 1])


def test_tiers_by_terciles_and_boundaries():
    # values 0..8: linear quantiles at 1/3 and 2/3 are 8/3 and 16/3
    lo, hi = L.tier_thresholds(np.arange(9.0), [1 / 3, 2 / 3])
    assert lo == pytest.approx(8 / 3) and hi == pytest.approx(16 / 3)
    assert L.assign_tiers(np.arange(9.0), lo, hi).tolist() == ["bad"] * 3 + ["ok"] * 3 + ["good"] * 3
    # a value exactly on a threshold is "ok"
    assert L.assign_tier(1.0, 1.0, 2.0) == "ok" and L.assign_tier(2.0, 1.0, 2.0) == "ok"
    assert L.assign_tier(0.999, 1.0, 2.0) == "bad" and L.assign_tier(2.001, 1.0, 2.0) == "good"


def test_vader_compound_by_hand():
    # VADER lexicon: great = 3.1, bad = -2.5; compound = x / sqrt(x^2 + 15)
    assert L.sentiment("great") == pytest.approx(3.1 / math.sqrt(3.1**2 + 15), abs=1e-4)
    assert L.sentiment("bad") == pytest.approx(-2.5 / math.sqrt(2.5**2 + 15), abs=1e-4)
    assert L.mean_or_none(0.0, 0) is None
    assert L.mean_or_none(1.0, 4) == 0.25
