"""The reward-training objectives on a batch of scored rows: the pairwise, ranking, tier
and sentiment losses over their units, the exposure/length covariate term g(x_A, x_B)
that the Bradley-Terry fit adds to r(A) - r(B) (:class:`CovariateModel`), and the
length-decorrelation penalty.  Scoring the rows is :mod:`.scoring`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ambient_rlhf.rl import reward_losses as L
from ambient_rlhf.train.reward.units import Unit


class CovariateModel(nn.Module):
    """The non-text part of the Bradley-Terry model: ``g(x) = w . (x - mean) / std``,
    ``x`` the (n, k) covariates of ``data.covariates``, standardised with the training
    pairs' mean and std; ``w`` starts at 0 (the text reward alone)."""

    def __init__(self, names: list[str], mean: list[float], std: list[float]):
        super().__init__()
        self.names = list(names)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor([s if s > 1e-8 else 1.0 for s in std], dtype=torch.float32))
        self.w = nn.Parameter(torch.zeros(len(names)))

    @classmethod
    def fit(cls, names: list[str], units: list[Unit], l2: float = 1.0) -> "CovariateModel":
        """Standardise on the training pairs and start ``w`` at the covariates-only
        Bradley-Terry fit (logistic regression without intercept on ``x_chosen -
        x_rejected``, ridge ``l2``, L-BFGS): the covariates then carry what they explain from
        the first step, instead of creeping there at the reward head's learning rate while
        the text reward takes up the exposure effect meanwhile."""
        x = np.array([v for u in units for v in u.cov], dtype=float).reshape(-1, len(names))  # (2P, k)
        m = cls(names, x.mean(0).tolist(), x.std(0).tolist())
        d = torch.tensor((x[0::2] - x[1::2]) / m.std.numpy(), dtype=torch.float32)  # (P, k) standardised
        w = torch.zeros(len(names), requires_grad=True)
        opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.softplus(-(d @ w)).sum() + 0.5 * l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            m.w.copy_(w.detach())
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.w  # (n,)

    def describe(self) -> dict:
        """What goes into ``reward_config.json``: log-odds per standard deviation of each
        covariate, and per raw unit."""
        w, s = self.w.detach().cpu().tolist(), self.std.cpu().tolist()
        return {"features": self.names, "per_std": dict(zip(self.names, w)),
                "per_unit": {n: wi / si for n, wi, si in zip(self.names, w, s)},
                "mean": dict(zip(self.names, self.mean.cpu().tolist())), "std": dict(zip(self.names, s))}


def unit_covariates(units: list[Unit], device) -> torch.Tensor:
    """(2P, k) covariates of pairwise units, ``[chosen_0, rejected_0, chosen_1, ...]``."""
    return torch.tensor([v for u in units for v in u.cov], dtype=torch.float32, device=device)


def length_correlation_penalty(r: torch.Tensor, logwords: torch.Tensor) -> torch.Tensor:
    """``corr(r, logwords)^2`` (Pearson) over a batch's distinct texts; 0 under 3 texts or
    when either is constant.  Shapes: (n,), (n,) -> ()."""
    if r.numel() < 3:
        return r.sum() * 0.0
    rc, lc = r - r.mean(), logwords.to(r.dtype) - logwords.to(r.dtype).mean()
    den = torch.sqrt((rc * rc).sum() * (lc * lc).sum())
    if float(den.detach()) < 1e-12:
        return r.sum() * 0.0
    return ((rc * lc).sum() / den) ** 2


# ---- losses on a batch ----------------------------------------------------------------------
def batch_loss(objective: str, rm, out: torch.Tensor, pos: dict[int, int], units: list[Unit],
               g: torch.Tensor | None = None, logwords: torch.Tensor | None = None, decorrelation: float = 0.0):
    """Loss and accuracy of a batch.  ``out``: (n_rows, n_outputs) head outputs of the
    batch's distinct rows; ``pos``: row -> position in ``out``.

    ``g`` (pairwise): (2P,) covariate terms ``[chosen_0, rejected_0, ...]`` added to each
    side of the Bradley-Terry margin.  ``decorrelation`` > 0 with ``logwords`` ((n_rows,)
    log word counts of the rows): plus ``decorrelation * corr(reward, logwords)^2``."""
    loss, acc = _objective_loss(objective, rm, out, pos, units, g)
    if decorrelation > 0 and logwords is not None:
        loss = loss + decorrelation * length_correlation_penalty(rm.raw_reward(out), logwords)
    return loss, acc


def _objective_loss(objective: str, rm, out: torch.Tensor, pos: dict[int, int], units: list[Unit],
                    g: torch.Tensor | None = None):
    if objective == "pairwise":
        r = rm.raw_reward(out)
        c = torch.tensor([pos[u.rows[0]] for u in units], device=out.device)
        j = torch.tensor([pos[u.rows[1]] for u in units], device=out.device)
        rc, rj = r[c], r[j]
        if g is not None:
            rc, rj = rc + g[0::2], rj + g[1::2]
        w = None
        if any(u.weight != 1.0 for u in units):  # data_weights: an explicit pair can count more
            w = torch.tensor([u.weight for u in units], dtype=rc.dtype, device=out.device)
        return L.pairwise_loss(rc, rj, w), (rc > rj).float().mean()
    if objective == "ranking":
        r = rm.raw_reward(out)
        idx, grp, sc = [], [], []
        for g, u in enumerate(units):
            idx += [pos[x] for x in u.rows]
            grp += [g] * len(u.rows)
            sc += list(u.target)
        idx_t = torch.tensor(idx, device=out.device)
        grp_t = torch.tensor(grp, device=out.device)
        sc_t = torch.tensor(sc, device=out.device)
        return L.ranking_loss(r[idx_t], grp_t, sc_t), L.ranking_accuracy(r[idx_t], grp_t, sc_t)
    i = torch.tensor([pos[u.rows[0]] for u in units], device=out.device)
    if objective == "tiers":
        y = torch.tensor([u.target for u in units], device=out.device)
        logits = out[i]
        return L.tier_loss(logits, y), (logits.argmax(-1) == y).float().mean()
    y = torch.tensor([u.target for u in units], dtype=out.dtype, device=out.device)
    pred = out[i, 0]
    return L.sentiment_loss(pred, y), torch.corrcoef(torch.stack([pred, y]))[0, 1] if len(units) > 1 else torch.tensor(float("nan"))


def fit_linear_bradley_terry(x: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor,
                             cov: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                             l2: float = 1e-3, max_iter: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """The ridge Bradley-Terry fit of a linear text reward on fixed features, to convergence.

    Minimises ``sum_p s_p softplus(-(x_c . w - x_j . w + d_p . v)) / P + l2/2 |w|^2``
    over ``w`` (d,) and ``v`` (k,) with L-BFGS, full batch, in float64: ``x`` (n, d) features
    of the texts, ``chosen``/``rejected`` (P,) row indices into ``x``, ``cov`` (P, k)
    covariate differences chosen - rejected (or None), ``weight`` (P,) pair weights ``s``.
    Only the text weights are penalised: the few covariate weights (exposure, length) take
    what they explain at full strength, instead of leaving it to the many text features.
    Without covariates: L2 logistic regression without intercept on the pair differences
    with ``C = 1 / (l2 P)``.  Returns ``(w, v)`` as float32."""
    X = x.double()
    d, P = X.shape[1], len(chosen)
    k = cov.shape[1] if cov is not None else 0
    D = cov.double() if cov is not None else None
    s = weight.double() if weight is not None else torch.ones(P, dtype=torch.float64)
    beta = torch.zeros(d + k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([beta], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        r = X @ beta[:d]
        m = r[chosen] - r[rejected]
        if D is not None:
            m = m + D @ beta[d:]
        loss = (s * torch.nn.functional.softplus(-m)).sum() / P + 0.5 * l2 * (beta[:d] * beta[:d]).sum()
        loss.backward()
        return loss

    opt.step(closure)
    b = beta.detach()
    return b[:d].float(), b[d:].float()
