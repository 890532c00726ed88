"""How far the output distribution moves when only the goal token changes.

The seed's question about goals in autoregressive models: fix the weights, change the
input, and see what happens to the next-token distribution.  For one tier-conditioned
model and two goals ``a`` and ``b`` (``good`` and ``bad``; ``None`` is the plain prompt),
on the answers each goal actually produced:

* the **exact per-token KL** ``KL(p_a(. | x, y_<t) || p_b(. | x, y_<t))``, summed over the
  whole vocabulary at every response position ``t`` of the goal-``a`` answers (and the
  reverse KL on the goal-``b`` answers).  Summed over an answer it is the sequence KL
  whose single-sample (k1) estimate ``ambient eval`` reports as ``kl``; this is its
  Rao-Blackwellised form (Schulman 2020, "Approximating KL divergence"), with far less
  variance, and it can be broken down by position;
* per vocabulary token, the mean probability under each goal over all those positions,
  and the tokens whose probability rises and falls most (``p_a - p_b``): what the goal
  token makes the model say more and less.

Probabilities are taken at the sampling temperature, as the eval's KL is.  Called by
:func:`ambient_rlhf.eval.policy_eval.evaluate_policy` when both sides are the same model
with different goals (the steering test); the result is eval.json's ``token_shift``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ambient_rlhf import stats


def position_kl(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """Exact KL(p_a || p_b) at every position, summed over the vocabulary.

    Args: ``logp_a``, ``logp_b``: (..., V) log-probabilities (normalised).
    Returns: (...) ``sum_v p_a(v) * (log p_a(v) - log p_b(v))``, >= 0."""
    return (logp_a.exp() * (logp_a - logp_b)).sum(-1)


def _shift_pass(model, tok, template: str, prompts: Sequence[str], responses: Sequence[str],
                goal_p: str | None, goal_q: str | None, cfg: Any) -> dict[str, Any]:
    """Exact KL(p || q) per response token of ``responses`` (sampled with goal ``goal_p``),
    and the vocabulary sums of p, q over those positions.

    Sequences are left-padded with explicit position ids, and logits are kept only for
    the last ``L + 1`` positions (L = longest response), as in
    :func:`ambient_rlhf.eval.policy_eval.response_logprobs`."""
    from ambient_rlhf.models.soft_prompt import select_goal
    from ambient_rlhf.models.tokenize import encode_pair, pad_batch

    device = next(model.parameters()).device
    N, pad = len(prompts), tok.pad_token_id
    per_answer = np.zeros(N)
    n_tok = np.zeros(N, dtype=int)
    first = np.full(N, np.nan)
    pos_sum = np.zeros(cfg.max_new_tokens + 1)
    pos_n = np.zeros(cfg.max_new_tokens + 1, dtype=int)
    p_sum: torch.Tensor | None = None
    q_sum: torch.Tensor | None = None
    for start in range(0, N, cfg.batch_size):
        sl = slice(start, min(start + cfg.batch_size, N))
        logps, n_resp = [], []
        for g in (goal_p, goal_q):
            # a soft-prompt model: the goal selects its prompt and the text has no goal token
            enc = [encode_pair(tok, p, r, cfg.max_prompt_tokens, cfg.max_new_tokens, template, select_goal(model, g))
                   for p, r in zip(prompts[sl], responses[sl])]
            n_resp = n_resp or [len(e.input_ids) - e.prompt_len for e in enc]
            L = max(max(n_resp), 1)
            ids, mask = pad_batch([e.input_ids for e in enc], pad, "left")
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            kw = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                      use_cache=False)
            with torch.no_grad():
                try:
                    logits = model(**kw, logits_to_keep=L + 1).logits
                except TypeError:  # an architecture without logits_to_keep
                    logits = model(**kw).logits
            # (B, L, V): the predictions of the last L tokens (the responses end every row)
            logps.append(torch.log_softmax(logits[:, -(L + 1):-1].float() / cfg.temperature, -1))
        lp, lq = logps
        # window index k holds response token k - (L - n_i) of row i; earlier ones are prompt/padding
        idx = torch.arange(L)[None, :] - (L - torch.tensor(n_resp))[:, None]  # (B, L)
        m = (idx >= 0).to(device)
        kl = position_kl(lp, lq) * m  # (B, L)
        mf = m.unsqueeze(-1).float()
        ps, qs = (lp.exp() * mf).sum((0, 1)), (lq.exp() * mf).sum((0, 1))  # (V,)
        p_sum = ps if p_sum is None else p_sum + ps
        q_sum = qs if q_sum is None else q_sum + qs
        kl_np, idx_np = kl.cpu().double().numpy(), idx.numpy()
        per_answer[sl] = kl_np.sum(-1)
        n_tok[sl] = n_resp
        for i in range(kl_np.shape[0]):
            j = idx_np[i] >= 0
            np.add.at(pos_sum, idx_np[i][j], kl_np[i][j])
            np.add.at(pos_n, idx_np[i][j], 1)
            if n_resp[i]:
                first[start + i] = kl_np[i][L - n_resp[i]]
    return {"per_answer": per_answer, "n_tok": n_tok, "first": first, "pos_sum": pos_sum, "pos_n": pos_n,
            "p_sum": p_sum, "q_sum": q_sum}


def token_shift(model, tok, template: str, prompts: Sequence[str], groups: Sequence[str],
                text_a: Sequence[str], text_b: Sequence[str], goal_a: str | None, goal_b: str | None,
                cfg: Any) -> dict[str, Any]:
    """eval.json's ``token_shift``: the distribution shift between goals ``a`` and ``b`` of
    one model, on the answers sampled under each (``text_a``, ``text_b``; one per prompt).

    ``groups``: the thread of each prompt (intervals resample threads).  ``cfg`` supplies
    ``temperature``, ``batch_size``, ``max_prompt_tokens``, ``max_new_tokens``,
    ``bootstrap_resamples``, ``seed`` and ``token_shift_top``."""
    fwd = _shift_pass(model, tok, template, prompts, text_a, goal_a, goal_b, cfg)
    rev = _shift_pass(model, tok, template, prompts, text_b, goal_b, goal_a, cfg)
    B, seed = cfg.bootstrap_resamples, cfg.seed

    def side(r: dict[str, Any], on: str) -> dict[str, Any]:
        n = max(int(r["n_tok"].sum()), 1)
        first = r["first"][~np.isnan(r["first"])]
        return {"on": on, "sequence": stats.describe(r["per_answer"], B, seed, groups),
                "per_token": float(r["per_answer"].sum() / n),
                "first_token": float(first.mean()) if first.size else float("nan"), "tokens": int(r["n_tok"].sum())}

    # probability of every vocabulary token averaged over all response positions of both
    # answer sets; p = goal a, q = goal b (in the reverse pass p was goal b)
    n_pos = max(int(fwd["n_tok"].sum() + rev["n_tok"].sum()), 1)
    pa = ((fwd["p_sum"] + rev["q_sum"]) / n_pos).cpu().double().numpy()
    pb = ((fwd["q_sum"] + rev["p_sum"]) / n_pos).cpu().double().numpy()
    diff = pa - pb
    k = cfg.token_shift_top
    # goal tokens are conditioned on, never sampled (generate suppresses them): not listed
    from ambient_rlhf.models.tokenize import goal_token_ids

    listed = np.ones(len(diff), dtype=bool)
    listed[[i for i in goal_token_ids(tok) if i < len(diff)]] = False
    order = [int(i) for i in np.argsort(diff, kind="stable") if listed[i]]

    def entry(i: int) -> dict[str, Any]:
        return {"id": int(i), "token": tok.decode([int(i)]), "p_goal": float(pa[i]), "p_reference_goal": float(pb[i]),
                "difference": float(diff[i])}

    keep = int(max(fwd["pos_n"].nonzero()[0].max(initial=-1), rev["pos_n"].nonzero()[0].max(initial=-1))) + 1
    by_pos = {
        "kl": [float(s / c) if c else None for s, c in zip(fwd["pos_sum"][:keep], fwd["pos_n"][:keep])],
        "reverse_kl": [float(s / c) if c else None for s, c in zip(rev["pos_sum"][:keep], rev["pos_n"][:keep])],
        "n": fwd["pos_n"][:keep].tolist(), "n_reverse": rev["pos_n"][:keep].tolist(),
    }
    return {
        "goal": goal_a, "reference_goal": goal_b, "temperature": cfg.temperature,
        "kl": side(fwd, f"answers sampled with goal {goal_a}: KL(p_{goal_a} || p_{goal_b})"),
        "reverse_kl": side(rev, f"answers sampled with goal {goal_b}: KL(p_{goal_b} || p_{goal_a})"),
        "by_position": by_pos,
        "tv_of_mean": float(0.5 * np.abs(diff[listed]).sum()),  # total variation between the position-averaged distributions
        "gained": [entry(i) for i in order[::-1][:k] if diff[i] > 0],
        "lost": [entry(i) for i in order[:k] if diff[i] < 0],
        "positions": n_pos,
    }
