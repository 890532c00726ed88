"""``ambient eval``'s policy-sample judge metric: does a reward model rank the policy's own
answers right?  Hand-made rows, expected values derived by hand."""

from __future__ import annotations

import pytest

from ambient_rlhf.eval.policy_eval import EvalConfig, summarize


def _row(t, i, ps, rs, pu, ru, pp, rp):
    return dict(thread_id=t, sample=i, prompt="q", reference="a b", policy="c d", reference_score=rs, policy_score=ps,
                kl=0.0, policy_tokens=2, reference_tokens=2, policy_stopped=True, reference_stopped=True,
                policy_proxy=pp, reference_proxy=rp, policy_true_utility=pu, reference_true_utility=ru)


def test_policy_sample_judge_by_hand():
    rows = [  # thread, sample, judge (pol, ref), utility (pol, ref), proxy (pol, ref)
        _row("x", 0, 3.0, 1.0, 2.0, 1.0, 0.0, 1.0),
        _row("x", 1, 2.0, 1.0, 1.5, 1.0, 1.0, 1.0),
        _row("y", 0, 1.0, 0.0, 0.5, 0.2, 2.0, 0.0),
        _row("z", 0, 0.0, 5.0, 0.1, 3.0, 3.0, 0.0),
    ]
    r = summarize(rows, EvalConfig(bootstrap_resamples=200))["true_utility"]["policy_samples"]
    # judge on the policy's answers: scores 3, 2, 1, 0 and utilities 2, 1.5, 0.5, 0.1: same order
    assert r["judge"]["spearman"]["value"] == pytest.approx(1.0) and r["judge"]["spearman"]["n"] == 4
    # proxy: scores 0, 1, 2, 3 against the same utilities: reversed order
    assert r["proxy"]["spearman"]["value"] == pytest.approx(-1.0)
    # pairs of one prompt touching a policy answer, utility ties left out:
    # x: p0-p1 (2 > 1.5), p0-r0, p0-r1 (2 > 1), p1-r0, p1-r1 (1.5 > 1); r0-r1 has no policy answer
    #    judge: 3>2, 3>1, 3>1, 2>1, 2>1: all 5 right
    # y: p-r (0.5 > 0.2): judge 1 > 0 right; z: p-r (0.1 < 3): judge 0 < 5 right -> 7/7
    assert r["judge"]["pair_accuracy"] == {"value": 1.0, "n": 7}
    # proxy: x: p0-p1 0<1 wrong, p0 vs r (0<1) wrong x2, p1 vs r (1=1) ties x2 -> 0.5 + 0.5;
    # y: 2>0 right; z: 3>0 with utility 0.1<3 wrong -> (0 + 0 + 0 + 0.5 + 0.5 + 1 + 0) / 7
    assert r["proxy"]["pair_accuracy"]["value"] == pytest.approx(2 / 7) and r["proxy"]["pair_accuracy"]["n"] == 7


def test_no_true_utility_no_policy_sample_judge():
    rows = [{k: v for k, v in _row("x", 0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0).items() if "true_utility" not in k}]
    assert "true_utility" not in summarize(rows, EvalConfig(bootstrap_resamples=50))
