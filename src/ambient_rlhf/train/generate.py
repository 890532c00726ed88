"""Sampling completions: ``generate()`` for the other stages, and for people through
``ambient generate`` (:mod:`ambient_rlhf.cli.generate`):

``ambient generate --model DIR [--goal good] [PROMPT | --prompts FILE] [--out f.jsonl]``

Prompts are rendered exactly as in training (:func:`ambient_rlhf.models.tokenize.encode_prompt`:
template, goal token, left truncation), left-padded into batches of similar length, and
sampled with the KV cache (HF ``generate``) until EOS or ``max_new_tokens``.  The result
is the decoded new text only, in the order of the prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger, progress

log = get_logger("generate")


def model_info(path: str | Path) -> dict[str, Any]:
    """``ambient_model.json`` of a model directory written by this project ({} if none)."""
    p = Path(path) / "ambient_model.json"
    if p.is_file():
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError:
            log.warning("%s: unreadable, ignored", p)
    return {}


def encode_prompts(tok, path: str, prompts: list[str], goal: str | None = None, template: str = "auto",
                   max_prompt_tokens: int = 256) -> list[list[int]]:
    """The token ids :func:`generate` feeds the model for ``prompts``: each rendered with
    ``template`` (``auto``: the one the model at ``path`` was trained with, recorded in its
    ``ambient_model.json``, else the tokenizer's chat template, else plain) and cut to
    ``max_prompt_tokens``."""
    from ambient_rlhf.models.tokenize import encode_prompt

    info = model_info(path) if Path(str(path)).is_dir() else {}
    if template == "auto" and info.get("template"):
        template = info["template"]
    try:
        return [encode_prompt(tok, p, max_prompt_tokens, template, goal)[0] for p in prompts]
    except ValueError as e:
        raise AmbientError(str(e)) from None


def load_for_generation(name: str):
    """(model, tokenizer) ready for sampling: eval mode, left padding."""
    from ambient_rlhf.models.load import default_device, load_causal_lm, load_tokenizer

    model = load_causal_lm(name, device=default_device())
    tok = load_tokenizer(name, padding_side="left")
    model.eval()
    return model, tok


@torch.no_grad()
def generate(model, prompts: list[str], goal: str | None = None, max_new_tokens: int = 64,
             temperature: float = 0.7, top_p: float = 1.0, batch_size: int = 8, seed: int = 0,
             template: str = "auto", max_prompt_tokens: int = 256, return_ids: bool = False) -> list:
    """Sample one completion per prompt.

    Args:
        model: a model name/directory, or a ``(model, tokenizer)`` tuple already loaded.
        prompts: user texts (rendered with the template here).
        goal: a tier (``good``/``ok``/``bad``) for a tier-conditioned model, else None.
        temperature: 0 = greedy; top_p: nucleus sampling mass (1 = off).
        template: ``auto`` uses the template the model was trained with (recorded in its
            ``ambient_model.json``), else the tokenizer's chat template, else plain.
        seed: sampling is reproducible for a given seed, batch size and prompt list; the
            caller's global RNG state is left untouched.
        return_ids: return the new token ids (EOS and what follows removed) instead of text.
    Returns: the new text of each prompt (special tokens removed), in prompt order."""
    from ambient_rlhf.models.tokenize import goal_token_ids, has_goal_tokens, pad_batch

    if isinstance(model, (tuple, list)):
        lm, tok = model
        path = getattr(lm.config, "_name_or_path", "") or "."
    else:
        path = str(model)
        lm, tok = load_for_generation(path)
    from ambient_rlhf.models.soft_prompt import select_goal

    goal = select_goal(lm, goal)  # a soft-prompt model: the goal picks its prompt, no token
    if goal is not None and not has_goal_tokens(tok):
        raise AmbientError(f"--goal {goal}: this model has no goal tokens; train it with `ambient sft --condition tier`")
    if not prompts:
        return []
    if max_new_tokens < 1:
        raise AmbientError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    encoded = encode_prompts(tok, path, prompts, goal, template, max_prompt_tokens)
    device = next(lm.parameters()).device
    was_training = lm.training
    lm.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths together
    results: list = [None] * len(prompts)
    pad_id = tok.pad_token_id
    gen_kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id, pad_token_id=pad_id,
                                  use_cache=True)
    if goal_token_ids(tok):  # control tokens are conditioned on, never produced
        gen_kw["suppress_tokens"] = goal_token_ids(tok)
    if temperature > 0:
        gen_kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        gen_kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in progress(range(0, len(order), batch_size), desc="generate", unit="batch"):
            idx = order[start:start + batch_size]
            seqs = [encoded[i] for i in idx]
            ids, att = pad_batch(seqs, pad_id, "left")  # left padding: the last prompt token is at T-1
            T = ids.shape[1]
            out = lm.generate(input_ids=ids.to(device), attention_mask=att.to(device), **gen_kw)
            for r, i in enumerate(idx):
                new = out[r, T:].tolist()
                if tok.eos_token_id in new:
                    new = new[: new.index(tok.eos_token_id)]
                results[i] = new if return_ids else tok.decode(new, skip_special_tokens=True).strip()
    lm.train(was_training)
    return results


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a file: JSONL with a ``prompt`` field, or one prompt per line."""
    p = Path(path)
    if not p.is_file():
        raise AmbientError(f"{p}: prompts file not found")
    prompts = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AmbientError(f"{p}:{n}: invalid JSON ({e.msg}); one object with a 'prompt' per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise AmbientError(f"{p}:{n}: expected an object with a string 'prompt'")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    return prompts

