import math

import torch

from ambient_rlhf.rl.losses import explained_variance, ppo_policy_loss, ppo_value_loss, sequence_policy_loss


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
