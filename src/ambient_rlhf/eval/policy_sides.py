"""The two sides of ``ambient eval`` (:mod:`ambient_rlhf.eval.policy_eval`): a loaded model
with its tokenizer, template and goal; its samples; the length, stop flag and summed
log-probs of any answers under it (the KL's two terms)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ambient_rlhf.logging import get_logger

log = get_logger(__name__)

EvalConfig = Any  # ambient_rlhf.eval.policy_eval.EvalConfig (not imported: that module imports this one)


# ---- step 2 helpers: models ----------------------------------------------------------------
@dataclass
class Side:
    """A loaded causal LM with the tokenizer (left padding) and prompt template it was
    trained with, and the goal token it is prompted with."""

    model: Any
    tok: Any
    template: str
    goal: str | None


def _load_side(path: str, cfg: EvalConfig, goal: str | None, device) -> Side:
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.train.generate import model_info

    model = load_causal_lm(path, device=device)
    model.eval()
    template = cfg.template
    if template == "auto" and Path(path).is_dir():
        # the template recorded at training time, as train.generate resolves it
        template = model_info(path).get("template", "auto")
    return Side(model, load_tokenizer(path, padding_side="left"), template, goal)


def _sample(side: Side, prompts: list[str], cfg: EvalConfig, path: str | None = None) -> list[str]:
    """The side's answers to ``prompts``; with ``cfg.sample_cache`` and the model's ``path``,
    read back when the same model, goal, prompts and sampling settings were sampled before
    (each side samples from ``cfg.seed`` alone, so that is the same text)."""
    from ambient_rlhf.train.generate import generate

    file = None
    if getattr(cfg, "sample_cache", None) and path is not None:
        file = Path(cfg.sample_cache) / f"{sample_key(path, side, prompts, cfg)}.json"
        if file.is_file():
            got = _read_cached(file, prompts)
            if got is not None:
                log.info("%s: %d answers read back from the sample cache (%s)", path, len(got), file.name)
                return got
    texts = generate((side.model, side.tok), prompts, goal=side.goal, max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed, template=side.template,
                     max_prompt_tokens=cfg.max_prompt_tokens)
    if file is not None:
        from ambient_rlhf.io import write_json

        write_json(file, {"model": str(path), "goal": side.goal, "prompts": prompts, "answers": texts})
    return texts


def model_identity(path: str) -> str:
    """A model name as it is; a model directory as the names, sizes and modification times
    of its files (a stage that rewrites its weights changes it; hashing 500 MB would not
    pay for the seconds a hit saves)."""
    p = Path(path)
    if not p.is_dir():
        return str(path)
    parts = [str(p.resolve())]
    for f in sorted(p.iterdir()):
        if f.is_file():
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def sample_key(path: str, side: Side, prompts: list[str], cfg: EvalConfig) -> str:
    """sha256 of everything the sampled text depends on."""
    import hashlib
    import json

    what = {"model": model_identity(path), "goal": side.goal, "template": side.template, "prompts": prompts,
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "batch_size": cfg.batch_size,
            "seed": cfg.seed, "max_prompt_tokens": cfg.max_prompt_tokens}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def _read_cached(file: Path, prompts: list[str]) -> list[str] | None:
    import json

    try:
        got = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable sample cache entry (%s); sampling again", file, e)
        return None
    if got.get("prompts") != prompts or len(got.get("answers", [])) != len(prompts):
        log.warning("%s: sample cache entry does not match its key; sampling again", file)
        return None
    return list(got["answers"])


def _encode(tok, prompt: str, response: str, cfg: EvalConfig, template: str, goal: str | None):
    """The token sequence a model saw: prompt (+goal) + response (+EOS when the answer
    stopped before ``max_new_tokens``; an answer that hit the limit has no EOS).

    ``generate`` returns text, so the response is re-tokenised; for the rare text whose
    re-tokenisation differs from the sampled ids, the log-probs (and the KL) are those of
    the re-tokenised sequence, the same sequence under both models."""
    from ambient_rlhf.models.tokenize import encode_pair

    return encode_pair(tok, prompt, response, cfg.max_prompt_tokens, cfg.max_new_tokens, template, goal)


def _text_goal(side: Side) -> str | None:
    """The goal token to write into ``side``'s prompts; a soft-prompt model selects its
    goal's prompt instead (and gets no token)."""
    from ambient_rlhf.models.soft_prompt import select_goal

    return select_goal(side.model, side.goal)


def response_lengths(side: Side, prompts: list[str], responses: list[str], cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Response length in tokens (EOS not counted) and whether each answer stopped (ended
    with EOS before ``max_new_tokens``).  (N,), (N,)."""
    n, stopped = np.zeros(len(prompts), dtype=int), np.zeros(len(prompts), dtype=bool)
    goal = _text_goal(side)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        e = _encode(side.tok, p, r, cfg, side.template, goal)
        stopped[i] = not e.response_truncated
        n[i] = len(e.input_ids) - e.prompt_len - int(stopped[i])
    return n, stopped


# ---- step 3: log-probs for the KL ----------------------------------------------------------
def response_logprobs(side: Side, prompts: list[str], responses: list[str], cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sum of the response tokens' log-probs at ``cfg.temperature``, and their count.

    Returns ``(logp_sum (N,), n_tokens (N,))``.  Sequences are left-padded with explicit
    position ids (so padding does not shift positions), and logits are computed only for
    the last ``max response length + 1`` positions."""
    import torch

    from ambient_rlhf.models.tokenize import pad_batch
    from ambient_rlhf.rl.logprobs import logprobs_from_logits

    model = side.model
    device = next(model.parameters()).device
    sums = np.zeros(len(prompts))
    counts = np.zeros(len(prompts), dtype=int)
    pad = side.tok.pad_token_id
    goal = _text_goal(side)
    for start in range(0, len(prompts), cfg.batch_size):
        enc = [_encode(side.tok, p, r, cfg, side.template, goal) for p, r in zip(prompts[start:start + cfg.batch_size],
                                                                responses[start:start + cfg.batch_size])]
        T = max(len(e.input_ids) for e in enc)
        L = max(max(len(e.input_ids) - e.prompt_len for e in enc), 1)  # longest response
        resp_masks = [[0] * e.prompt_len + [1] * (len(e.input_ids) - e.prompt_len) for e in enc]
        ids, mask, labels = pad_batch([e.input_ids for e in enc], pad, "left", label_masks=resp_masks)
        resp = labels != -100  # (B, T) True at response tokens
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        kw = dict(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device), use_cache=False)
        with torch.no_grad():
            try:
                logits = model(**kw, logits_to_keep=L + 1).logits
            except TypeError:  # an architecture without logits_to_keep: all positions, then slice
                logits = model(**kw).logits
        logits = logits[:, -(L + 1):-1]  # (B, L, V): predictions of positions T-L .. T-1
        target = ids[:, T - L:].to(device)  # (B, L)
        tok_logp = logprobs_from_logits(logits, target, cfg.temperature)  # (B, L)
        m = resp[:, T - L:].to(device)
        sums[start:start + len(enc)] = (tok_logp * m).sum(-1).cpu().numpy()
        counts[start:start + len(enc)] = m.sum(-1).cpu().numpy()
    return sums, counts
