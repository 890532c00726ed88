"""Reward shaping: KL penalty per token plus the reward-model score.

lm-human-preferences (Ziegler et al. 2019, ``train_policy.py: compute_rewards``)::

    kl = logprobs - ref_logprobs
    non_score_reward = -kl_coef * kl
    rewards = non_score_reward.copy()
    rewards[:, -1] += scores

Here responses have different lengths, so the score is added at the **last real token**
of each response (the position of its EOS, or the last token when it was cut), as in
"The N Implementation Details of RLHF with PPO" (2024); positions after it are padding
and carry no reward.

The penalty in the reward is always k1 = log p - log q.  A reward is not differentiated:
the policy gradient sees it only through the score function, ``E_p[k grad log p]``.  For
k1 that is the exact gradient of KL(p||q); for k3 it is grad KL(p||q) - grad KL(q||p),
which is not the gradient of a divergence (docs/rl.md has the derivation).  k3 belongs in
the loss (:func:`ambient_rlhf.rl.losses.kl_penalty_loss`).
"""

from __future__ import annotations

from typing import Literal

import torch

from ambient_rlhf.rl.masking import last_token_index

KLEstimator = Literal["k1", "k3"]


def kl_per_token(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy.

    Shapes: logprobs (B, T), ref_logprobs (B, T) -> (B, T).

    * ``k1 = log p - log q``: unbiased, can be negative (the 2019 penalty);
    * ``k3 = (r - 1) - log r`` with ``r = q / p``: unbiased, always >= 0, lower variance
      (Schulman, "Approximating KL divergence", 2020)."""
    log_ratio = logprobs - ref_logprobs  # log p/q
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (q/p - 1) - log(q/p)
    raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")


def apply_missing_eos_score(scores: torch.Tensor, has_eos: torch.Tensor, value: float | None) -> torch.Tensor:
    """Replace the score of responses that produced no EOS by ``value``.

    Shapes: scores (B,), has_eos (B,) bool -> (B,).  ``value=None`` leaves scores as they are.
    lm-human-preferences replaces the score of a response without the truncation token by
    ``penalty_reward_value = -1``; the 2024 N details do the same with EOS."""
    if value is None:
        return scores
    return torch.where(has_eos, scores, torch.full_like(scores, value))


def shaped_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                   mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``r_t = -beta * k1_t``, plus ``score`` at the last real token.

    Shapes: scores (B,), logprobs (B, T), ref_logprobs (B, T), mask (B, T) -> (rewards
    (B, T), non_score_reward (B, T)); both are 0 where ``mask`` is 0.  ``beta = 0`` when the
    KL penalty is a loss term instead (``kl.in_loss``)."""
    m = mask.to(logprobs.dtype)
    non_score = -beta * kl_per_token(logprobs, ref_logprobs, "k1") * m
    rewards = non_score.clone()
    idx = last_token_index(mask)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), idx] += scores.to(rewards.dtype)
    return rewards, non_score


def sequence_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                     mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Whole-sequence reward ``score - beta * sum_t k1_t`` (RLOO, REINFORCE).

    Shapes: scores (B,), logprobs (B, T), ref_logprobs (B, T), mask (B, T) -> (B,).
    Equals the sum over tokens of :func:`shaped_rewards` (Ahmadian et al. 2024 treat the
    whole completion as one action with this reward)."""
    kl = (kl_per_token(logprobs, ref_logprobs, "k1") * mask.to(logprobs.dtype)).sum(1)
    return scores.to(logprobs.dtype) - beta * kl


def reference_normalization(scores: torch.Tensor) -> tuple[float, float]:
    """Gain and bias that give ``scores`` mean 0 and standard deviation 1.

    Shapes: scores (N,) -> (gain, bias): ``gain = 1 / std``, ``bias = -mean / std``, with
    the population standard deviation, as lm-human-preferences (``train_reward.py``,
    ``normalize_after``) fits them on reference-policy samples.  ValueError when the
    scores do not vary (no gain can give them std 1)."""
    x = scores.double().flatten()
    mean = float(x.mean())
    std = float(x.var(unbiased=False).sqrt()) if x.numel() > 1 else 0.0
    if not std > 1e-12 * max(1.0, abs(mean)):
        raise ValueError(f"{x.numel()} reference scores do not vary (mean {mean:.6g}, std {std:.3g})")
    return 1.0 / std, -mean / std


def fold_affine(weight: torch.Tensor, bias: torch.Tensor, scale: float, shift: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head followed by ``y -> scale * y + shift``, as one linear head.

    Shapes: weight (n, d), bias (n,) -> (scale * weight (n, d), scale * bias + shift (n,)).
    Used to start a value head from a reward head on the scale of the scores RL sees."""
    return weight * scale, bias * scale + shift
