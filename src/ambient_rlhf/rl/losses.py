"""PPO clipped objectives (policy and value) and a sequence-level policy gradient.

Reference: ``lm_human_preferences/train_policy.py: PPOTrainer.loss`` (Ziegler et al.
2019), cleanrl ``ppo.py``; token losses are masked means over the minibatch's real
response tokens, as in "The N Implementation Details of RLHF with PPO" (2024).
"""

from __future__ import annotations

import torch

from ambient_rlhf.rl.masking import masked_mean, masked_var
from ambient_rlhf.rl.rewards import kl_per_token


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate ``mean(max(-A * ratio, -A * clip(ratio, 1-eps, 1+eps)))``.

    Shapes: logprobs, old_logprobs, advantages, mask: (B, T) -> (loss (), stats of () tensors:
    ``clipfrac``, ``approxkl`` = 0.5 * mean((logp - old)^2), ``ratio_mean``, ``ratio_max``)."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(pg1, pg2), mask)
    with torch.no_grad():
        m = mask.bool()
        stats = {
            "clipfrac": masked_mean((pg2 > pg1).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio ** 2, mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": ratio[m].max() if m.any() else ratio.new_tensor(1.0),
        }
    return loss, stats


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss ``0.5 * mean(max((v - R)^2, (clip(v, v_old +- eps) - R)^2))``.

    Shapes: values, old_values, returns, mask: (B, T) -> (loss (), clipfrac ())."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    l1 = (values - returns) ** 2
    l2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((l2 > l1).float(), mask)
    return loss, clipfrac


def sequence_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Policy gradient with one advantage per completion (RLOO, REINFORCE).

    Shapes: logprobs, old_logprobs, mask: (B, T); advantages (B,) -> (loss (), stats as
    :func:`ppo_policy_loss`).  The ratio is of whole-sequence probabilities,
    ``exp(sum_t (logp_t - old_t))``, clipped like PPO (TRL's 2024 ``RLOOTrainer``).  On the
    first minibatch of fresh samples ratio == 1 and the gradient is exactly REINFORCE's
    ``-A * grad sum_t log p_t`` (Williams 1992; Ahmadian et al. 2024)."""
    m = mask.to(logprobs.dtype)
    seq_logp = (logprobs * m).sum(1)
    seq_old = (old_logprobs * m).sum(1)
    log_ratio = seq_logp - seq_old
    ratio = torch.exp(log_ratio)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = torch.maximum(pg1, pg2).mean()
    with torch.no_grad():
        stats = {
            "clipfrac": (pg2 > pg1).float().mean(),
            "approxkl": 0.5 * (log_ratio ** 2).mean(),
            "ratio_mean": ratio.mean(),
            "ratio_max": ratio.max(),
        }
    return loss, stats


def kl_penalty_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                    per_sequence: bool = False) -> torch.Tensor:
    """The k3 estimate of KL(policy || reference) as a loss term, differentiated through
    ``logprobs`` (GRPO, Shao et al. 2024; the trainer multiplies it by beta).

    Shapes: logprobs (B, T) with grad, ref_logprobs (B, T), mask (B, T) -> ().
    ``k3 = q/p - 1 - log(q/p)`` per token, ``d k3 / d log p = 1 - q/p``.  Aggregated like
    the policy loss it is added to: a masked mean over tokens (PPO), or per sequence the
    sum over its tokens, averaged over sequences (``per_sequence``: RLOO, REINFORCE, whose
    penalty in the reward is a per-sequence sum too).  Masked positions count 0 and get no
    gradient.  On samples of the policy its expected gradient is that of KL(q||p)
    (docs/rl.md): a divergence to the reference, so it pulls the policy back."""
    m = mask.to(logprobs.dtype)
    k3 = kl_per_token(logprobs * m, ref_logprobs * m, "k3") * m  # log ratio 0 on padding: k3 = 0
    if per_sequence:
        return k3.sum(1).mean()
    return masked_mean(k3, mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` over real tokens.  Shapes: (B, T) x3 -> ()."""
    var_r = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_r.clamp(min=1e-8)
