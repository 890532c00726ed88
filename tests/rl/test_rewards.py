import math

import torch

import pytest

from ambient_rlhf.rl.rewards import (apply_missing_eos_score, fold_affine, kl_per_token, reference_normalization,
                                     sequence_rewards, shaped_rewards)


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


def test_kl_penalty_gradients_by_enumeration():
    """The identities docs/rl.md derives, checked exactly on a 3-outcome distribution.

    p = softmax(theta) is the policy, q a fixed reference.  Sum over outcomes instead of
    sampling: sum_x p(x) f(x) is E_p[f]."""
    theta = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64, requires_grad=True)
    logq = torch.log(torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64))

    def grad(f):
        (g,) = torch.autograd.grad(f(torch.log_softmax(theta, 0)), theta)
        return g

    def kl_pq(logp):
        return (logp.exp() * (logp - logq)).sum()

    def kl_qp(logp):
        return (logq.exp() * (logq - logp)).sum()

    def reward_gradient(estimator):  # a penalty in the reward: E_p[k * grad log p], k detached
        return grad(lambda logp: (logp.exp().detach() * kl_per_token(logp, logq, estimator).detach() * logp).sum())

    # k1 in the reward: the score-function gradient is exactly grad KL(p||q)
    assert torch.allclose(reward_gradient("k1"), grad(kl_pq), atol=1e-12)
    # k3 in the reward: grad KL(p||q) - grad KL(q||p), not the gradient of KL(p||q)
    assert torch.allclose(reward_gradient("k3"), grad(kl_pq) - grad(kl_qp), atol=1e-12)
    assert not torch.allclose(reward_gradient("k3"), grad(kl_pq), atol=1e-3)
    # k3 in the loss, differentiated through log p on fixed samples: grad KL(q||p)
    loss_gradient = grad(lambda logp: (logp.exp().detach() * kl_per_token(logp, logq, "k3")).sum())
    assert torch.allclose(loss_gradient, grad(kl_qp), atol=1e-12)


def test_reference_normalization_by_hand():
    # scores 1, 2, 3, 6: mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
    # -> gain 1 / sqrt(3.5) = 0.534522, bias -3 / sqrt(3.5) = -1.603567
    gain, bias = reference_normalization(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert gain == pytest.approx(1 / math.sqrt(3.5), rel=1e-12)
    assert bias == pytest.approx(-3 / math.sqrt(3.5), rel=1e-12)
    # gain * 6 + bias = 3 / sqrt(3.5) = 1.603567: the top score sits 1.6 std above the mean
    assert gain * 6 + bias == pytest.approx(1.6035674514745464, rel=1e-12)
    with pytest.raises(ValueError, match="do not vary"):
        reference_normalization(torch.tensor([2.0, 2.0, 2.0]))


def test_fold_affine_by_hand():
    # head y = 2 x1 - x2 + 3; then the reward model's normalisation (y - 1) / 2 and an RL
    # gain 4, bias 0.5: 4 * (y - 1) / 2 + 0.5 = 2 y - 1.5 -> scale 2, shift -1.5
    # folded head: (4 x1 - 2 x2 + 6 - 1.5) = 4 x1 - 2 x2 + 4.5
    w, b = fold_affine(torch.tensor([[2.0, -1.0]]), torch.tensor([3.0]), scale=4 / 2, shift=0.5 - 4 * 1 / 2)
    assert w.tolist() == [[4.0, -2.0]] and b.tolist() == [4.5]
    x = torch.tensor([0.25, 1.0])
    assert (w @ x + b).item() == 4 * ((2 * 0.25 - 1.0 + 3) - 1) / 2 + 0.5  # = 4.5 + 1 - 2 = 3.5
