"""``train_dpo``: direct preference optimisation, top to bottom."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import load_state, rng_state, save_checkpoint, seed_everything, set_rng_state
from ambient_rlhf.config import to_dict
from ambient_rlhf.io import atomic_dir, write_json, write_manifest
from ambient_rlhf.logging import MetricsWriter, get_logger, progress, read_jsonl
from ambient_rlhf.outdir import prepare_out
from ambient_rlhf.train.common import (CausalLMLoss, TokenMeter, all_sum, apply_lora, is_peft, make_optimizer,
                                       make_scheduler, merge_lora, setup_accelerator, warmup_count)
from ambient_rlhf.train.dpo.config import DPOConfig, validate
from ambient_rlhf.train.dpo.data import (REFERENCE_FILE, cached_reference, encode, evaluate, fingerprint, load_pairs,
                                        pair_metrics, sequence_logps, write_samples)
from ambient_rlhf.train.sft.config import MODEL_INFO_FILE
from ambient_rlhf.train.sft.data import epoch_batches, split_step

log = get_logger("dpo")

TRAIN_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
              "logps/chosen", "logps/rejected")


def _trim_jsonl(path: Path, max_step: int) -> None:
    """Drop lines written after the checkpoint being resumed."""
    if path.exists():
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= max_step]
        path.write_text("".join(k + "\n" for k in keep))


def train_dpo(cfg: DPOConfig) -> Path:
    """Run DPO as configured; return the output directory."""
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import has_goal_tokens, resolve_template
    from ambient_rlhf.train.generate import model_info

    validate(cfg)
    out = Path(cfg.out)
    t_start = time.time()

    # step 0. processes, output directory, seeds
    accelerator = setup_accelerator(1, cfg.mixed_precision)  # accumulation by pair weight below
    main = accelerator.is_main_process
    prepared = prepare_out(out, "dpo", to_dict(cfg), cfg.resume, cfg.overwrite, accelerator,
                           inputs=[cfg.data, cfg.model])
    if prepared.finished:
        log.warning("%s: this dpo run already finished; nothing to resume", out)
        return out
    ckpt = prepared.checkpoint
    seed_everything(cfg.seed)

    # step 1. pairs (weighted) and their tokens, rendered as SFT renders them
    counts: dict = {}
    train_pairs, valid_pairs = load_pairs(cfg, "train", counts), load_pairs(cfg, "valid", counts)
    if not train_pairs:
        raise AmbientError(f"{cfg.data}: no train pairs for pairs={cfg.pairs} (counts: {counts}); "
                           "build the data with pairs, or choose another pairs= source")
    tok = load_tokenizer(cfg.model, padding_side="right")
    info = model_info(cfg.model)
    try:
        template = resolve_template(tok, info.get("template", cfg.template) if cfg.template == "auto" else cfg.template)
    except ValueError as e:
        raise AmbientError(f"template: {e}") from None
    if cfg.goal is not None and not has_goal_tokens(tok):
        raise AmbientError(f"goal={cfg.goal}: the model {cfg.model} has no goal tokens; train it with "
                           "`ambient sft --condition tier`, or leave goal unset")
    train_ex, train_tok = encode(tok, train_pairs, cfg, template)
    valid_ex, valid_tok = encode(tok, valid_pairs, cfg, template)
    if cfg.eval_pairs and len(valid_ex) > cfg.eval_pairs:
        pick = np.random.default_rng(cfg.seed).choice(len(valid_ex), cfg.eval_pairs, replace=False)
        valid_ex = [valid_ex[i] for i in sorted(pick)]
    sample_prompts = list(dict.fromkeys(p.prompt for p in valid_pairs))[: cfg.sample_prompts]
    lengths = [e.length for e in train_ex]

    world = accelerator.num_processes
    global_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    if len(train_ex) < global_batch:
        raise AmbientError(f"{len(train_ex)} train pairs < one global batch of {global_batch} "
                           f"(per_device_train_batch_size x gradient_accumulation_steps x processes); lower "
                           f"per_device_train_batch_size or gradient_accumulation_steps")
    steps_per_epoch = len(train_ex) // global_batch  # a last partial batch is dropped
    total_steps = cfg.max_steps or max(int(round(cfg.num_train_epochs * steps_per_epoch)), 1)
    batches = {e: epoch_batches(lengths, global_batch, cfg.seed, e, cfg.group_by_length)
               for e in range((total_steps - 1) // steps_per_epoch + 1)}  # the data order: seed and step only
    used = sorted({j for s in range(total_steps) for j in batches[s // steps_per_epoch][s % steps_per_epoch]})

    # step 2. the reference: log-probs under the start model of every pair the run draws,
    # computed once (the main process writes the cache, the others read it), reused on resume
    lm = load_causal_lm(cfg.model).to(accelerator.device)
    sets, need = {"train": train_ex, "valid": valid_ex}, {"train": used, "valid": list(range(len(valid_ex)))}
    with accelerator.main_process_first(), accelerator.autocast():
        ref = cached_reference(out / REFERENCE_FILE, fingerprint(cfg.model, sets, need), CausalLMLoss(lm), sets,
                               tok.pad_token_id, cfg.per_device_train_batch_size * 2, accelerator.device, need)

    # step 3. the policy (from the checkpoint on resume), LoRA
    if ckpt is not None and not cfg.lora.enabled:
        lm = load_causal_lm(str(ckpt / "model"))
    lm = apply_lora(lm, cfg.lora)
    if ckpt is not None and cfg.lora.enabled:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(lm, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    lm.train()

    loss_fn = CausalLMLoss(lm)
    opt = make_optimizer(loss_fn, cfg.learning_rate, cfg.weight_decay)
    sched = make_scheduler(opt, cfg.lr_scheduler_type, warmup_count(cfg.warmup_steps, total_steps), total_steps)
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
        log.info("dpo (%s, beta=%g): %d train / %d valid pairs, %d steps of %d pairs (%d x %d x %d processes)",
                 cfg.loss, cfg.beta, len(train_ex), len(valid_ex), total_steps, global_batch,
                 cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, world)
        if ckpt is not None:
            _trim_jsonl(out / "samples.jsonl", step)
    metrics = MetricsWriter(out, resume_step=step if ckpt is not None else None, enabled=main)

    def unwrapped_lm():
        return accelerator.unwrap_model(loss_fn).lm

    def save_models(tmp: Path) -> None:
        m = unwrapped_lm()
        m.save_pretrained(tmp / ("adapter" if is_peft(m) else "model"))

    def do_eval(step: int) -> dict:
        m = evaluate(loss_fn, valid_ex, ref["valid"], tok.pad_token_id, cfg, accelerator) if valid_ex else {}
        if main and sample_prompts:
            m["eval/sample_length"] = write_samples(out / "samples.jsonl", step, unwrapped_lm(), tok, sample_prompts,
                                                    cfg, template)
        accelerator.wait_for_everyone()
        if m:
            metrics.log(step, m)
        return m

    if step == 0:
        first_eval = do_eval(0)
    else:  # the step-0 evaluation of the interrupted run
        first_eval = next((r for r in read_jsonl(out / "metrics.jsonl") if "eval/loss" in r), {})

    # step 4. train: each step one policy forward+backward over chosen and rejected
    meter, acc, acc_w, acc_seen = TokenMeter(), dict.fromkeys(TRAIN_KEYS, 0.0), 0.0, 0
    bar = progress(total=total_steps, initial=step, desc="dpo", unit="step") if main else None
    while step < total_steps:
        batch = batches[step // steps_per_epoch][step % steps_per_epoch]
        micro = split_step(batch, lengths, cfg.gradient_accumulation_steps * world)
        mine = micro[accelerator.process_index::world]  # this process's micro-batches
        w_total = sum(train_ex[j].weight for j in batch)  # the global batch's weight, known to every process
        for k, mb in enumerate(mine):
            exs = [train_ex[j] for j in mb]
            sync = accelerator.no_sync(loss_fn) if k < len(mine) - 1 else contextlib.nullcontext()
            with sync:
                pol, n = sequence_logps(loss_fn, exs, tok.pad_token_id, accelerator.device)  # (b, 2)
                w = torch.tensor([e.weight for e in exs], device=pol.device)
                losses, sums = pair_metrics(pol.float(), ref["train"][mb].to(pol.device), n, w, cfg)
                # the weighted mean over the global batch; DDP averages gradients over processes, hence * world
                accelerator.backward((w * losses).sum() * (world / w_total))
            for key_ in TRAIN_KEYS:
                acc[key_] += sums[key_]
            n_tok = sum(len(e.chosen) + len(e.rejected) for e in exs)
            meter.add(n_tok)
            acc_seen += n_tok
        grad_norm = (float(accelerator.clip_grad_norm_(loss_fn.parameters(), cfg.max_grad_norm))
                     if cfg.max_grad_norm > 0 else float("nan"))
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        acc_w += w_total
        if bar is not None:
            bar.update(1)
        if step % cfg.logging_steps == 0 or step == total_steps:
            row = {f"train/{k}": all_sum(accelerator, v) / acc_w for k, v in acc.items()}
            row.update({"train/lr": lr, "train/grad_norm": grad_norm, "train/tokens": all_sum(accelerator, acc_seen),
                        "train/tokens_per_s": all_sum(accelerator, meter.rate()), "epoch": step / steps_per_epoch})
            metrics.log(step, row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['train/loss']:.3f}", acc=f"{row['train/rewards/accuracy']:.2f}")
            acc, acc_w, acc_seen = dict.fromkeys(TRAIN_KEYS, 0.0), 0.0, 0
        if cfg.eval_steps and step % cfg.eval_steps == 0 and step < total_steps:
            do_eval(step)
        if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
            if main:
                state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng_state(),
                         "step": step, "config": to_dict(cfg)}
                save_checkpoint(out, step, state, save_models, keep=cfg.save_total_limit)
            accelerator.wait_for_everyone()
    if bar is not None:
        bar.close()
    last_eval = do_eval(total_steps)

    # step 5. the output directory: written beside, renamed into place
    if main:
        metrics.close()
        lm_final = unwrapped_lm()
        with atomic_dir(out, overwrite=True) as tmp:
            if is_peft(lm_final):
                lm_final.save_pretrained(tmp / "adapter")
                lm_final = merge_lora(lm_final)
            lm_final.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            write_json(tmp / MODEL_INFO_FILE, {**info, "stage": "dpo", "template": template,
                                               "condition": info.get("condition", "none"),
                                               "goal_tokens": info.get("goal_tokens", [])})
            for name in ("metrics.jsonl", "samples.jsonl", REFERENCE_FILE, "tensorboard"):
                src = out / name
                if src.is_dir():
                    shutil.copytree(src, tmp / name)
                elif src.is_file():
                    shutil.copy2(src, tmp / name)
            counts.update({"train_tokens": train_tok, "valid_tokens": valid_tok, "train_examples": len(train_ex),
                           "valid_examples": len(valid_ex), "steps": total_steps, "global_batch": global_batch,
                           "processes": world})
            write_manifest(tmp, "dpo", to_dict(cfg), inputs=[cfg.data, cfg.model], counts=counts,
                           results={"eval_first": first_eval, "eval_last": last_eval},
                           seconds=round(time.time() - t_start, 1))
    accelerator.wait_for_everyone()
    return out
