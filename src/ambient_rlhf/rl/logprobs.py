"""Per-token log-probabilities and entropies from logits.

The logits are divided by the sampling temperature before the softmax, in rollout and
in training alike, so that the log-probs are those of the distribution the tokens were
sampled from ("The N Implementation Details of RLHF with PPO", 2024, detail on
temperature; lm-human-preferences ``policy.py`` divides by ``temperature`` too).
"""

from __future__ import annotations

import torch


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token) under ``softmax(logits / temperature)``.

    Shapes: logits (B, T, V), tokens (B, T) long -> (B, T) float32.
    The log-softmax is computed in float32 whatever the logits' dtype."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lf = logits.float() / temperature
    # gather then subtract logsumexp: avoids materialising a (B, T, V) log-softmax
    picked = torch.gather(lf, -1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(lf, dim=-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of ``softmax(logits / temperature)`` at each position.

    Shapes: logits (B, T, V) -> (B, T)."""
    lf = logits.float() / temperature
    logp = torch.log_softmax(lf, dim=-1)
    return -(logp.exp() * logp).sum(-1)
