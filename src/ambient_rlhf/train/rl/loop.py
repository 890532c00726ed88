"""``train_rl``: the RL loop, top to bottom in numbered steps (see the package docstring)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import load_state, load_tensors, seed_everything, set_rng_state
from ambient_rlhf.config import to_dict
from ambient_rlhf.io import write_manifest, writing
from ambient_rlhf.logging import MetricsWriter, get_logger, progress, read_jsonl
from ambient_rlhf.outdir import prepare_out
from ambient_rlhf.rl.advantages import (RunningBaseline, gae, mean_baseline_advantages, rloo_advantages,
                                        scale_advantages)
from ambient_rlhf.rl.kl_control import AdaptiveKLController, FixedKLController
from ambient_rlhf.rl.logprobs import logprobs_from_logits
from ambient_rlhf.rl.losses import (explained_variance, kl_penalty_loss, ppo_policy_loss, ppo_value_loss,
                                    sequence_policy_loss)
from ambient_rlhf.rl.masking import masked_whiten
from ambient_rlhf.rl.rewards import apply_missing_eos_score, kl_per_token, sequence_rewards, shaped_rewards
from ambient_rlhf.train.common import (apply_lora, apply_prompt_tuning, is_peft, make_scheduler, merge_lora,
                                        save_adapter, setup_accelerator)
from ambient_rlhf.train.rollout import PolicyWithValue, response_logits, sample
from ambient_rlhf.train.rl.config import RLConfig, _validate
from ambient_rlhf.train.rl.scorers import make_scorer
from ambient_rlhf.train.rl.setup import (_adam, _checkpoint, _reference_normalization, _value_model, load_prompts,
                                       prompt_indices)
from ambient_rlhf.train.trackers import make_trackers

log = get_logger("rl")


def train_rl(cfg: RLConfig) -> Path:
    """Run policy optimisation (see the module docstring for the steps); return ``cfg.out``."""
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.tokenize import encode_prompt, has_goal_tokens, pad_batch, render_prompt

    acc = setup_accelerator(mixed_precision=cfg.mixed_precision)
    _validate(cfg, acc.num_processes)
    out = Path(cfg.out)
    prepared = prepare_out(out, "rl", to_dict(cfg), cfg.resume, cfg.overwrite, acc,
                           inputs=[cfg.policy, cfg.reward, cfg.data])
    if prepared.finished:
        log.warning("%s: this rl run already finished; nothing to resume", out)
        return out
    ckpt = prepared.checkpoint
    seed_everything(cfg.seed + acc.process_index)
    device = acc.device

    # models: policy (+ value head), reference, value model, reward
    tok = load_tokenizer(cfg.policy, padding_side="left")
    if cfg.goal is not None and not has_goal_tokens(tok):
        raise AmbientError(f"goal={cfg.goal}: the policy {cfg.policy} has no goal tokens; train it with "
                           "`ambient sft --condition tier`, or leave goal unset")
    prompts = load_prompts(cfg.data)
    prompt_ids = [encode_prompt(tok, p, cfg.max_prompt_tokens, cfg.template, cfg.goal)[0] for p in prompts]
    lm = load_causal_lm(cfg.policy)
    lm.config.use_cache = True
    ref_lm = None
    if not cfg.lora.enabled:  # with LoRA the reference is the same model, adapter off
        ref_lm = load_causal_lm(cfg.reference or cfg.policy).to(device).eval()
        ref_lm.requires_grad_(False)
    lm = apply_lora(lm, cfg.lora)
    if cfg.prompt_tuning.enabled:  # the policy's weights stay the reference's; a soft prompt learns
        from ambient_rlhf.models.soft_prompt import DEFAULT, SoftPromptLM

        if isinstance(lm, SoftPromptLM):
            raise AmbientError(f"prompt_tuning: the policy {cfg.policy} already has soft prompts; start RL from a "
                               "plain model (the reference must be the policy without a prompt)")
        lm = apply_prompt_tuning(lm, cfg.prompt_tuning, tok, [DEFAULT])
    policy = PolicyWithValue(lm, value_head=(cfg.algo == "ppo" and cfg.value_model == "shared")).to(device).eval()
    # RLOO's k rows of a prompt share its keys/values in the forwards (the soft prompt's
    # wrapper has no cache there; sampling shares through its forward, which has)
    share = cfg.share_prompts and cfg.algo == "rloo" and cfg.rloo_k > 1 and not cfg.prompt_tuning.enabled
    policy.share_prompts = share
    scorer, rm = make_scorer(cfg, tok, prompts, device)
    # reward normalisation: score = gain * scorer output + bias (gain 1, bias 0 unless
    # reward_normalize=reference); a resumed run takes them from its checkpoint
    state = load_state(ckpt) if ckpt is not None else None
    if state is not None and "reward_normalization" in state:
        reward_norm = state["reward_normalization"]
    elif cfg.reward_normalize == "reference":
        reward_norm = _reference_normalization(cfg, acc, ref_lm, policy, scorer, prompt_ids, tok)
    else:
        reward_norm = {"mode": "none", "gain": 1.0, "bias": 0.0}
    gain, bias = reward_norm["gain"], reward_norm["bias"]
    value = None
    if cfg.algo == "ppo" and cfg.value_model != "shared":
        # a reward model over another vocabulary cannot read the policy's tokens: the value model is the policy's
        readable = getattr(scorer, "decode_with", None) is None
        value = _value_model(cfg, rm if readable else None, len(tok), gain, bias).to(device).eval()

    # optimizers: one per trained model, linear decay over all optimizer steps (2019)
    per_proc = cfg.batch_size // acc.num_processes
    epochs = cfg.ppo_epochs if cfg.algo == "ppo" else 1
    total_updates = cfg.max_steps * epochs * cfg.num_minibatches
    opt = _adam(policy, cfg, cfg.prompt_tuning.learning_rate if cfg.prompt_tuning.enabled else None)
    sched = make_scheduler(opt, cfg.lr_scheduler_type, 0, total_updates)
    v_opt = v_sched = None
    if value is not None:
        v_opt = _adam(value, cfg)
        v_sched = make_scheduler(v_opt, cfg.lr_scheduler_type, 0, total_updates)
    kl_ctl = (AdaptiveKLController(cfg.kl.init_beta, cfg.kl.target, cfg.kl.horizon) if cfg.kl.kind == "adaptive"
              else FixedKLController(cfg.kl.init_beta))
    baseline = RunningBaseline(cfg.baseline_decay)

    # resume: trainable weights, optimizers, schedulers, controller, baseline, RNG, data position
    start_step, data_pos = 0, 0
    if ckpt is not None:
        again = "start the run again without --resume"
        policy.load_state_dict(load_tensors(ckpt / "policy_trainable.safetensors", again), strict=False)
        if value is not None:
            value.load_state_dict(load_tensors(ckpt / "value_trainable.safetensors", again), strict=False)
            v_opt.load_state_dict(state["value_optimizer"])
            v_sched.load_state_dict(state["value_scheduler"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        kl_ctl.load_state_dict(state["kl_controller"])
        baseline.load_state_dict(state["baseline"])
        set_rng_state(state["rng"][acc.process_index])
        start_step, data_pos = state["step"], state["data_pos"]
        log.warning("resuming from %s (step %d)", ckpt, start_step)
    policy_ddp, opt = acc.prepare(policy, opt)
    if value is not None:
        value_ddp, v_opt = acc.prepare(value, v_opt)

    metrics = MetricsWriter(out, resume_step=start_step if ckpt is not None else None, enabled=acc.is_main_process,
                            trackers=make_trackers(cfg.report_to, out, to_dict(cfg)) if acc.is_main_process else ())
    samples_path = out / "samples.jsonl"
    if acc.is_main_process:
        if ckpt is not None and samples_path.exists():
            kept = [r for r in read_jsonl(samples_path) if r["step"] <= start_step]
            samples_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif ckpt is None and samples_path.exists():
            samples_path.unlink()
    bar = progress(total=cfg.max_steps, initial=start_step, desc=f"rl {cfg.algo}", unit="step")
    eos_id, pad_id = tok.eos_token_id, tok.pad_token_id
    k = cfg.rloo_k if cfg.algo == "rloo" else 1
    T = cfg.temperature
    # one minibatch: take the old policy's log-probs (and values) from the first training
    # forward instead of a separate no-grad forward of the same weights on the same batch
    reuse_forward = cfg.reuse_forward and cfg.num_minibatches == 1
    run_t0 = time.perf_counter()

    for step in range(start_step + 1, cfg.max_steps + 1):
        t_step = time.perf_counter()
        timings: dict[str, float] = {}

        # step 1. a batch of train prompts (this process's slice), left-padded; RLOO: k copies each
        idx = prompt_indices(len(prompts), data_pos + acc.process_index * per_proc, per_proc, cfg.seed)
        data_pos += cfg.batch_size
        idx = [i for i in idx for _ in range(k)]  # the k samples of a prompt are contiguous
        q, q_mask = pad_batch([prompt_ids[i] for i in idx], pad_id, "left")  # (N, Tp)
        q, q_mask, Tp = q.to(device), q_mask.to(device), q.shape[1]

        # step 2. generate with the KV cache, truncate after EOS
        t0 = time.perf_counter()
        with acc.autocast():
            smp = sample(acc.unwrap_model(policy_ddp).lm, q, q_mask, cfg.max_response_tokens, T, eos_id, pad_id,
                         cfg.top_k, cfg.top_p, share_prompts=cfg.share_prompts)
        resp, r_mask = smp.response, smp.mask  # (N, R)
        qr = torch.cat([q, resp], 1)  # (N, Tp + R)
        qr_mask = torch.cat([q_mask, r_mask], 1)
        timings["time/generate"] = time.perf_counter() - t0

        # step 3. score the policy's own tokens; missing-EOS penalty
        t0 = time.perf_counter()
        with acc.autocast():
            raw_scores = scorer(idx, resp.cpu(), r_mask.cpu()).to(device)  # (N,)
        raw_scores = gain * raw_scores + bias  # reward_normalize; the identity by default
        scores = apply_missing_eos_score(raw_scores, smp.has_eos, cfg.missing_eos_score)
        timings["time/score"] = time.perf_counter() - t0

        # step 4. reference log-probs (LoRA: adapter disabled), and the policy's own
        t0 = time.perf_counter()
        N = qr.shape[0]
        with torch.no_grad(), acc.autocast():
            base = acc.unwrap_model(policy_ddp)
            if ref_lm is not None:
                ref_logits, _ = response_logits(ref_lm, qr, qr_mask, Tp, share_prompts=share)
            else:
                with base.lm.disable_adapter():
                    ref_logits, _ = response_logits(base.lm, qr, qr_mask, Tp, share_prompts=share)
            ref_logp = logprobs_from_logits(ref_logits, resp, T)
            del ref_logits
        timings["time/reference"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = None  # with one minibatch, the first training forward is the old policy's (step 7)
        if reuse_forward:
            # the first epoch's order, drawn here instead of in step 7 (nothing between
            # uses the RNG, so the permutation is the same)
            perm = torch.randperm(N)
            b = perm.to(device)
            with acc.autocast():
                new_logits, v_pred = policy_ddp(qr[b], qr_mask[b], Tp)
                new_logp = logprobs_from_logits(new_logits, resp[b], T)
                del new_logits
                if value is not None:
                    v_pred = value_ddp(qr[b], qr_mask[b], Tp)
            first = (perm, new_logp, v_pred)
            old_logp = torch.empty_like(new_logp)
            old_logp[b] = new_logp.detach()
            old_values = None
            if v_pred is not None:
                old_values = torch.empty_like(v_pred)
                old_values[b] = v_pred.detach()
        else:
            with torch.no_grad(), acc.autocast():
                logits, old_values = base(qr, qr_mask, Tp)
                old_logp = logprobs_from_logits(logits, resp, T)
                del logits
                # step 5. values (PPO)
                if value is not None:
                    old_values = acc.unwrap_model(value_ddp)(qr, qr_mask, Tp)
        timings["time/policy_forward"] = time.perf_counter() - t0
        m = r_mask.float()
        old_logp, ref_logp = old_logp * m, ref_logp * m

        # step 6. rewards and advantages
        beta = kl_ctl.value
        reward_beta = 0.0 if cfg.kl.in_loss else beta  # kl.in_loss: the penalty is a loss term (step 7)
        if cfg.algo == "ppo":
            rewards, non_score = shaped_rewards(scores, old_logp, ref_logp, r_mask, reward_beta)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, r_mask, shift_mean=False)
            old_values = old_values * m
            adv, returns = gae(rewards, old_values, r_mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = masked_whiten(adv, r_mask)
        else:
            seq_r = sequence_rewards(scores, old_logp, ref_logp, r_mask, reward_beta)  # (N,)
            if cfg.algo == "rloo":
                adv = rloo_advantages(seq_r, k)
            elif cfg.reinforce_baseline == "mean":
                adv = mean_baseline_advantages(seq_r)
            else:
                adv = baseline.advantages(seq_r)
            if cfg.whiten_advantages and adv.numel() > 1:
                if cfg.algo == "reinforce" and cfg.reinforce_baseline == "running":
                    adv = scale_advantages(adv)  # centring would swap the running baseline for the batch mean
                else:
                    adv = masked_whiten(adv[None], torch.ones_like(adv[None]))[0]

        # step 7. optimisation epochs over shuffled minibatches
        t0 = time.perf_counter()
        mb = N // cfg.num_minibatches
        stats: dict[str, list[float]] = {}
        for _epoch in range(epochs):
            if first is None:
                perm = torch.randperm(N)
            for s in range(0, N, mb):
                b = perm[s:s + mb].to(device)
                with acc.autocast():
                    if first is not None:  # the forward of step 4, on the same weights
                        _, new_logp, v_pred = first
                        first = None
                    else:
                        new_logits, v_pred = policy_ddp(qr[b], qr_mask[b], Tp)
                        new_logp = logprobs_from_logits(new_logits, resp[b], T)
                        del new_logits
                        if value is not None:
                            v_pred = value_ddp(qr[b], qr_mask[b], Tp)
                    if cfg.algo == "ppo":
                        pg_loss, st = ppo_policy_loss(new_logp, old_logp[b], adv[b], r_mask[b], cfg.clip)
                        vf_loss, vf_clip = ppo_value_loss(v_pred, old_values[b], returns[b], r_mask[b], cfg.value_clip)
                        loss = pg_loss + cfg.vf_coef * vf_loss
                        st = {**st, "value_loss": vf_loss.detach(), "value_clipfrac": vf_clip}
                    else:
                        pg_loss, st = sequence_policy_loss(new_logp, old_logp[b], adv[b], r_mask[b], cfg.clip)
                        loss = pg_loss
                    if cfg.kl.in_loss:  # beta * k3 with its gradient (GRPO); summed per sequence off PPO
                        kl_loss = kl_penalty_loss(new_logp, ref_logp[b], r_mask[b], per_sequence=cfg.algo != "ppo")
                        loss = loss + beta * kl_loss
                        st["kl_loss"] = kl_loss.detach()
                opt.zero_grad(set_to_none=True)
                if v_opt is not None:
                    v_opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                sched.step()
                if v_opt is not None:
                    v_opt.step()
                    v_sched.step()
                st["policy_loss"] = pg_loss.detach()
                for key, val in st.items():
                    stats.setdefault(key, []).append(float(val))
        timings["time/train"] = time.perf_counter() - t0

        # step 8. metrics (averaged over processes), KL controller, samples, checkpoint
        with torch.no_grad():
            kl_seq = kl_per_token(old_logp, ref_logp, "k1").mul(m).sum(1)  # (N,)
            local = {
                "objective/score": raw_scores.mean(),
                "objective/kl": kl_seq.mean(),
                "objective/entropy": (-old_logp).sum(1).mean(),
                "objective/rlhf_reward": (scores - beta * kl_seq).mean(),
                "gen/length": m.sum(1).mean(),
                "gen/eos_rate": smp.has_eos.float().mean(),
            }
            if cfg.algo == "ppo":
                local["ppo/explained_variance"] = explained_variance(old_values, returns, r_mask)
        names = list(local) + [f"ppo/{n}" for n in stats if n != "ratio_max"]
        vals = torch.stack([torch.as_tensor(float(v)) for v in local.values()]
                           + [torch.tensor(float(np.mean(v))) for n, v in stats.items() if n != "ratio_max"])
        ratio_max = torch.tensor([max(stats["ratio_max"])], dtype=torch.float32)
        if acc.num_processes > 1:
            vals = acc.reduce(vals.to(device), reduction="mean").cpu()
            ratio_max = acc.gather(ratio_max.to(device)).max().reshape(1).cpu()
        row: dict[str, Any] = dict(zip(names, vals.tolist()))
        row["ppo/ratio_max"] = float(ratio_max[0])
        row["kl/beta"] = beta
        row["lr"] = sched.get_last_lr()[0]
        row["episodes"] = step * cfg.batch_size * k
        kl_ctl.update(row["objective/kl"], cfg.batch_size * k)
        timings["time/step"] = time.perf_counter() - t_step
        row.update(timings)
        metrics.log(step, row)
        bar.update(1)
        bar.set_postfix(score=f"{row['objective/score']:.3f}", kl=f"{row['objective/kl']:.2f}")
        log.info("step %d/%d: score %.3f, kl %.3f, beta %.4f, length %.1f, %.1fs", step, cfg.max_steps,
                 row["objective/score"], row["objective/kl"], beta, row["gen/length"], row["time/step"])

        if acc.is_main_process and (step == 1 or step % cfg.sample_every == 0):
            with samples_path.open("a") as f:
                for i in range(min(cfg.samples_per_log, N)):
                    f.write(json.dumps({
                        "step": step, "prompt": prompts[idx[i]],
                        "response": tok.decode(resp[i][r_mask[i].bool()], skip_special_tokens=True),
                        "score": float(raw_scores[i]), "kl": float(kl_seq[i]), "has_eos": bool(smp.has_eos[i]),
                    }) + "\n")

        if cfg.save_steps and step % cfg.save_steps == 0 and step < cfg.max_steps:
            _checkpoint(acc, out, step, data_pos, policy_ddp, value_ddp if value is not None else None, opt, sched,
                        v_opt, v_sched, kl_ctl, baseline, reward_norm, cfg)
    bar.close()
    metrics.close()

    # the final policy: LoRA merged, a plain save_pretrained directory + tokenizer
    acc.wait_for_everyone()
    if acc.is_main_process:
        final_lm = acc.unwrap_model(policy_ddp).lm
        tok.padding_side = "right"
        with writing(out, "the final policy"):
            if is_peft(final_lm):  # the adapter too: peft's AutoPeftModelForCausalLM loads it on its base
                save_adapter(final_lm, out / "adapter", tok, cfg.policy)
            final_lm = merge_lora(final_lm)
            final_lm.save_pretrained(out)
            tok.save_pretrained(out)
        write_manifest(out, "rl", to_dict(cfg), inputs=[p for p in (cfg.policy, cfg.data, cfg.reward) if Path(p).exists()],
                       counts={"prompts": len(prompts), "steps": cfg.max_steps, "episodes": cfg.max_steps * cfg.batch_size * k,
                               "processes": acc.num_processes},
                       reward=scorer.name, reward_normalization=reward_norm,
                       seconds=round(time.perf_counter() - run_t0, 1),
                       example_prompt=render_prompt(tok, prompts[0], cfg.template, cfg.goal))
    acc.wait_for_everyone()
    return out


