"""``train_sft``: behaviour cloning, top to bottom."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import (load_state, load_tensors, rng_state, save_checkpoint, save_tensors, seed_everything,
                                     set_rng_state)
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.models.soft_prompt import DEFAULT
from ambient_rlhf.config import check_bounds, to_dict
from ambient_rlhf.io import atomic_dir, write_json, write_manifest
from ambient_rlhf.logging import MetricsWriter, get_logger, progress
from ambient_rlhf.outdir import prepare_out
from ambient_rlhf.train.common import (CausalLMLoss, TokenMeter, all_sum, apply_lora, apply_prompt_tuning, is_peft,
                                        make_optimizer, make_scheduler, merge_lora, save_adapter, setup_accelerator,
                                        warmup_count)
from ambient_rlhf.train.sft.config import MODEL_INFO_FILE, SFTConfig
from ambient_rlhf.train.trackers import check_report_to, make_trackers
from ambient_rlhf.train.sft.data import (collate, encode_examples, epoch_batches, evaluate, read_responses,
                                        select_examples, split_step, write_samples)

log = get_logger("sft")


SOFT_STATE = "soft_prompt.safetensors"
"""A prompt-tuning checkpoint's trainable tensors (the base is the start model, unchanged)."""


def _goal_index(rows: list[tuple], names: list[str]) -> list[tuple]:
    """``(prompt, response, goal)`` -> ``(prompt, response, None, index of the goal's prompt)``:
    with soft prompts the goal is not written into the text."""
    return [(p, r, None, names.index(g if g is not None else DEFAULT)) for p, r, g in rows]


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
    soft = cfg.prompt_tuning.enabled
    if soft and cfg.lora.enabled:
        raise AmbientError("sft: lora.enabled and prompt_tuning.enabled are exclusive; choose one (--peft lora|prompt)")
    check_bounds(cfg)  # declared on SFTConfig's fields (load_config checks them too)
    check_report_to(cfg.report_to)
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
    if ckpt is not None and not cfg.lora.enabled and not soft:
        lm = load_causal_lm(str(ckpt / "model"))
        tok = load_tokenizer(str(ckpt / "model"), padding_side="right")
    else:
        lm = load_causal_lm(cfg.model)
    new_token_ids = None
    names = (list(TIERS) if cfg.condition == "tier" else [DEFAULT]) if soft else []
    if cfg.condition == "tier" and not soft:
        add_goal_tokens(tok, lm)  # mean-resized rows; seeded above, so a resume rebuilds them
        new_token_ids = tok.convert_tokens_to_ids(list(GOAL_TOKENS))
    lm = apply_lora(lm, cfg.lora, trainable_token_ids=new_token_ids)
    # soft prompts: the goal picks a prompt instead of a token, so the text carries no goal
    lm = apply_prompt_tuning(lm, cfg.prompt_tuning, tok, names)
    if ckpt is not None and cfg.lora.enabled:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(lm, load_file(str(ckpt / "adapter" / "adapter_model.safetensors")))
    if ckpt is not None and soft:
        lm.load_state_dict(load_tensors(ckpt / SOFT_STATE, "start the run again without --resume"), strict=False)
    lm.train()
    if soft:
        train_rows, valid_rows = _goal_index(train_rows, names), _goal_index(valid_rows, names)
    kept_train: list[int] = []
    kept_valid: list[int] = []
    train_ex, train_tok = encode_examples(tok, [r[:3] for r in train_rows], cfg, kept_train)
    valid_ex, valid_tok = encode_examples(tok, [r[:3] for r in valid_rows], cfg, kept_valid)
    train_goal = [train_rows[i][3] for i in kept_train] if soft else None
    valid_goal = [valid_rows[i][3] for i in kept_valid] if soft else None
    if cfg.eval_examples and len(valid_ex) > cfg.eval_examples:
        pick = np.random.default_rng(cfg.seed).choice(len(valid_ex), cfg.eval_examples, replace=False)
        valid_ex = [valid_ex[i] for i in sorted(pick)]
        valid_goal = [valid_goal[i] for i in sorted(pick)] if soft else None
    sample_prompts = list(dict.fromkeys(r[0] for r in valid_rows))[: cfg.sample_prompts]
    lengths = [len(ids) for ids, _ in train_ex]

    # step 3. schedule of steps
    world = accelerator.num_processes
    global_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    steps_per_epoch = max(len(train_ex) // global_batch, 1)  # a last partial batch is dropped
    total_steps = cfg.max_steps or max(int(round(cfg.num_train_epochs * steps_per_epoch)), 1)
    if len(train_ex) < global_batch:
        raise AmbientError(f"{len(train_ex)} train examples < one global batch of {global_batch} "
                           f"(per_device_train_batch_size x gradient_accumulation_steps x processes); lower "
                           "per_device_train_batch_size or gradient_accumulation_steps")

    loss_fn = CausalLMLoss(lm)
    opt = make_optimizer(loss_fn, cfg.prompt_tuning.learning_rate if soft else cfg.learning_rate, cfg.weight_decay)
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
        log.info("sft: %d train / %d valid examples, %d steps of %d sequences (%d x %d x %d processes)",
                 len(train_ex), len(valid_ex), total_steps, global_batch, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, world)
        log.info("tokens: %s; truncated prompts %d, responses %d", train_tok, train_tok["prompt_truncated"],
                 train_tok["response_truncated"])
        if ckpt is not None:
            _trim_jsonl(out / "samples.jsonl", step)
    metrics = MetricsWriter(out, resume_step=step if ckpt is not None else None, enabled=main,
                            trackers=make_trackers(cfg.report_to, out, to_dict(cfg)) if main else ())

    def unwrapped_lm():
        return accelerator.unwrap_model(loss_fn).lm

    def save_models(tmp: Path) -> None:
        m = unwrapped_lm()
        if soft:  # the prompts only: the frozen base is the start model, as it was
            save_tensors(tmp / SOFT_STATE, {n: p.detach().cpu() for n, p in m.named_parameters() if p.requires_grad})
        elif is_peft(m):
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
            save_checkpoint(out, step, state, save_models, keep=cfg.save_total_limit)
        accelerator.wait_for_everyone()

    def do_eval(step: int) -> dict:
        if not valid_ex:
            return {}
        m = evaluate(loss_fn, valid_ex, tok.pad_token_id, cfg.per_device_train_batch_size, accelerator, valid_goal)
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
        micro = split_step(batch, lengths, cfg.gradient_accumulation_steps * world)
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
            extra = (torch.tensor([train_goal[j] for j in mb], device=accelerator.device),) if soft else ()
            with sync:
                nll, n = loss_fn(ids, att, lab, *extra)
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
        if step % max(cfg.logging_steps, 1) == 0 or step == total_steps:
            tps = all_sum(accelerator, meter.rate())
            row = metrics.log(step, {"train/loss": acc_loss / max(acc_tok, 1), "train/lr": lr,
                                     "train/grad_norm": grad_norm, "train/tokens": all_sum(accelerator, acc_seen),
                                     "train/tokens_per_s": tps, "epoch": step / steps_per_epoch})
            if bar is not None:
                bar.set_postfix(loss=f"{row['train/loss']:.3f}")
            acc_loss, acc_tok, acc_seen = 0.0, 0, 0
        if cfg.eval_steps and step % cfg.eval_steps == 0 and step < total_steps:
            do_eval(step)
        if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
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
                save_adapter(lm_final, tmp / "adapter", tok, cfg.model)
                lm_final = merge_lora(lm_final)
            lm_final.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            write_json(tmp / MODEL_INFO_FILE, {"stage": "sft", "template": template, "condition": cfg.condition,
                                                "goal_tokens": list(GOAL_TOKENS) if cfg.condition == "tier" and not soft
                                                else [], "soft_prompts": names})
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


