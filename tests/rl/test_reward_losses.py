"""Reward-model losses against hand-computed values.  l(x) = -log sigmoid(x) = log(1 + e^-x):
l(0) = 0.693147, l(0.5) = 0.474077, l(1) = 0.313262."""

import math

import torch

from ambient_rlhf.rl import reward_losses as L


def l(x):
    return math.log1p(math.exp(-x))


def test_pairwise_loss_hand_values():
    # pairs: (1 vs 0) -> l(1) = 0.313262; (0 vs 0) -> l(0) = 0.693147; mean 0.503204
    loss = L.pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert abs(loss.item() - 0.503204) < 1e-5
    assert abs(loss.item() - (l(1) + l(0)) / 2) < 1e-6


def test_pairwise_loss_weights_each_pair():
    # weights 2 and 0.5 on the same pairs: (2 * 0.313262 + 0.5 * 0.693147) / 2 = 0.486549
    # (divided by the number of pairs, not by the sum of the weights)
    loss = L.pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([2.0, 0.5]))
    assert abs(loss.item() - 0.486549) < 1e-5
    ones = L.pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert abs(ones.item() - 0.503204) < 1e-5


def test_ranking_loss_weights_threads_equally():
    # thread 0: scores 3 > 2 > 1, rewards 0.5, 0, -0.5 -> pairs (0,1) d=.5, (0,2) d=1, (1,2) d=.5
    #   thread loss = (2 l(0.5) + l(1)) / 3 = (0.948154 + 0.313262) / 3 = 0.420472
    # thread 1: scores 1 > 0, rewards 0, 0 -> l(0) = 0.693147
    # loss = mean over threads = (0.420472 + 0.693147) / 2 = 0.556810
    # (a plain mean over the 4 pairs would give 0.488641: the weighting matters)
    r = torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0])
    g = torch.tensor([0, 0, 0, 1, 1])
    s = torch.tensor([3.0, 2.0, 1.0, 1.0, 0.0])
    loss = L.ranking_loss(r, g, s)
    assert abs(loss.item() - 0.556810) < 1e-5
    assert abs(loss.item() - ((2 * l(0.5) + l(1)) / 3 + l(0)) / 2) < 1e-6
    # the order of the rows does not matter
    perm = torch.tensor([4, 2, 0, 3, 1])
    assert abs(L.ranking_loss(r[perm], g[perm], s[perm]).item() - loss.item()) < 1e-6
    # accuracy: thread 0 all 3 right, thread 1 tie (0 > 0 false) -> 3/4
    assert abs(L.ranking_accuracy(r, g, s).item() - 0.75) < 1e-6


def test_ranking_loss_ties_and_singletons_give_no_pairs():
    # thread 0 has a tie (no pair), thread 1 one response: nothing to learn, loss 0 with a graph
    r = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    loss = L.ranking_loss(r, torch.tensor([0, 0, 1]), torch.tensor([1.0, 1.0, 5.0]))
    assert loss.item() == 0.0
    loss.backward()
    # thread 0 a tie; thread 1 (rows 1, 2): 2 > 1 -> l(r1 - r2) = l(-1) = 1.313262, the only live thread
    loss2 = L.ranking_loss(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0, 1, 1]), torch.tensor([1.0, 2.0, 1.0]))
    assert abs(loss2.item() - 1.313262) < 1e-5


def test_ranking_gradient_matches_pairwise_for_k2():
    # K = 2: the ranking loss of one thread is the pairwise loss of its one pair
    r = torch.tensor([0.3, -0.2])
    a = L.ranking_loss(r, torch.tensor([0, 0]), torch.tensor([0.0, 1.0]))  # row 1 is better
    b = L.pairwise_loss(r[1:], r[:1])
    assert abs(a.item() - b.item()) < 1e-7


def test_tier_loss_hand_values():
    # row 0: logits (0,0,0), label 0 -> log 3 = 1.098612
    # row 1: logits (ln 2, 0, 0), label 0 -> -log(2/4) = 0.693147; mean 0.895880
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0]])
    assert abs(L.tier_loss(logits, torch.tensor([0, 0])).item() - 0.895880) < 1e-5


def test_sentiment_loss_hand_values():
    # ((1-0)^2 + (0-0)^2 + (-1-1)^2) / 3 = 5/3
    assert abs(L.sentiment_loss(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])).item() - 5 / 3) < 1e-6


def test_fit_normalization():
    # [1,2,3,4]: mean 2.5, population std sqrt(((1.5^2)*2 + (0.5^2)*2)/4) = sqrt(1.25) = 1.118034
    mean, std = L.fit_normalization(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert abs(mean - 2.5) < 1e-9 and abs(std - 1.118034) < 1e-6
