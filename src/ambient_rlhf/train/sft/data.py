"""SFT examples from a data directory, batches, evaluation and samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.logging import get_logger
from ambient_rlhf.train.common import all_sum
from ambient_rlhf.train.sft.config import SFTConfig

log = get_logger("sft")


def read_responses(data_dir: str | Path, cfg: SFTConfig):
    """Responses table of a data directory, with a clear error when it is not one."""
    import pandas as pd

    from ambient_rlhf.data.schema import RESPONSES_FILE

    p = Path(data_dir) / RESPONSES_FILE
    if not p.is_file():
        raise AmbientError(f"{p}: not found; --data must be a directory written by `ambient data build`")
    df = pd.read_parquet(p)
    needed = ["thread_id", "prompt", "response", "split"]
    if cfg.condition == "tier" or cfg.select == "top_tier":
        needed.append("tier")
    if cfg.select == "top_k":
        needed.append("rank")
    if cfg.select == "min_score":
        needed.append("score")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise AmbientError(f"{p}: missing columns {missing}; rebuild the data directory with `ambient data build`")
    return df


def select_examples(df, split: str, cfg: SFTConfig) -> tuple[list[tuple[str, str, str | None]], dict[str, int]]:
    """``(prompt, response, goal)`` rows of ``split`` chosen by ``cfg.select``, and counters
    of what was dropped and why."""
    d = df[df["split"] == split]
    counts = {"rows": int(len(d))}
    ok = d["prompt"].notna() & d["response"].notna() & (d["response"].astype(str).str.strip() != "")
    counts["skipped_empty"] = int((~ok).sum())
    d = d[ok]
    if split == "train":
        if cfg.select == "top_tier":
            keep = d["tier"] == "good"
        elif cfg.select == "top_k":
            keep = d["rank"] < cfg.top_k
        elif cfg.select == "min_score":
            keep = d["score"] >= cfg.min_score
        else:
            keep = d["prompt"].notna()
        counts["filtered_by_select"] = int((~keep).sum())
        d = d[keep]
    if cfg.condition == "tier":
        has_tier = d["tier"].isin(TIERS)
        counts["skipped_no_tier"] = int((~has_tier).sum())
        d = d[has_tier]
    sort_cols = [c for c in ("thread_id", "response_id") if c in d.columns]
    d = d.sort_values(sort_cols, kind="stable")  # a fixed order, whatever the file order
    goals = d["tier"].tolist() if cfg.condition == "tier" else [None] * len(d)
    rows = list(zip(d["prompt"].astype(str).tolist(), d["response"].astype(str).tolist(), goals))
    counts["examples"] = len(rows)
    return rows, counts


def encode_examples(tok, rows, cfg: SFTConfig, kept: list[int] | None = None) -> tuple[list[tuple[list[int], int]], dict[str, int]]:
    """Tokenise ``rows`` into ``(ids, prompt_len)``, counting truncations and tokens;
    ``kept`` (a list to fill) receives the index in ``rows`` of each example returned."""
    from ambient_rlhf.models.tokenize import encode_pairs

    try:
        encoded = encode_pairs(tok, rows, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.template)
    except ValueError as err:
        raise AmbientError(f"sft: {err}") from None
    out, stats = [], {"prompt_truncated": 0, "response_truncated": 0, "prompt_tokens": 0, "response_tokens": 0,
                      "skipped_empty_response": 0}
    for i, e in enumerate(encoded):
        if len(e.input_ids) <= e.prompt_len:  # nothing to predict
            stats["skipped_empty_response"] += 1
            continue
        out.append((e.input_ids, e.prompt_len))
        if kept is not None:
            kept.append(i)
        stats["prompt_truncated"] += int(e.prompt_truncated)
        stats["response_truncated"] += int(e.response_truncated)
        stats["prompt_tokens"] += e.prompt_len
        stats["response_tokens"] += len(e.input_ids) - e.prompt_len
    return out, stats


def collate(examples: list[tuple[list[int], int]], pad_id: int, side: str = "right"):
    """(ids, prompt_len) examples -> input_ids, attention_mask, labels (B, T); labels are
    -100 on the prompt and the padding, so the loss is on response tokens only."""
    from ambient_rlhf.models.tokenize import pad_batch

    seqs = [ids for ids, _ in examples]
    masks = [[0] * p + [1] * (len(ids) - p) for ids, p in examples]
    return pad_batch(seqs, pad_id, side, label_masks=masks)


def epoch_batches(lengths: list[int], global_batch: int, seed: int, epoch: int, group_by_length: bool) -> list[list[int]]:
    """The global batches (lists of example indices) of one epoch.

    A pure function of (lengths, global_batch, seed, epoch): resuming at any step and
    splitting a step into any number of micro-batches or processes see the same data.
    With ``group_by_length``, windows of 32 global batches are sorted by length before
    being cut, then the batches are shuffled (the trick of HF's ``group_by_length``)."""
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(lengths))
    if group_by_length:
        window = global_batch * 32
        chunks = [perm[i:i + window] for i in range(0, len(perm), window)]
        perm = np.concatenate([c[np.argsort([-lengths[j] for j in c], kind="stable")] for c in chunks])
    # full batches only (the few left-over examples change from epoch to epoch)
    batches = [perm[i:i + global_batch].tolist() for i in range(0, len(perm) - global_batch + 1, global_batch)]
    if group_by_length:
        order = rng.permutation(len(batches))
        batches = [batches[i] for i in order]
    return batches


def split_step(batch: list[int], lengths: list[int], n_micro: int) -> list[list[int]]:
    """Cut one global batch into ``n_micro`` micro-batches of similar lengths (sorted by
    length, then consecutive slices, as equal in size as possible)."""
    ordered = sorted(batch, key=lambda j: (-lengths[j], j))
    return [a.tolist() for a in np.array_split(np.array(ordered, dtype=np.int64), n_micro)]


# ---- evaluation and samples ------------------------------------------------------------
@torch.no_grad()
def evaluate(loss_fn, examples, pad_id: int, batch_size: int, accelerator,
             goals: list[int] | None = None) -> dict[str, float]:
    """Token-mean NLL and perplexity of the response tokens of ``examples`` (sharded
    over processes, summed); ``goals``: each example's soft prompt (prompt tuning)."""
    was_training = loss_fn.training
    loss_fn.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))[rank::world]
    nll_sum, n_tok = 0.0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        ids, att, lab = collate([examples[j] for j in idx], pad_id)
        extra = (torch.tensor([goals[j] for j in idx], device=accelerator.device),) if goals is not None else ()
        nll, n = loss_fn(ids.to(accelerator.device), att.to(accelerator.device), lab.to(accelerator.device), *extra)
        nll_sum += float(nll.sum())
        n_tok += int(n.sum())
    nll_sum, n_tok = all_sum(accelerator, nll_sum), all_sum(accelerator, n_tok)
    loss_fn.train(was_training)
    loss = nll_sum / max(n_tok, 1)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 50.0)), "eval/tokens": int(n_tok)}


def write_samples(path: Path, step: int, model, tok, prompts: list[str], cfg: SFTConfig) -> None:
    from ambient_rlhf.train.generate import generate

    goal = "good" if cfg.condition == "tier" else None
    texts = generate((model, tok), prompts, goal=goal, max_new_tokens=cfg.sample_max_new_tokens,
                     seed=cfg.seed, template=cfg.template, max_prompt_tokens=cfg.max_prompt_tokens)
    with path.open("a") as f:
        for p, t in zip(prompts, texts):
            f.write(json.dumps({"step": step, "goal": goal, "prompt": p, "completion": t}) + "\n")


