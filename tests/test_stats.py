"""Statistics helpers: expectations derived by hand or from scipy (an independent reference)."""

import math

import numpy as np
import pytest

from ambient_rlhf import stats


def test_bootstrap_constant_values_give_a_point_interval():
    # every resample of [2, 2, 2] has mean 2, so the interval is [2, 2]
    r = stats.bootstrap_ci([2.0, 2.0, 2.0], n_resamples=200)
    assert (r["value"], r["low"], r["high"], r["n"]) == (2.0, 2.0, 2.0, 3)


def test_bootstrap_matches_the_normal_approximation_for_a_proportion():
    # 120 ones in 400: p = 0.3; the bootstrap of a mean approximates the normal interval
    # p +- 1.96 * sqrt(p (1 - p) / n) = 0.3 +- 0.0449 -> [0.2551, 0.3449]
    x = np.array([1.0] * 120 + [0.0] * 280)
    r = stats.bootstrap_ci(x, n_resamples=4000, seed=1)
    assert r["value"] == pytest.approx(0.3)
    assert r["low"] == pytest.approx(0.2551, abs=0.008)
    assert r["high"] == pytest.approx(0.3449, abs=0.008)


def test_bootstrap_is_seeded_and_handles_degenerate_inputs():
    x = np.arange(10.0)
    assert stats.bootstrap_ci(x, seed=3) == stats.bootstrap_ci(x, seed=3)
    assert stats.bootstrap_ci(x, seed=3) != stats.bootstrap_ci(x, seed=4)
    e = stats.bootstrap_ci([])
    assert e["n"] == 0 and math.isnan(e["value"]) and math.isnan(e["low"])
    one = stats.bootstrap_ci([0.7])
    assert one["low"] == one["high"] == one["value"] == 0.7
    # NaNs are dropped: the mean of [1, 3] is 2
    assert stats.bootstrap_ci([1.0, float("nan"), 3.0])["value"] == 2.0


def test_bootstrap_custom_statistic_and_chunking():
    # median of 1..5 is 3; a large n forces several chunks of resamples
    assert stats.bootstrap_ci([1, 2, 3, 4, 5], statistic=lambda a: np.median(a, axis=-1))["value"] == 3.0
    big = stats.bootstrap_ci(np.ones(5000), n_resamples=600)
    assert big["low"] == big["high"] == 1.0


def test_win_outcomes_count_ties_half():
    # 3 > 1 win, 2 == 2 tie, 0 < 5 loss -> [1, .5, 0], rate 1.5 / 3 = 0.5
    o = stats.win_outcomes([3, 2, 0], [1, 2, 5])
    assert o.tolist() == [1.0, 0.5, 0.0]
    assert stats.win_rate([3, 2, 0], [1, 2, 5]) == 0.5
    assert stats.win_rate([1, 1], [0, 1]) == 0.75
    with pytest.raises(ValueError):
        stats.win_outcomes([1, 2], [1])


def test_distinct_n_by_hand():
    # unigrams of "a b a" + "a b": a b a a b -> unique {a, b}: 2/5
    # bigrams: (a,b) (b,a) (a,b) -> 2/3
    assert stats.distinct_n(["a b a", "A b"], 1) == pytest.approx(2 / 5)
    assert stats.distinct_n(["a b a", "A b"], 2) == pytest.approx(2 / 3)
    assert stats.distinct_n(["one"], 2) == 0.0
    assert stats.distinct_n([], 1) == 0.0


def test_rankdata_and_spearman_match_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=40).astype(float)  # many ties
    y = x + rng.normal(size=40)
    assert np.allclose(stats.rankdata(x), scipy_stats.rankdata(x))
    assert stats.spearman(x, y) == pytest.approx(scipy_stats.spearmanr(x, y).statistic, abs=1e-12)
    # perfectly monotone -> 1, reversed -> -1, constant -> undefined
    assert stats.spearman([1, 2, 3], [10, 20, 40]) == pytest.approx(1.0)
    assert stats.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(stats.spearman([1, 1, 1], [1, 2, 3]))


def test_cluster_bootstrap_by_hand():
    # clusters x = [1, 1], y = [0, 0, 0, 0]: the point estimate is the mean of all values,
    # 2/6.  A resample draws 2 clusters: {x, x} -> 1, {y, y} -> 0, {x, y} -> 2/6, with
    # probabilities 1/4, 1/4, 1/2, so the 2.5% and 97.5% quantiles are 0 and 1.
    r = stats.bootstrap_ci([1, 1, 0, 0, 0, 0], clusters=["x", "x", "y", "y", "y", "y"], n_resamples=2000)
    assert r["value"] == pytest.approx(2 / 6) and r["n"] == 2
    assert (r["low"], r["high"]) == (0.0, 1.0)
    # the fraction of resamples at each possible value matches 1/4, 1/4, 1/2
    # (checked through the median, which is the mixed value 2/6)
    med = stats.bootstrap_ci([1, 1, 0, 0, 0, 0], clusters=list("xxyyyy"), n_resamples=2000, confidence=0.0)
    assert med["low"] == pytest.approx(2 / 6) and med["high"] == pytest.approx(2 / 6)
    # one value per cluster: the same interval as the plain bootstrap up to resampling noise
    rng = np.random.default_rng(0)
    x = rng.normal(size=300)
    a = stats.bootstrap_ci(x, clusters=np.arange(300), n_resamples=3000)
    b = stats.bootstrap_ci(x, n_resamples=3000)
    assert a["low"] == pytest.approx(b["low"], abs=0.02) and a["high"] == pytest.approx(b["high"], abs=0.02)
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, 2.0], statistic=np.median, clusters=[0, 1])


def test_describe_resamples_groups():
    # two groups with means 0 and 1 -> value 0.5; the std is over the raw values
    d = stats.describe([0, 0, 1, 1], groups=["a", "a", "b", "b"], n_resamples=500)
    assert d["value"] == 0.5 and d["n"] == 2 and d["std"] == 0.5
    assert d["low"] == 0.0 and d["high"] == 1.0
