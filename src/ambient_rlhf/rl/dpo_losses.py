"""Direct preference optimisation losses: pure torch, no transformers.

Every loss reads four per-pair sequence log-probabilities (summed over the response
tokens): the policy's and the frozen reference's, of the chosen and the rejected answer.
With ``h`` the difference of log-ratios,

    h = [log pi(y_w) - log ref(y_w)] - [log pi(y_l) - log ref(y_l)],

* ``dpo``: ``-log sigmoid(beta * h)`` (Rafailov et al. 2023, eq. 7);
* ``cdpo``: conservative DPO for noisy labels (Mitchell 2023, "A note on DPO with noisy
  preferences"): the label is right with probability ``1 - eps``, so
  ``-(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``;
* ``ipo``: ``(h - 1/(2 beta))^2`` (Azar et al. 2023, eq. 17): a squared loss that pulls
  ``h`` to a finite target instead of pushing it to infinity on deterministic labels;
* ``ln_dpo``: ``dpo`` on log-probs divided by the number of response tokens of each
  answer (the length normalisation of SimPO, Meng et al. 2024, kept with a reference as in
  LN-DPO): a long answer no longer has a larger log-ratio just by having more tokens;
* ``rdpo``: length-regularised DPO (Park et al. 2024, eq. 9):
  ``-log sigmoid(beta h + alpha (|y_w| - |y_l|))``.  It is DPO for the reward
  ``r(y) - alpha |y|``: with ``pi* ~ ref exp((r - alpha|y|) / beta)`` the reward is
  ``beta log pi/ref + alpha |y| + const``, so the length difference enters the sigmoid
  with a plus sign -- a pair won by the longer answer is partly explained by its length
  already, and the policy is pushed less to imitate that length.

The implicit rewards ``beta * (log pi - log ref)`` of each answer (after length
normalisation for ``ln_dpo``) are returned for the metrics (margins, accuracy).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DPO_LOSSES = ("dpo", "cdpo", "ipo", "ln_dpo", "rdpo")


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, kind: str = "dpo", *, label_smoothing: float = 0.0,
             alpha: float = 0.0, len_chosen: torch.Tensor | None = None,
             len_rejected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference loss (module doc) and the implicit rewards.

    Args: policy_chosen, policy_rejected, ref_chosen, ref_rejected: (P,) summed response
    log-probs; beta > 0; kind one of :data:`DPO_LOSSES`; label_smoothing in [0, 0.5) (``cdpo``
    only); alpha (``rdpo`` only); len_chosen, len_rejected: (P,) response token counts
    (``ln_dpo`` and ``rdpo``).
    Returns: (losses (P,), chosen_rewards (P,), rejected_rewards (P,)); the rewards are
    detached."""
    if kind not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss {kind!r}; choose from {list(DPO_LOSSES)}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if label_smoothing and kind != "cdpo":
        raise ValueError(f"label_smoothing applies to kind='cdpo', not {kind!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if alpha and kind != "rdpo":
        raise ValueError(f"alpha applies to kind='rdpo', not {kind!r}")
    if kind in ("ln_dpo", "rdpo") and (len_chosen is None or len_rejected is None):
        raise ValueError(f"kind={kind!r} needs len_chosen and len_rejected")
    chosen_ratio = policy_chosen - ref_chosen  # (P,)
    rejected_ratio = policy_rejected - ref_rejected  # (P,)
    if kind == "ln_dpo":
        chosen_ratio = chosen_ratio / len_chosen.to(chosen_ratio.dtype).clamp(min=1.0)
        rejected_ratio = rejected_ratio / len_rejected.to(rejected_ratio.dtype).clamp(min=1.0)
    h = chosen_ratio - rejected_ratio  # (P,)
    if kind == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:
        logits = beta * h
        if kind == "rdpo":
            logits = logits + alpha * (len_chosen - len_rejected).to(logits.dtype)
        losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return losses, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


def ranking_pair_weights(n_pairs_per_thread: list[int]) -> list[float]:
    """Weights of the ordered pairs of K-way rankings such that every thread weighs the
    same (the InstructGPT normalisation of :func:`ambient_rlhf.rl.reward_losses.ranking_loss`):
    each of a thread's ``P_g`` pairs gets ``1 / P_g``.

    Args: the number of pairs of each thread.  Returns: one weight per pair, thread by
    thread, in the same order."""
    out: list[float] = []
    for n in n_pairs_per_thread:
        if n < 0:
            raise ValueError(f"a thread cannot have {n} pairs")
        out.extend([1.0 / n] * n)
    return out
