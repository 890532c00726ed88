"""Masked statistics over padded token tensors.

``mask`` is 1 (or True) where a position holds a real response token, 0 on padding.
Every function broadcasts ``mask`` to ``x`` and ignores masked-out entries exactly.

Reference: ``lm_human_preferences/utils/core.py`` (``whiten``) and the masked versions in
"The N Implementation Details of RLHF with PPO" (Huang et al., 2024).
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` where ``mask`` is set.

    Shapes: x (B, T), mask (B, T) -> () when ``dim`` is None, else x reduced over ``dim``."""
    m = mask.to(x.dtype)
    return (x * m).sum() if dim is None else (x * m).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the masked-in entries.

    Shapes: x (B, T), mask (B, T) -> () when ``dim`` is None, else reduced over ``dim``.
    A row (or tensor) with no masked-in entries gives 0, not NaN."""
    m = mask.to(x.dtype)
    if dim is None:
        return (x * m).sum() / m.sum().clamp(min=1.0)
    return (x * m).sum(dim) / m.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """Variance of the masked-in entries of ``x`` (one number).

    Shapes: x (B, T), mask (B, T) -> ().
    ``unbiased=False`` is the population variance, as ``tf.nn.moments`` in the 2019 code;
    ``unbiased=True`` applies Bessel's correction n/(n-1) (the 2024 "N details" code)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError("unbiased variance needs at least two masked-in entries")
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, unbiased: bool = False,
                  eps: float = 1e-8) -> torch.Tensor:
    """Normalise ``x`` to unit variance over the masked-in entries.

    Shapes: x (B, T), mask (B, T) -> (B, T); masked-out entries are set to 0.

    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back
    afterwards (only the scale changes) -- exactly ``utils.whiten`` of lm-human-preferences,
    which uses ``shift_mean=False`` for rewards and the default ``True`` for advantages.
    (torchtune's ``whiten`` once defaulted to adding the mean back; here the default
    subtracts it, as the reference does.)"""
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=unbiased)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position whose mask is set, per row.

    Shapes: mask (B, T) of 0/1 or bool -> (B,) long.  Works for left padding, right
    padding or none (a response mask too); a row with no set position gives 0.  Where the
    reward is read: the reward model's head (``models/heads``) and the score in the shaped
    rewards (``rl/rewards``)."""
    T = mask.shape[1]
    pos = torch.arange(T, device=mask.device).unsqueeze(0)  # (1, T)
    return (mask.long() * (pos + 1)).argmax(dim=1)
