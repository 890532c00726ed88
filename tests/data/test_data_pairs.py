"""The SHP pair rule, boundary by boundary (expectations derived by hand)."""

from ambient_rlhf.data.pairs import PairRule, is_pair, thread_pairs

RULE = PairRule(min_score=2, min_prompt_score=10, min_score_ratio=2.0, time_rule=True, max_pairs=5)


def test_ratio_boundary_is_inclusive():
    assert is_pair(4, 2, 10, 0, 50, RULE)  # ratio exactly 2
    assert not is_pair(3, 2, 10, 0, 50, RULE)  # ratio 1.5
    assert is_pair(6, 3, 10, 0, 50, PairRule(min_score_ratio=2.0))


def test_equal_timestamps_pass_the_time_rule_and_earlier_fails():
    assert is_pair(10, 2, 100, 100, 50, RULE)  # written at the same second: allowed
    assert not is_pair(10, 2, 99, 100, 50, RULE)  # chosen one second earlier
    assert is_pair(10, 2, 99, 100, 50, PairRule(time_rule=False))


def test_equal_scores_are_never_pairs():
    assert not is_pair(5, 5, 100, 0, 50, RULE)
    pairs, c = thread_pairs([5, 5], [0, 100], 50, RULE, cap=False)
    assert pairs == [] and c["tied"] == 1 and c["candidates"] == 0


def test_score_and_prompt_thresholds():
    assert not is_pair(10, 1, 10, 0, 50, RULE)  # rejected below min_score 2
    assert is_pair(4, 2, 10, 0, 10, RULE)  # prompt score exactly 10
    assert not is_pair(4, 2, 10, 0, 9, RULE)
    assert is_pair(4, 2, 10, 0, None, RULE)  # unknown prompt score (SHP files) passes


def test_thread_pairs_counts_one_reason_per_candidate():
    # scores/times: a=10@100, b=4@200, c=20@300, d=2@50, e=10@300, f=1@400
    # candidates = 15 unordered pairs - 1 tie (a,e) = 14
    # kept: (c,a) r2, (c,b) r5, (c,d) r10, (c,e) r2 same time, (a,d) r5, (e,b) r2.5, (e,d) r5, (b,d) r2
    # low_score: every pair with f (score 1): 5; time_rule: (a,b) a is earlier; low_ratio: none
    s = [10, 4, 20, 2, 10, 1]
    t = [100, 200, 300, 50, 300, 400]
    pairs, c = thread_pairs(s, t, 50, RULE, cap=False)
    assert sorted(pairs) == sorted([(2, 0), (2, 1), (2, 3), (2, 4), (0, 3), (4, 1), (4, 3), (1, 3)])
    assert c == {"candidates": 14, "tied": 1, "kept": 8, "low_prompt_score": 0, "low_score": 5,
                 "low_ratio": 0, "time_rule": 1, "cap": 0}
    # capped (train): the 5 largest ratios: (c,d)=10, then ratio 5: (c,b), (a,d), (e,d), then (e,b)=2.5
    capped, cc = thread_pairs(s, t, 50, RULE, cap=True)
    assert sorted(capped) == sorted([(2, 3), (2, 1), (0, 3), (4, 3), (4, 1)])
    assert cc["cap"] == 3 and cc["kept"] == 5
    # without the time rule (a, b) becomes a pair too: 10 >= 2*4
    free, cf = thread_pairs(s, t, 50, PairRule(time_rule=False), cap=False)
    assert (0, 1) in free and cf["kept"] == 9 and cf["time_rule"] == 0


def test_low_prompt_score_drops_every_candidate():
    pairs, c = thread_pairs([10, 2], [10, 0], 9, RULE, cap=False)
    assert pairs == [] and c["low_prompt_score"] == 1
