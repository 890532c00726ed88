import math

import torch

from ambient_rlhf.rl.losses import (explained_variance, kl_penalty_loss, ppo_policy_loss, ppo_value_loss,
                                   sequence_policy_loss)


def test_ppo_policy_loss_by_hand():
    # ratios: e^0.5 = 1.6487 (A=+1: clipped at 1.2 -> max(-1.6487, -1.2) = -1.2, clipped)
    #         e^-0.5 = 0.6065 (A=+2: max(-1.2131, -1.6) = -1.2131, not clipped)
    #         1 (A=-1: 1)
    #         pad
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.5, -0.5, 0.0, 3.0]])
    adv = torch.tensor([[1.0, 2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, st = ppo_policy_loss(new, old, adv, mask, clip=0.2)
    expect = (-1.2 - 2 * math.exp(-0.5) + 1.0) / 3
    assert abs(loss.item() - expect) < 1e-6
    assert abs(st["clipfrac"].item() - 1 / 3) < 1e-6
    assert abs(st["approxkl"].item() - 0.5 * (0.25 + 0.25 + 0) / 3) < 1e-6
    assert abs(st["ratio_max"].item() - math.exp(0.5)) < 1e-6
    assert abs(st["ratio_mean"].item() - (math.exp(0.5) + math.exp(-0.5) + 1) / 3) < 1e-6


def test_ppo_policy_gradient_is_zero_when_clipped():
    new = torch.tensor([[0.5]], requires_grad=True)
    loss, _ = ppo_policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss.backward()
    assert new.grad.item() == 0.0


def test_value_loss_by_hand():
    # v=1.0, old=0.5, R=2.0, clip 0.2: clipped v = 0.7; (1-2)^2 = 1, (0.7-2)^2 = 1.69 -> 0.5*1.69
    # v=0.0, old=0.1, R=0.0: clipped = 0.0 (within 0.2); both 0 -> 0
    loss, cf = ppo_value_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.1]]),
                              torch.tensor([[2.0, 0.0]]), torch.ones(1, 2), clip=0.2)
    assert abs(loss.item() - 0.5 * (1.69 + 0.0) / 2) < 1e-6
    assert abs(cf.item() - 0.5) < 1e-6


def test_sequence_loss_is_reinforce_on_fresh_samples():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([2.0, -1.0])
    loss, st = sequence_policy_loss(lp, lp.detach(), adv, mask, 0.2)
    loss.backward()
    # d/dlp of mean_i(-A_i * exp(sum lp_i - sum old_i)) at ratio 1 = -A_i/2 on real tokens
    assert torch.allclose(lp.grad, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]]))
    assert st["ratio_mean"].item() == 1.0 and st["clipfrac"].item() == 0.0


def test_explained_variance():
    R = torch.tensor([[1.0, 2.0, 3.0]])
    assert abs(explained_variance(R, R, torch.ones(1, 3)).item() - 1.0) < 1e-6
    # V = 0 explains nothing
    assert abs(explained_variance(torch.zeros(1, 3), R, torch.ones(1, 3)).item()) < 1e-6


def test_kl_penalty_loss_by_hand():
    # token (p, q) = (0.5, 0.25): q/p = 1/2, k3 = -1/2 + ln 2 = 0.193147, d k3/d log p = 1 - 1/2 = 1/2
    # token (0.2, 0.4): q/p = 2, k3 = 1 - ln 2 = 0.306853, d k3/d log p = 1 - 2 = -1
    # row 0: those two tokens and a padded one (any values: no loss, no gradient);
    # row 1: the first kind of token, then padding
    lp = torch.tensor([[math.log(0.5), math.log(0.2), -30.0], [math.log(0.5), 5.0, 0.0]], requires_grad=True)
    ref = torch.tensor([[math.log(0.25), math.log(0.4), 0.0], [math.log(0.25), -40.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a, b = -0.5 + math.log(2), 1 - math.log(2)
    # over tokens: (a + b + a) / 3; d/d log p = (1/2, -1, 0; 1/2, 0, 0) / 3
    loss = kl_penalty_loss(lp, ref, mask)
    assert abs(loss.item() - (2 * a + b) / 3) < 1e-6
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.allclose(g, torch.tensor([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0]]) / 3, atol=1e-6)
    # per sequence: rows sum to a + b = 0.5 and a; mean over the 2 rows; gradient halved
    loss = kl_penalty_loss(lp, ref, mask, per_sequence=True)
    assert abs(loss.item() - (0.5 + a) / 2) < 1e-6
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.allclose(g, torch.tensor([[0.5, -1.0, 0.0], [0.5, 0.0, 0.0]]) / 2, atol=1e-6)
    # the policy equal to the reference: 0
    assert kl_penalty_loss(ref, ref, mask).item() == 0.0
