"""The reward of a rollout: a reward-model directory (rendered by ``models.reward_inputs``),
``token-count:<ids>`` or ``python:<module>:<fn>``."""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger
from ambient_rlhf.train.rl.config import RLConfig

log = get_logger("rl")


class Scorer:
    """Scores (B,) for a batch of rollouts; see ``RLConfig.reward`` for the kinds."""

    name = "reward"

    def __call__(self, prompt_idx: list[int], response: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TokenCountScorer(Scorer):
    """``token-count:<ids>``: how many response tokens are in a set of ids.

    ``<ids>`` is a comma-separated list of ids and inclusive ranges: ``13``, ``13,198``,
    ``0-4095``.  A test reward with a known optimum (a random tiny model spreads its
    probability over the whole vocabulary, so a range gives a usable signal)."""

    def __init__(self, ids: list[int], spec: str):
        self.ids = torch.tensor(sorted(set(ids)), dtype=torch.long)
        self.name = spec

    def __call__(self, prompt_idx, response, mask):
        return (torch.isin(response, self.ids) & mask.bool()).sum(1).float()


def parse_token_ids(text: str, vocab_size: int) -> list[int]:
    """``"1,5-7"`` -> ``[1, 5, 6, 7]`` (ValueError on bad syntax or ids outside the vocabulary)."""
    ids: list[int] = []
    for part in text.split(","):
        a, _, b = part.strip().partition("-")
        lo, hi = int(a), int(b) if b else int(a)
        if not 0 <= lo <= hi < vocab_size:
            raise ValueError(f"{part!r} is outside 0..{vocab_size - 1}")
        ids.extend(range(lo, hi + 1))
    return ids


class PythonScorer(Scorer):
    """``python:<module>:<function>``: ``function(prompts, responses) -> list[float]`` on text."""

    def __init__(self, spec: str, fn: Callable, prompts: list[str], tokenizer):
        self.fn, self.prompts, self.tok, self.name = fn, prompts, tokenizer, spec

    def __call__(self, prompt_idx, response, mask):
        texts = [self.tok.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(response, mask)]
        out = self.fn([self.prompts[i] for i in prompt_idx], texts)
        return torch.tensor([float(x) for x in out], dtype=torch.float32)


class RewardModelScorer(Scorer):
    """A reward model scoring the policy's response tokens after the prompt as the reward
    model renders it (``models.reward_inputs``: its own template, community prefix and
    token budgets -- the text it was trained on, not the policy's prompt).

    ``decode_with``: the policy's tokenizer, when the reward model reads another vocabulary
    (a Gemma reward model for a SmolLM2 policy): the samples are decoded to text (special
    tokens dropped) and the reward model tokenises them itself; a sample ended when its last
    id is the policy's EOS."""

    def __init__(self, rm, prompts: list[str], community: str | None, device, drop_ids: list[int] = (),
                 decode_with=None):
        from ambient_rlhf.models.reward_inputs import RewardFunction

        self.fn = RewardFunction(rm, device=device, batch_size=64, drop_ids=drop_ids)
        self.prompts, self.community, self.decode_with = prompts, community, decode_with
        self.name = "reward-model"

    @torch.no_grad()
    def __call__(self, prompt_idx, response, mask):
        resp = [r[m.bool()].tolist() for r, m in zip(response, mask)]  # (B,) real tokens, EOS last if it ended
        prompts, communities = [self.prompts[i] for i in prompt_idx], [self.community] * len(resp)
        if self.decode_with is None:
            return self.fn.tokens(prompts, resp, communities)
        eos = self.decode_with.eos_token_id
        texts = [self.decode_with.decode(r, skip_special_tokens=True) for r in resp]
        return self.fn.texts(prompts, texts, communities, [bool(r) and r[-1] == eos for r in resp])


def policy_only_ids(rm_tok, policy_tok) -> list[int] | None:
    """Token ids the policy has and the reward model lacks, or None when the reward model
    cannot read the policy's ids at all.

    The two must share a tokenizer: every (token, id) of the reward model's vocabulary is
    in the policy's, with the same EOS.  The policy may have more tokens -- the goal tokens
    a tier-conditioned SFT adds -- which the reward model never saw; they are dropped from
    the sequences it scores."""
    rv, pv = rm_tok.get_vocab(), policy_tok.get_vocab()
    if rm_tok.eos_token_id != policy_tok.eos_token_id or any(pv.get(t) != i for t, i in rv.items()):
        return None
    known = set(rv.values())
    return sorted(i for i in pv.values() if i not in known)


def make_scorer(cfg: RLConfig, tokenizer, prompts: list[str], device):
    """Return (scorer, reward model or None) for ``cfg.reward``."""
    spec = cfg.reward
    if not spec:
        raise AmbientError("reward: required (a reward-model directory, token-count:<ids> or python:<module>:<fn>)")
    if spec.startswith("token-count:"):
        try:
            ids = parse_token_ids(spec.split(":", 1)[1], len(tokenizer))
        except ValueError as e:
            raise AmbientError(f"reward={spec!r}: expected token-count:<id>[,<id>|<lo>-<hi>...] ({e})") from None
        return TokenCountScorer(ids, spec), None
    if spec.startswith("python:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise AmbientError(f"reward={spec!r}: expected python:<module>:<function>")
        try:
            fn = getattr(importlib.import_module(parts[1]), parts[2])
        except (ImportError, AttributeError) as e:
            raise AmbientError(f"reward={spec!r}: cannot import ({e})") from None
        return PythonScorer(spec, fn, prompts, tokenizer), None
    from ambient_rlhf.data.tables import community_name
    from ambient_rlhf.models.heads import is_reward_dir
    from ambient_rlhf.models.reward_model import load_reward_model

    if not is_reward_dir(spec):
        raise AmbientError(f"reward={spec!r}: not a reward-model directory (train one with `ambient rm`), "
                           "nor token-count:<ids> / python:<module>:<fn>")
    rm = load_reward_model(spec)
    drop = policy_only_ids(rm.tokenizer, tokenizer)
    if drop is None:
        log.warning("reward=%s reads another tokenizer than the policy (%s): the policy's samples are decoded to "
                    "text and re-tokenised for it", spec, cfg.policy)
    for p in rm.parameters():
        p.requires_grad_(False)
    rm.to(device)
    return RewardModelScorer(rm, prompts, community_name(cfg.data), device, drop or (),
                             decode_with=tokenizer if drop is None else None), rm


