"""Advantage estimators: GAE (PPO), leave-one-out (RLOO), baselines (REINFORCE)."""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    Shapes: rewards (B, T), values (B, T), mask (B, T) -> (advantages (B, T), returns (B, T)).

    The 2019 loop (``train_policy.py: PPOTrainer.loss``)::

        for t in reversed(range(T)):
            nextvalues = values[:, t + 1] if t < T - 1 else 0.0
            delta = rewards[:, t] + gamma * nextvalues - values[:, t]
            lastgaelam = delta + gamma * lam * lastgaelam

    Positions where ``mask`` is 0 (after the EOS) are terminal: their value and reward are
    treated as 0, so the episode ends at the last real token.  ``returns = advantages +
    values``.  Both outputs are 0 on masked-out positions."""
    m = mask.to(values.dtype)
    v = values * m
    r = rewards * m
    T = rewards.shape[1]
    lastgaelam = torch.zeros_like(v[:, 0])
    out = []
    for t in reversed(range(T)):
        nextvalues = v[:, t + 1] if t < T - 1 else torch.zeros_like(v[:, 0])
        delta = r[:, t] + gamma * nextvalues - v[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        out.append(lastgaelam)
    adv = torch.stack(out[::-1], dim=1) * m
    return adv, (adv + v) * m


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out advantages (Kool et al. 2019; Ahmadian et al. 2024).

    Shapes: rewards (P * k,) -> (P * k,).  The k samples of a prompt are contiguous
    (rows ``p*k ... p*k + k-1``).  ``A_i = R_i - mean_{j != i} R_j = k/(k-1) (R_i - mean_j R_j)``."""
    if k < 2:
        raise ValueError("RLOO needs k >= 2 samples per prompt")
    if rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards are not a multiple of k={k}")
    r = rewards.view(-1, k)  # (P, k)
    baseline = (r.sum(1, keepdim=True) - r) / (k - 1)
    return (r - baseline).view(-1)


def mean_baseline_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """REINFORCE with the batch mean as baseline.  Shapes: (B,) -> (B,)."""
    return rewards - rewards.mean()


def scale_advantages(advantages: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Divide advantages by their batch standard deviation, without centring them.

    Shapes: (B,) -> (B,).  ``A / sqrt(var(A) + eps)`` with the population variance (about
    the batch mean, as :func:`ambient_rlhf.rl.masking.masked_var`).  For a baseline that
    does not come from the batch (:class:`RunningBaseline`) whitening would subtract the
    batch mean and so replace that baseline by the batch mean; scaling alone keeps it.
    For the batch-mean and leave-one-out baselines the advantages already have mean 0,
    and this equals whitening."""
    var = advantages.var(unbiased=False) if advantages.numel() > 1 else advantages.new_zeros(())
    return advantages * torch.rsqrt(var + eps)


class RunningBaseline:
    """Exponential moving average of the batch mean reward, used as a REINFORCE baseline.

    ``advantages(r)`` returns ``r - b`` with ``b`` the average *before* this batch (so the
    baseline does not depend on the action it scores), then updates
    ``b <- decay * b + (1 - decay) * mean(r)``; the first batch initialises ``b``."""

    def __init__(self, decay: float = 0.9):
        self.decay = float(decay)
        self.value: float | None = None

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Shapes: rewards (B,) -> (B,)."""
        mean = float(rewards.mean())
        b = mean if self.value is None else self.value
        adv = rewards - b
        self.value = mean if self.value is None else self.decay * self.value + (1 - self.decay) * mean
        return adv

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value}

    def load_state_dict(self, s: dict) -> None:
        self.decay, self.value = s["decay"], s["value"]
