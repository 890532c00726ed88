"""Reward-model losses: pure torch, no transformers.

Each loss takes the head outputs of the sequences in a batch (every sequence scored once)
plus indices/labels, and returns a scalar loss.  Shapes are in the docstrings.

* :func:`pairwise_loss`: Bradley-Terry, ``-log sigmoid(r_chosen - r_rejected)``
  (Christiano et al. 2017; Stiennon et al. 2020, eq. 1).
* :func:`ranking_loss`: the InstructGPT K-way loss (Ouyang et al. 2022, eq. 1): all K
  responses of a prompt scored once, the BT loss over all ``C(K, 2)`` ordered pairs,
  divided by the number of pairs of that prompt, so that every prompt weighs the same
  however many responses it has ("large threads do not dominate").
* :func:`tier_loss`: cross-entropy over (good, ok, bad).
* :func:`sentiment_loss`: mean squared error to the reply sentiment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry loss, mean over pairs.

    Args: r_chosen, r_rejected: (P,) rewards of the preferred and the other response;
    weight: optional (P,) weight of each pair's term.
    Returns: () ``mean(-log sigmoid(r_chosen - r_rejected))``, each term times its weight
    when given (still divided by P, so weights of 1 give the plain loss)."""
    nll = -F.logsigmoid(r_chosen - r_rejected)
    return (nll if weight is None else nll * weight).mean()


def ranking_pairs(group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Which ordered pairs a K-way ranking contains.

    Args: group (N,) long thread index of each sequence; score (N,) quality (higher is
    better; the adjusted rank value).  Returns: (N, N) bool, ``[i, j]`` true when i and j
    are in the same thread and i is strictly better (ties give no pair)."""
    same = group.unsqueeze(1) == group.unsqueeze(0)  # (N, N)
    better = score.unsqueeze(1) > score.unsqueeze(0)  # (N, N)
    return same & better


def ranking_loss(rewards: torch.Tensor, group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """InstructGPT K-way ranking loss.

    ``loss = 1/G * sum_g 1/P_g * sum_{(i > j) in g} -log sigmoid(r_i - r_j)`` where ``P_g``
    is the number of ordered pairs in thread g and G the number of threads that have at
    least one pair.

    Args: rewards (N,); group (N,) long thread index; score (N,) quality, higher is better.
    Returns: () loss (0 with no pair, still attached to the graph)."""
    pairs = ranking_pairs(group, score)  # (N, N)
    if not bool(pairs.any()):
        return rewards.sum() * 0.0
    diff = rewards.unsqueeze(1) - rewards.unsqueeze(0)  # (N, N) r_i - r_j
    nll = -F.logsigmoid(diff)  # (N, N)
    # P_g for the thread of row i: pairs in that thread = sum over rows of the same thread
    per_row = pairs.sum(1).to(rewards.dtype)  # (N,) pairs where row i is the better one
    n_groups = int(group.max().item()) + 1
    pairs_per_group = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, group, per_row)
    weight = 1.0 / pairs_per_group[group].clamp(min=1.0)  # (N,) 1/P_g of row i's thread
    n_live = (pairs_per_group > 0).sum().to(rewards.dtype)
    return (nll * pairs.to(rewards.dtype) * weight.unsqueeze(1)).sum() / n_live


def ranking_accuracy(rewards: torch.Tensor, group: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Fraction of the ranking's ordered pairs that the rewards order correctly (unweighted)."""
    pairs = ranking_pairs(group, score)
    if not bool(pairs.any()):
        return torch.tensor(float("nan"))
    diff = rewards.unsqueeze(1) - rewards.unsqueeze(0)
    return (diff[pairs] > 0).float().mean()


def tier_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over tiers.  Args: logits (N, C); labels (N,) long in [0, C)."""
    return F.cross_entropy(logits, labels)


def sentiment_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error.  Args: pred, target (N,)."""
    return F.mse_loss(pred, target.to(pred.dtype))


def fit_normalization(rewards: torch.Tensor) -> tuple[float, float]:
    """Constants (mean, std) that map ``rewards`` to mean 0 and (population) std 1."""
    r = rewards.double()
    return float(r.mean()), float(r.std(unbiased=False)) if r.numel() > 1 else 1.0
