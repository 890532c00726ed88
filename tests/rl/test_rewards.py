import math

import torch

from ambient_rlhf.rl.rewards import apply_missing_eos_score, kl_per_token, sequence_rewards, shaped_rewards


def test_kl_estimators_by_hand():
    lp = torch.tensor([[math.log(0.5), math.log(0.2)]])
    ref = torch.tensor([[math.log(0.25), math.log(0.4)]])
    # k1 = log p - log q = ln 2, ln 0.5
    assert torch.allclose(kl_per_token(lp, ref, "k1"), torch.tensor([[math.log(2), math.log(0.5)]]))
    # k3 = (q/p - 1) - ln(q/p): q/p = 0.5 -> -0.5 + ln 2 = 0.19315; q/p = 2 -> 1 - ln 2 = 0.30685
    assert torch.allclose(kl_per_token(lp, ref, "k3"), torch.tensor([[0.19314718, 0.30685282]]), atol=1e-6)


def test_score_lands_on_last_real_token():
    lp = torch.tensor([[0.0, -1.0, -2.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-0.5, -1.5, -1.0, -7.0], [-1.0, -2.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    scores = torch.tensor([10.0, 20.0])
    r, ns = shaped_rewards(scores, lp, ref, mask, beta=0.1)
    # row 0: kl = (0.5, 0.5, -1, pad) -> -0.1*kl = (-0.05, -0.05, 0.1, 0); +10 at index 2
    assert torch.allclose(r[0], torch.tensor([-0.05, -0.05, 10.1, 0.0]))
    # row 1: kl = (0, 1, 0, 0) -> (0, -0.1, 0, 0); +20 at index 3
    assert torch.allclose(r[1], torch.tensor([0.0, -0.1, 0.0, 20.0]))
    assert torch.allclose(ns[0], torch.tensor([-0.05, -0.05, 0.1, 0.0]))
    # the sequence reward is the row sum of the shaped rewards
    assert torch.allclose(sequence_rewards(scores, lp, ref, mask, 0.1), r.sum(1))


def test_missing_eos_score_replaces():
    s = torch.tensor([2.0, 3.0])
    out = apply_missing_eos_score(s, torch.tensor([True, False]), -1.0)
    assert out.tolist() == [2.0, -1.0]
    assert apply_missing_eos_score(s, torch.tensor([False, False]), None).tolist() == [2.0, 3.0]
