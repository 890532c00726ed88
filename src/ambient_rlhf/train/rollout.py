"""Rollouts: sampling with the KV cache, and the forward passes that score them.

Layout of a rollout batch (all tensors on one device)::

    query_response = [ pad pad p p p | r r r EOS pad ]      (B, Tp + R)
                       left-padded     right-padded
                       prompt (Tp)     response (R)

Position ids always come from the attention mask (``cumsum - 1``), so left padding does
not shift positions and a sequence gets the same log-probs alone or in any batch.
The logit at position ``Tp - 1 + t`` predicts response token ``t``; the value of the
state before token ``t`` is read at the same position (N details, 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ambient_rlhf.models.kv import cache_kw, cache_out, continue_cached, distinct_rows, prefix_once
from ambient_rlhf.rl.logprobs import logprobs_from_logits


def position_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) 0/1 -> (B, T) long: 0 at the first real token, counting up; 0 on left padding."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k (0 = off) and nucleus (1.0 = off) filtering; removed entries get -inf.

    Shapes: (B, V) -> (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        remove = remove.scatter(-1, idx, remove)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def draw(probs: torch.Tensor) -> torch.Tensor:
    """One index per row with probability ``probs[i]`` (rows need not be normalised).

    Shapes: (B, V) -> (B,) long.  Inverse-CDF sampling: one uniform per row against the
    float64 cumulative sum; ``right=True`` never lands on a zero-probability entry.  The
    same distribution as ``torch.multinomial(probs, 1)``, several times cheaper over a 49k
    vocabulary on CPU (one random number per row instead of per entry)."""
    cdf = probs.double().cumsum(-1)  # (B, V)
    u = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=probs.shape[-1] - 1)


@dataclass
class Samples:
    response: torch.Tensor
    """(B, R) sampled ids, ``pad_id`` after the EOS"""
    mask: torch.Tensor
    """(B, R) 1 on response tokens up to and including the EOS"""
    has_eos: torch.Tensor
    """(B,) bool: the response ended with EOS within the budget"""


@torch.no_grad()
def sample(lm: nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int,
           temperature: float, eos_id: int, pad_id: int, top_k: int = 0, top_p: float = 1.0,
           share_prompts: bool = True) -> Samples:
    """Sample responses with the KV cache; truncate after the first EOS.

    Shapes: prompt_ids, prompt_mask (B, Tp), left-padded -> :class:`Samples` with R <=
    ``max_new_tokens`` (stops early when every row has produced EOS).  Uses the global
    torch RNG (checkpointed, so a resumed run samples the same tokens).

    ``share_prompts``: a prompt that appears in several rows (RLOO's k samples) is run
    through the model once and its keys/values copied to each of its rows before decoding
    (each row's computation is the same; tests check the samples are the same tokens)."""
    B = prompt_ids.shape[0]
    mask = prompt_mask.long()
    pos = position_ids_from_mask(mask)
    shared = distinct_rows(prompt_ids, mask) if share_prompts else None
    if shared is None:
        out = lm(input_ids=prompt_ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = cache_out(out)
        logits = out.logits[:, -1].float()  # (B, V)
    else:
        first, inverse = shared
        out, cache = prefix_once(lm, prompt_ids[first], mask[first], pos[first], inverse, logits_to_keep=1)
        logits = out.logits[inverse, -1].float()  # (B, V)
    next_pos = pos[:, -1:] + 1  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=prompt_ids.device)
    toks, live = [], []
    for t in range(max_new_tokens):
        probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        tok = draw(probs)  # (B,)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        live.append(~done)
        toks.append(tok)
        done = done | (tok == eos_id)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = lm(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, **cache_kw(lm, cache),
                 use_cache=True)
        cache = cache_out(out)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    response = torch.stack(toks, 1)  # (B, R)
    rmask = torch.stack(live, 1).long()  # (B, R)
    has_eos = ((response == eos_id) & rmask.bool()).any(1)
    return Samples(response, rmask, has_eos)


class PolicyWithValue(nn.Module):
    """The policy LM, and optionally a value head on its last hidden state.

    ``forward`` returns the response-token logits (and values) of a rollout batch; it is
    a module so that ``accelerator.prepare`` can put DDP around the whole computation.
    The LM head runs only on response positions (the prompt's logits are never needed)."""

    def __init__(self, lm: nn.Module, value_head: bool = False):
        super().__init__()
        self.lm = lm
        self.value_head = None
        self.share_prompts = False  # see response_states
        if value_head:
            # zero init: V = 0 until trained (a random head adds noise to every advantage)
            self.value_head = nn.Linear(lm.config.hidden_size, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, query_response: torch.Tensor, mask: torch.Tensor, n_prompt: int,
                adapter: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, Tp + R) ids and mask -> logits (B, R, V) for the response tokens, values (B, R) or None."""
        return response_logits(self.lm, query_response, mask, n_prompt, self.value_head, self.share_prompts)


def response_states(lm: nn.Module, query_response: torch.Tensor, mask: torch.Tensor, n_prompt: int,
                    share_prompts: bool = False) -> torch.Tensor:
    """The last hidden states that predict each response token: (B, Tp + R) -> (B, R, d).

    ``share_prompts``: rows whose prompt (ids and mask) repeats an earlier row's -- RLOO's
    k samples of a prompt -- run the prompt through the body once; its keys/values are
    copied to each of its rows, and only the response tokens are computed per row.  The
    same function of the weights (gradients included: they flow into the one prompt
    computation from all its rows); only the float rounding of differently shaped matrix
    products differs (tests/train/test_rl_speed.py)."""
    decoder = lm.get_decoder()
    shared = distinct_rows(query_response[:, :n_prompt], mask[:, :n_prompt]) if share_prompts else None
    pos = position_ids_from_mask(mask)
    if shared is None:
        out = decoder(input_ids=query_response, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, n_prompt - 1:-1]  # (B, R, d)
    first, inverse = shared
    pre, cache = prefix_once(decoder, query_response[first, :n_prompt], mask[first, :n_prompt],
                             pos[first, :n_prompt], inverse)
    last = pre.last_hidden_state[inverse, -1:]  # (B, 1, d): predicts response token 0
    if query_response.shape[1] == n_prompt + 1:  # one response token: nothing runs on top
        return last
    out = continue_cached(decoder, cache, query_response[:, n_prompt:-1], mask[:, :-1], pos[:, n_prompt:-1])
    return torch.cat([last, out.last_hidden_state], 1)  # (B, R, d)


def response_logits(lm: nn.Module, query_response: torch.Tensor, mask: torch.Tensor, n_prompt: int,
                    value_head: nn.Module | None = None,
                    share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits predicting each response token (and values), from one forward of ``lm``.

    Shapes: query_response, mask (B, Tp + R); n_prompt = Tp -> (B, R, V), (B, R) or None.
    ``share_prompts``: see :func:`response_states`."""
    h = response_states(lm, query_response, mask, n_prompt, share_prompts)
    logits = lm.get_output_embeddings()(h)
    values = value_head(h).squeeze(-1).float() if value_head is not None else None
    return logits, values


def response_logprobs(lm: nn.Module, query_response: torch.Tensor, mask: torch.Tensor, n_prompt: int,
                      temperature: float) -> torch.Tensor:
    """Log-probs of the response tokens at the sampling temperature: (B, Tp + R) -> (B, R)."""
    logits, _ = response_logits(lm, query_response, mask, n_prompt)
    return logprobs_from_logits(logits, query_response[:, n_prompt:], temperature)


class ValueModel(nn.Module):
    """A separate value model: a causal LM body + scalar head (``ScalarHeadModel``), read at
    every response position.  Initialised from the reward model by default (Stiennon et
    al. 2020; N details, 2024)."""

    def __init__(self, scalar_head_model: nn.Module):
        super().__init__()
        if scalar_head_model.head.out_features != 1:
            raise ValueError(f"a value model needs a one-output head, not {scalar_head_model.head.out_features}")
        self.model = scalar_head_model

    def forward(self, query_response: torch.Tensor, mask: torch.Tensor, n_prompt: int) -> torch.Tensor:
        """(B, Tp + R) -> (B, R) values of the states before each response token."""
        from ambient_rlhf.models.bodies import body_of

        body = body_of(self.model.lm)
        out = body(input_ids=query_response, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False)
        h = out.last_hidden_state[:, n_prompt - 1:-1]
        return self.model.head(h.to(self.model.head.weight.dtype)).squeeze(-1).float()

