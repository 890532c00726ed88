"""Behaviour cloning (SFT): fine-tune a causal LM on prompt -> response.

``ambient sft --data DIR --model M --out DIR [--resume] [--condition tier]``

The flow of :func:`train_sft`, top to bottom:

1. read the data directory's responses; select the train responses (all, top tier,
   top-k per thread, minimum score); with ``condition=tier`` keep every tier and put the
   response's tier token (``<|tier:good|>``...) at the start of the answer;
2. tokenise once: prompt (cut from the left) + response (cut from the right) + EOS; the
   loss is on response tokens only;
3. batches: the examples of one optimizer step (a *global batch* of
   ``batch_size * grad_accum * processes`` sequences) are fixed by ``seed`` and the epoch,
   never by how the batch is split, so 1x8 and 8x1 see the same data; with
   ``group_by_length`` global batches are formed from length-sorted windows (little
   padding), and inside a step the examples are length-sorted into micro-batches;
4. each step: loss = sum of response-token NLL / number of response tokens of the whole
   global batch (so gradient accumulation and several processes give the mean over the
   same tokens as one big batch); clip, AdamW, LR schedule;
5. every ``eval_every`` steps: loss and perplexity on the valid split; every
   ``checkpoint_every`` steps: sample completions for a fixed set of valid prompts into
   ``samples.jsonl`` and write a checkpoint (weights or adapter, optimizer, scheduler,
   RNG, data position, step);
6. the end: the output directory (``save_pretrained`` weights, merged when LoRA was
   used, with ``adapter/`` kept; tokenizer; ``metrics.jsonl``; ``samples.jsonl``;
   ``manifest.json``) replaces the working directory in one rename.

``--resume`` continues from the newest checkpoint in ``--out`` and reproduces the losses
of an uninterrupted run (data order is a function of seed and step, RNG states restored).
Which directories are used, resumed or refused is decided by :mod:`ambient_rlhf.outdir`,
the same for every stage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import load_state, rng_state, save_checkpoint, seed_everything, set_rng_state
from ambient_rlhf.cli import common_parser, parse_stage
from ambient_rlhf.config import to_dict
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.io import atomic_dir, write_json, write_manifest
from ambient_rlhf.logging import MetricsWriter, get_logger, progress
from ambient_rlhf.outdir import prepare_out
from ambient_rlhf.train.common import (CausalLMLoss, LoraSettings, TokenMeter, all_sum, apply_lora, is_peft,
                                       make_optimizer, make_scheduler, merge_lora, setup_accelerator)

log = get_logger("sft")

MODEL_INFO_FILE = "ambient_model.json"
"""Written into every model directory this stage produces: how prompts were rendered
(template, goal tokens), so ``generate`` renders them the same way."""


@dataclass
class SFTConfig:
    data: str = ""
    """Data directory from ``ambient data build`` (reads ``responses.parquet``). Required."""
    model: str = "default"
    """Model to start from: ``default`` (SmolLM2-135M-Instruct, offline), ``tiny-random``
    (smoke tests), or a ``save_pretrained`` directory. The default is the only real model
    that needs no network."""
    out: str = ""
    """Output directory (a ``save_pretrained`` model directory at the end). Required."""
    resume: bool = False
    """Continue the run in ``out`` from its newest checkpoint; only a run of the same
    config is continued, a finished one is left as it is (``ambient_rlhf.outdir``). Off:
    a fresh run refuses a directory that holds a run (so a typo cannot destroy a day of
    training)."""
    overwrite: bool = False
    """Delete what ``out`` holds and start over (never allowed when ``out`` is, contains
    or lies inside ``data`` or ``model``). Off for the same reason as ``resume``."""
    condition: Literal["none", "tier"] = "none"
    """``tier``: add goal tokens ``<|tier:good|>``/``ok``/``bad``, train on every tier with
    the response's tier token after the answer header, so generation can ask for a tier
    (the seeds' goal-conditioned model). ``none`` is plain behaviour cloning, the
    InstructGPT step 1."""
    select: Literal["all", "top_tier", "top_k", "min_score"] = "all"
    """Which train responses to imitate: ``all`` (what the seeds did; needed by
    ``condition=tier``), ``top_tier`` (tier == good), ``top_k`` (the ``top_k`` best-ranked
    per thread), ``min_score`` (score >= ``min_score``). ``all`` is the default because
    filtering is a choice the user should make knowingly (it shrinks the data)."""
    top_k: int = 1
    """k for ``select=top_k``: 1 = the community's favourite answer per thread, the
    usual "best response" variant."""
    min_score: int = 2
    """Threshold for ``select=min_score``; 2 = at least one upvote besides the author's
    own (Reddit starts every comment at 1), the SHP cut-off."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """Prompt template: ``auto`` = the tokenizer's chat template when it has one (the
    default model has ChatML), else ``Prompt: ...\\nResponse: ``."""
    max_prompt_tokens: int = 256
    """Prompt budget in tokens (cut from the left: the end of a question is nearest the
    answer). 256 covers most Reddit questions; longer costs quadratic attention on CPU."""
    max_response_tokens: int = 256
    """Response budget (cut from the right; a cut response gets no EOS). 256 keeps most
    answers whole at a cost a CPU can bear."""
    batch_size: int = 4
    """Sequences per micro-batch per process. 4 fits the default model at 512 tokens in a
    few GB on CPU; raise it on a GPU."""
    grad_accum: int = 4
    """Micro-batches per optimizer step. With batch_size 4 an optimizer step sees 16
    sequences, a common SFT batch for small models."""
    lr: float = 2e-5
    """Peak learning rate (AdamW). 2e-5 is the usual full fine-tuning rate for small
    instruction models; with LoRA use about 10x (2e-4)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not on biases/norms). 0: short SFT runs do not overfit enough
    to need it, and it is the TRL default."""
    schedule: Literal["constant", "linear", "cosine"] = "cosine"
    """LR schedule after warmup; cosine to 0 is the common SFT choice."""
    warmup_steps: int = 10
    """Linear warmup steps; 10 steadies Adam's first moments without wasting a short run."""
    steps: int = 0
    """Optimizer steps to run; 0 = ``epochs`` over the selected train data."""
    epochs: float = 1.0
    """Passes over the train data when ``steps`` is 0 (fractions allowed). One epoch is
    the usual SFT budget on community data (more overfits the few responses per thread)."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm (0 = off); 1.0 is the standard guard against the odd
    long, surprising response."""
    group_by_length: bool = True
    """Form batches from examples of similar length (less padding, faster). The order of
    steps is still shuffled. Turn off for exact i.i.d. batches."""
    log_every: int = 10
    """Write train metrics every N optimizer steps (averaged over them)."""
    eval_every: int = 50
    """Evaluate on the valid split every N optimizer steps (and at step 0 and the end);
    0 = only at the start and the end."""
    eval_examples: int = 256
    """Valid responses used for evaluation (a fixed, seeded subset); 256 gives a loss
    estimate to about 1% at a cost of a few training steps; 0 = all."""
    checkpoint_every: int = 100
    """Write a checkpoint (and samples) every N optimizer steps; 0 = only at the end.
    Checkpoints of the default model take ~1.6 GB (weights + Adam state)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept while training (2: one survives a kill during a save).
    Checkpoints are removed from the final output directory."""
    sample_prompts: int = 4
    """Valid prompts sampled at each checkpoint into ``samples.jsonl`` (0 = none); four
    give a quick look at the style without slowing training."""
    sample_max_new_tokens: int = 64
    """Length of those samples in new tokens."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto`` = bf16 autocast on a GPU that supports it, float32 on CPU (CPU bf16
    autocast is slower on most CPUs)."""
    seed: int = 0
    """Seeds data order, new-token initialisation and sampling."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters through peft (``lora.enabled=true``)."""


# ---- data ------------------------------------------------------------------------------
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


def encode_examples(tok, rows, cfg: SFTConfig) -> tuple[list[tuple[list[int], int]], dict[str, int]]:
    """Tokenise ``rows`` into ``(ids, prompt_len)``, counting truncations and tokens."""
    from ambient_rlhf.models.tokenize import encode_pairs

    try:
        encoded = encode_pairs(tok, rows, cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.template)
    except ValueError as err:
        raise AmbientError(f"sft: {err}") from None
    out, stats = [], {"prompt_truncated": 0, "response_truncated": 0, "prompt_tokens": 0, "response_tokens": 0,
                      "skipped_empty_response": 0}
    for e in encoded:
        if len(e.input_ids) <= e.prompt_len:  # nothing to predict
            stats["skipped_empty_response"] += 1
            continue
        out.append((e.input_ids, e.prompt_len))
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
def evaluate(loss_fn, examples, pad_id: int, batch_size: int, accelerator) -> dict[str, float]:
    """Token-mean NLL and perplexity of the response tokens of ``examples`` (sharded
    over processes, summed)."""
    was_training = loss_fn.training
    loss_fn.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    order = sorted(range(len(examples)), key=lambda i: len(examples[i][0]))[rank::world]
    nll_sum, n_tok = 0.0, 0
    for i in range(0, len(order), batch_size):
        ids, att, lab = collate([examples[j] for j in order[i:i + batch_size]], pad_id)
        nll, n = loss_fn(ids.to(accelerator.device), att.to(accelerator.device), lab.to(accelerator.device))
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


# ---- the trainer -----------------------------------------------------------------------
def _trim_jsonl(path: Path, max_step: int) -> None:
    """Drop lines written after the checkpoint being resumed."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= max_step]
    path.write_text("".join(k + "\n" for k in keep))


def train_sft(cfg: SFTConfig) -> Path:
    """Run behaviour cloning as configured; return the output directory."""
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import GOAL_TOKENS, add_goal_tokens, resolve_template

    if not cfg.data:
        raise AmbientError("sft: --data is required (a directory from `ambient data build`)")
    if not cfg.out:
        raise AmbientError("sft: --out is required")
    if cfg.condition == "tier" and cfg.select == "top_tier":
        raise AmbientError("condition=tier needs responses of every tier; use select=all (or top_k/min_score)")
    for name in ("batch_size", "grad_accum"):
        if getattr(cfg, name) < 1:
            raise AmbientError(f"sft: {name} must be >= 1, got {getattr(cfg, name)}")
    out = Path(cfg.out)
    t_start = time.time()

    # step 0. processes, output directory, seeds
    accelerator = setup_accelerator(1, cfg.mixed_precision)  # accumulation by token count below
    main = accelerator.is_main_process
    prepared = prepare_out(out, "sft", to_dict(cfg), cfg.resume, cfg.overwrite, accelerator,
                           inputs=[cfg.data, cfg.model])
    if prepared.finished:
        log.warning("%s: this sft run already finished; nothing to resume", out)
        return out
    ckpt = prepared.checkpoint
    seed_everything(cfg.seed)

    # step 1. data
    df = read_responses(cfg.data, cfg)
    train_rows, train_counts = select_examples(df, "train", cfg)
    valid_rows, valid_counts = select_examples(df, "valid", cfg)
    if not train_rows:
        raise AmbientError(f"{cfg.data}: no train responses left after select={cfg.select} "
                           f"(counts: {train_counts}); choose a looser selection")

    # step 2. model, tokenizer (+ goal tokens), LoRA
    tok = load_tokenizer(cfg.model, padding_side="right")
    try:
        template = resolve_template(tok, cfg.template)
    except ValueError as e:
        raise AmbientError(f"template: {e}") from None
    if ckpt is not None and not cfg.lora.enabled:
        lm = load_causal_lm(str(ckpt / "model"))
        tok = load_tokenizer(str(ckpt / "model"), padding_side="right")
    else:
        lm = load_causal_lm(cfg.model)
    new_token_ids = None
    if cfg.condition == "tier":
        add_goal_tokens(tok, lm)  # mean-resized rows; seeded above, so a resume rebuilds them
        new_token_ids = tok.convert_tokens_to_ids(list(GOAL_TOKENS))
    lm = apply_lora(lm, cfg.lora, trainable_token_ids=new_token_ids)
    if ckpt is not None and cfg.lora.enabled:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(lm, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    lm.train()
    train_ex, train_tok = encode_examples(tok, train_rows, cfg)
    valid_ex, valid_tok = encode_examples(tok, valid_rows, cfg)
    if cfg.eval_examples and len(valid_ex) > cfg.eval_examples:
        pick = np.random.default_rng(cfg.seed).choice(len(valid_ex), cfg.eval_examples, replace=False)
        valid_ex = [valid_ex[i] for i in sorted(pick)]
    sample_prompts = list(dict.fromkeys(p for p, _, _ in valid_rows))[: cfg.sample_prompts]
    lengths = [len(ids) for ids, _ in train_ex]

    # step 3. schedule of steps
    world = accelerator.num_processes
    global_batch = cfg.batch_size * cfg.grad_accum * world
    steps_per_epoch = max(len(train_ex) // global_batch, 1)  # a last partial batch is dropped
    total_steps = cfg.steps or max(int(round(cfg.epochs * steps_per_epoch)), 1)
    if len(train_ex) < global_batch:
        raise AmbientError(f"{len(train_ex)} train examples < one global batch of {global_batch} "
                           f"(batch_size x grad_accum x processes); lower batch_size or grad_accum")

    loss_fn = CausalLMLoss(lm)
    opt = make_optimizer(loss_fn, cfg.lr, cfg.weight_decay)
    sched = make_scheduler(opt, cfg.schedule, cfg.warmup_steps, total_steps)
    loss_fn, opt = accelerator.prepare(loss_fn, opt)
    step = 0
    if ckpt is not None:
        state = load_state(ckpt)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        log.warning("resuming from %s (step %d of %d)", ckpt, step, total_steps)
    if main:
        log.info("sft: %d train / %d valid examples, %d steps of %d sequences (%d x %d x %d processes)",
                 len(train_ex), len(valid_ex), total_steps, global_batch, cfg.batch_size, cfg.grad_accum, world)
        log.info("tokens: %s; truncated prompts %d, responses %d", train_tok, train_tok["prompt_truncated"],
                 train_tok["response_truncated"])
        if ckpt is not None:
            _trim_jsonl(out / "samples.jsonl", step)
    metrics = MetricsWriter(out, resume_step=step if ckpt is not None else None, enabled=main)

    def unwrapped_lm():
        return accelerator.unwrap_model(loss_fn).lm

    def save_models(tmp: Path) -> None:
        m = unwrapped_lm()
        if is_peft(m):
            m.save_pretrained(tmp / "adapter")
        else:
            m.save_pretrained(tmp / "model")
            tok.save_pretrained(tmp / "model")

    def checkpoint(step: int) -> None:
        if main:
            if sample_prompts:
                write_samples(out / "samples.jsonl", step, unwrapped_lm(), tok, sample_prompts, cfg)
            state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
                     "step": step, "data_position": {"epoch": step // steps_per_epoch,
                                                     "batch": step % steps_per_epoch},
                     "config": to_dict(cfg)}
            save_checkpoint(out, step, state, save_models, keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()

    def do_eval(step: int) -> dict:
        if not valid_ex:
            return {}
        m = evaluate(loss_fn, valid_ex, tok.pad_token_id, cfg.batch_size, accelerator)
        metrics.log(step, m)
        return m

    if step == 0:
        first_eval = do_eval(0)
    else:  # the step-0 evaluation of the interrupted run
        from ambient_rlhf.logging import read_jsonl

        first_eval = next((r for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r), None)
    # step 4. train
    meter, acc_loss, acc_tok, acc_seen, epoch_cache = TokenMeter(), 0.0, 0, 0, {}
    bar = progress(total=total_steps, initial=step, desc="sft", unit="step") if main else None
    while step < total_steps:
        epoch, pos = divmod(step, steps_per_epoch)
        if epoch not in epoch_cache:
            epoch_cache = {epoch: epoch_batches(lengths, global_batch, cfg.seed, epoch, cfg.group_by_length)}
        batch = epoch_cache[epoch][pos]
        micro = split_step(batch, lengths, cfg.grad_accum * world)
        mine = micro[accelerator.process_index::world]  # this process's micro-batches
        # the normaliser: response tokens of the whole global batch (known to every process)
        # tokens predicted per example = len - prompt_len (the first response token is
        # predicted from the last prompt position)
        n_resp = sum(len(train_ex[j][0]) - train_ex[j][1] for j in batch)
        step_nll = 0.0
        for k, mb in enumerate(mine):
            ids, att, lab = collate([train_ex[j] for j in mb], tok.pad_token_id)
            ids, att, lab = ids.to(accelerator.device), att.to(accelerator.device), lab.to(accelerator.device)
            sync = accelerator.no_sync(loss_fn) if k < len(mine) - 1 else contextlib.nullcontext()
            with sync:
                nll, n = loss_fn(ids, att, lab)
                # DDP averages gradients over processes, hence * world
                loss = nll.sum() * (world / n_resp)
                accelerator.backward(loss)
            step_nll += float(nll.sum().detach())
            meter.add(int(att.sum()))
            acc_seen += int(att.sum())
        if cfg.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(loss_fn.parameters(), cfg.max_grad_norm))
        else:
            grad_norm = float("nan")
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        acc_loss += all_sum(accelerator, step_nll)
        acc_tok += n_resp
        if bar is not None:
            bar.update(1)
        if step % max(cfg.log_every, 1) == 0 or step == total_steps:
            tps = all_sum(accelerator, meter.rate())
            row = metrics.log(step, {"train/loss": acc_loss / max(acc_tok, 1), "train/lr": lr,
                                     "train/grad_norm": grad_norm, "train/tokens": all_sum(accelerator, acc_seen),
                                     "train/tokens_per_s": tps, "epoch": step / steps_per_epoch})
            if bar is not None:
                bar.set_postfix(loss=f"{row['train/loss']:.3f}")
            acc_loss, acc_tok, acc_seen = 0.0, 0, 0
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            do_eval(step)
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total_steps:
            checkpoint(step)
    if bar is not None:
        bar.close()
    last_eval = do_eval(total_steps)

    # step 5. the output directory: written beside, renamed into place
    if main:
        if sample_prompts:
            write_samples(out / "samples.jsonl", total_steps, unwrapped_lm(), tok, sample_prompts, cfg)
        metrics.close()
        lm_final = unwrapped_lm()
        with atomic_dir(out, overwrite=True) as tmp:
            if is_peft(lm_final):
                lm_final.save_pretrained(tmp / "adapter")
                tok.save_pretrained(tmp / "adapter")
                lm_final = merge_lora(lm_final)
            lm_final.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            write_json(tmp / MODEL_INFO_FILE, {"stage": "sft", "template": template, "condition": cfg.condition,
                                                "goal_tokens": list(GOAL_TOKENS) if cfg.condition == "tier" else []})
            for name in ("metrics.jsonl", "samples.jsonl", "tensorboard"):
                src = out / name
                if src.is_dir():
                    shutil.copytree(src, tmp / name)
                elif src.is_file():
                    shutil.copy2(src, tmp / name)
            counts = {"train": train_counts, "valid": valid_counts, "train_tokens": train_tok,
                      "valid_tokens": valid_tok, "steps": total_steps, "global_batch": global_batch,
                      "processes": world}
            write_manifest(tmp, "sft", to_dict(cfg), inputs=[cfg.data], counts=counts,
                           results={"eval_first": first_eval, "eval_last": last_eval},
                           seconds=round(time.time() - t_start, 1))
    accelerator.wait_for_everyone()
    return out


# ---- command line ----------------------------------------------------------------------
def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ambient sft", parents=[common_parser()],
                                description="Behaviour cloning: fine-tune a causal LM on prompt -> response.")
    p.add_argument("--data", help="data directory (from `ambient data build`)")
    p.add_argument("--model", help="start model: default | tiny-random | a model directory")
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--condition", choices=["none", "tier"], help="tier: train with goal tokens")
    args, cfg = parse_stage(p, argv, SFTConfig, values=("data", "model", "out", "condition"),
                            switches=("resume", "overwrite"))
    if cfg is None:
        return 0
    out = train_sft(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0
