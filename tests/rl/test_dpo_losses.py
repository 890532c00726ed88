"""DPO-family losses against values worked out by hand.

One pair throughout (log-probs chosen so the arithmetic is short):
policy log p(chosen) = -10, log p(rejected) = -12; reference -11 and -11.5; beta = 0.5.
Log-ratios: chosen -10 - (-11) = 1, rejected -12 - (-11.5) = -0.5, so h = 1.5 and
beta * h = 0.75.  ``softplus(-x) = log(1 + e^-x) = -log sigmoid(x)``."""

from __future__ import annotations

import math

import pytest
import torch

from ambient_rlhf.rl.dpo_losses import dpo_loss, ranking_pair_weights


def _one(**kw):
    pc, pr = torch.tensor([-10.0], requires_grad=True), torch.tensor([-12.0], requires_grad=True)
    rc, rr = torch.tensor([-11.0]), torch.tensor([-11.5])
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, 0.5, **kw)
    losses.sum().backward()
    return float(losses), float(cr), float(rj), float(pc.grad), float(pr.grad)


def _softplus(x):
    return math.log1p(math.exp(x))


def test_dpo_sigmoid():
    loss, cr, rj, gc, gr = _one(kind="dpo")
    assert loss == pytest.approx(_softplus(-0.75), rel=1e-6)  # = log(1.4723666) = 0.386871...
    assert loss == pytest.approx(0.3868710, abs=1e-6)
    assert (cr, rj) == (0.5, -0.25)  # beta * log-ratio of each answer
    # d/d log pi(chosen) of -log sigmoid(beta h) = -beta * sigmoid(-beta h); the rejected gets the opposite
    s = 1.0 / (1.0 + math.exp(0.75))
    assert gc == pytest.approx(-0.5 * s, rel=1e-6)
    assert gr == pytest.approx(0.5 * s, rel=1e-6)


def test_cdpo_label_smoothing():
    loss, *_ = _one(kind="cdpo", label_smoothing=0.25)
    # 0.75 * -log sigmoid(0.75) + 0.25 * -log sigmoid(-0.75)
    assert loss == pytest.approx(0.75 * _softplus(-0.75) + 0.25 * _softplus(0.75), rel=1e-6)
    assert loss == pytest.approx(0.75 * 0.3868710 + 0.25 * 1.1368710, abs=1e-6)
    # with smoothing 0 it is plain DPO
    assert _one(kind="cdpo")[0] == pytest.approx(_one(kind="dpo")[0], abs=0)


def test_ipo_squared_distance_to_half_over_beta():
    loss, cr, rj, gc, gr = _one(kind="ipo")
    assert loss == pytest.approx(0.25, abs=1e-6)  # (1.5 - 1/(2*0.5))^2
    assert (gc, gr) == pytest.approx((1.0, -1.0), abs=1e-6)  # 2 * (h - 1) * (+-1)


def test_ln_dpo_divides_log_ratios_by_tokens():
    n = dict(len_chosen=torch.tensor([4]), len_rejected=torch.tensor([2]))
    loss, cr, rj, gc, _ = _one(kind="ln_dpo", **n)
    # log-ratios per token: 1/4 and -0.5/2, h = 0.5, beta h = 0.25
    assert loss == pytest.approx(_softplus(-0.25), rel=1e-6)
    assert (cr, rj) == pytest.approx((0.125, -0.125), abs=1e-7)
    assert gc == pytest.approx(-0.5 / 4 / (1.0 + math.exp(0.25)), rel=1e-6)


def test_rdpo_adds_the_length_difference_inside_the_sigmoid():
    n = dict(len_chosen=torch.tensor([4]), len_rejected=torch.tensor([2]))
    loss, cr, rj, _, _ = _one(kind="rdpo", alpha=0.1, **n)
    assert loss == pytest.approx(_softplus(-0.95), rel=1e-6)  # 0.75 + 0.1 * (4 - 2)
    assert (cr, rj) == (0.5, -0.25)  # the rewards are DPO's
    # the longer winner is partly explained by length: a lower loss than DPO's
    assert loss < _one(kind="dpo")[0]
    # a shorter winner: 0.75 + 0.1 * (2 - 4)
    loss_short, *_ = _one(kind="rdpo", alpha=0.1, len_chosen=torch.tensor([2]), len_rejected=torch.tensor([4]))
    assert loss_short == pytest.approx(_softplus(-0.55), rel=1e-6)


def test_batch_is_elementwise():
    pc = torch.tensor([-10.0, -3.0])
    pr = torch.tensor([-12.0, -3.0])
    rc = torch.tensor([-11.0, -3.0])
    rr = torch.tensor([-11.5, -3.0])
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, 0.5)
    # the second pair is where policy == reference: h = 0, loss = log 2
    assert losses.tolist() == pytest.approx([_softplus(-0.75), math.log(2.0)], rel=1e-6)
    assert not cr.requires_grad


def test_bad_arguments():
    x = torch.zeros(1)
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_loss(x, x, x, x, 0.1, "simpo")
    with pytest.raises(ValueError, match="beta must be > 0"):
        dpo_loss(x, x, x, x, 0.0)
    with pytest.raises(ValueError, match="label_smoothing applies to kind='cdpo'"):
        dpo_loss(x, x, x, x, 0.1, "dpo", label_smoothing=0.1)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        dpo_loss(x, x, x, x, 0.1, "cdpo", label_smoothing=0.5)
    with pytest.raises(ValueError, match="alpha applies to kind='rdpo'"):
        dpo_loss(x, x, x, x, 0.1, "dpo", alpha=0.1)
    with pytest.raises(ValueError, match="needs len_chosen"):
        dpo_loss(x, x, x, x, 0.1, "ln_dpo")


def test_ranking_pair_weights_make_each_thread_weigh_one():
    # a 3-way ranking has 3 ordered pairs, a 2-way one 1: weights 1/3 x3, then 1
    w = ranking_pair_weights([3, 1])
    assert w == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert ranking_pair_weights([]) == []
    with pytest.raises(ValueError):
        ranking_pair_weights([-1])
