"""What the RL loop builds before its first step: the prompt stream, the value model, the
optimizers, ``reward_normalize=reference``, and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import rng_state, save_checkpoint, save_tensors
from ambient_rlhf.config import to_dict
from ambient_rlhf.logging import get_logger
from ambient_rlhf.rl.rewards import fold_affine, reference_normalization
from ambient_rlhf.train.common import apply_lora, make_optimizer
from ambient_rlhf.train.rollout import PolicyWithValue, ValueModel, sample
from ambient_rlhf.train.rl.config import RLConfig
from ambient_rlhf.train.rl.scorers import Scorer

log = get_logger("rl")


def load_prompts(data_dir: str) -> list[str]:
    """Distinct prompts of the train split, in thread order (data/schema.py contract)."""
    import pandas as pd

    from ambient_rlhf.data.schema import RESPONSES_FILE

    path = Path(data_dir) / RESPONSES_FILE
    if not path.is_file():
        raise AmbientError(f"data={data_dir}: no {RESPONSES_FILE}; give a directory written by `ambient data build`")
    df = pd.read_parquet(path, columns=["thread_id", "prompt", "split"])
    df = df[df["split"] == "train"].drop_duplicates("thread_id").sort_values("thread_id", kind="stable")
    prompts = [p for p in df["prompt"].tolist() if isinstance(p, str) and p.strip()]
    if not prompts:
        raise AmbientError(f"{path}: no train-split prompts")
    return prompts


def prompt_indices(n_prompts: int, start: int, count: int, seed: int) -> list[int]:
    """Prompts ``start .. start+count-1`` of an endless stream of shuffled epochs.

    The order of epoch e is ``permutation(seed + e)``, so a data position (one integer)
    fully determines what comes next -- which is what a checkpoint stores."""
    out = []
    for pos in range(start, start + count):
        epoch, i = divmod(pos, n_prompts)
        out.append(int(np.random.default_rng(seed + epoch).permutation(n_prompts)[i]))
    return out


@torch.no_grad()
def _reference_normalization(cfg: RLConfig, acc, ref_lm, policy: PolicyWithValue, scorer: Scorer,
                             prompt_ids: list[list[int]], tok) -> dict[str, Any]:
    """``reward_normalize=reference``: gain and bias from reference-policy samples.

    The first ``reward_normalize_samples`` prompts of the training stream (each process
    takes its share, in batches of its per-step batch), one response each from the
    reference (with LoRA: the policy with the adapter off), scored; the scores of all
    processes give ``gain, bias`` (``rl.rewards.reference_normalization``)."""
    from ambient_rlhf.models.tokenize import pad_batch

    share = -(-cfg.reward_normalize_samples // acc.num_processes)  # ceil
    chunk = cfg.batch_size // acc.num_processes
    order = prompt_indices(len(prompt_ids), acc.process_index * share, share, cfg.seed)
    out = []
    for s in range(0, share, chunk):
        idx = order[s:s + chunk]
        q, q_mask = pad_batch([prompt_ids[i] for i in idx], tok.pad_token_id, "left")
        q, q_mask = q.to(acc.device), q_mask.to(acc.device)
        with acc.autocast():
            args = (q, q_mask, cfg.max_response_tokens, cfg.temperature, tok.eos_token_id, tok.pad_token_id, cfg.top_k,
                    cfg.top_p)
            if ref_lm is not None:
                smp = sample(ref_lm, *args)
            else:
                with policy.lm.disable_adapter():
                    smp = sample(policy.lm, *args)
            out.append(scorer(idx, smp.response.cpu(), smp.mask.cpu()).float())
    scores = torch.cat(out).to(acc.device)
    if acc.num_processes > 1:
        scores = acc.gather(scores)
    scores = scores.cpu().double()
    try:
        gain, bias = reference_normalization(scores)
    except ValueError as e:
        raise AmbientError(f"reward_normalize=reference: {e}; the reward does not tell the reference policy's "
                           "responses apart -- use reward_normalize=none or more reward_normalize_samples") from None
    log.info("reward_normalize=reference: %d reference scores, mean %.4g, std %.4g -> gain %.4g, bias %.4g",
             scores.numel(), float(scores.mean()), 1 / gain, gain, bias)
    return {"mode": "reference", "samples": int(scores.numel()), "reference_mean": float(scores.mean()),
            "reference_std": 1.0 / gain, "gain": gain, "bias": bias}


def _value_model(cfg: RLConfig, rm, n_tokens: int, gain: float, bias: float) -> ValueModel:
    """The separate PPO value model: a body and a **one-output** head read at every response
    position.

    ``value_model=reward`` with a single reward model: its body, and its head when that is a
    scalar head, moved to the scale of the scores RL sees.  The RL score of an output ``y``
    is ``gain * (y - norm_mean) / norm_std + bias`` (the reward model's normalisation, then
    ``reward_normalize``), so the head becomes ``w * s``, ``b * s + t`` with
    ``s = gain / norm_std`` and ``t = bias - gain * norm_mean / norm_std``.  A ``tiers``
    reward model has three outputs and its reward, the expected tier value
    ``sum(softmax(z) * values)``, is not linear in them, so no one-output head reproduces
    it: the value head starts at zero (V = 0).  Otherwise the body is the policy's and the
    head starts at zero."""
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm

    if cfg.value_model == "reward" and isinstance(rm, ScalarHeadModel):
        vm = ScalarHeadModel.from_pretrained(cfg.reward)
        if vm.kind == "scalar":
            scale = gain / vm.norm_std
            with torch.no_grad():
                w, b = fold_affine(vm.head.weight, vm.head.bias, scale, bias - scale * vm.norm_mean)
                vm.head.weight.copy_(w)
                vm.head.bias.copy_(b)
            vm.set_normalization(0.0, 1.0)
        else:
            dtype = vm.head.weight.dtype
            vm.kind, vm.head = "scalar", torch.nn.Linear(vm.head.in_features, 1, dtype=dtype)
            torch.nn.init.zeros_(vm.head.weight)
            torch.nn.init.zeros_(vm.head.bias)
    else:
        if cfg.value_model == "reward":
            log.warning("value_model=reward but the reward is not a single reward model over the policy's "
                        "vocabulary; initialising the value model from the policy")
        vm = ScalarHeadModel(load_causal_lm(cfg.policy))
        torch.nn.init.zeros_(vm.head.weight)  # a fresh head starts at V = 0 (see value_model)
    if vm.lm.get_input_embeddings().num_embeddings < n_tokens:  # the policy's goal tokens
        vm.lm.resize_token_embeddings(n_tokens, mean_resizing=True)
    vm.lm = apply_lora(vm.lm, cfg.lora)
    for p in vm.head.parameters():
        p.requires_grad_(True)
    return ValueModel(vm)


def _adam(module: torch.nn.Module, cfg: RLConfig, lr: float | None = None) -> torch.optim.Optimizer:
    """Adam (AdamW with no weight decay) over the trainable parameters, fused kernel, eps
    ``cfg.adam_epsilon`` (1e-5, as lm-human-preferences and the N-details report use);
    ``lr`` defaults to ``cfg.learning_rate``."""
    return make_optimizer(module, lr=cfg.learning_rate if lr is None else lr, weight_decay=0.0, eps=cfg.adam_epsilon)


def _trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu() for n, t in module.state_dict(keep_vars=True).items() if n in names}


def _checkpoint(acc, out, step, data_pos, policy_ddp, value_ddp, opt, sched, v_opt, v_sched, kl_ctl, baseline,
                reward_norm, cfg):
    from accelerate.utils import gather_object

    rngs = gather_object([rng_state()]) if acc.num_processes > 1 else [rng_state()]
    if acc.is_main_process:
        state = {
            "step": step, "data_pos": data_pos, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "kl_controller": kl_ctl.state_dict(), "baseline": baseline.state_dict(), "rng": rngs,
            "reward_normalization": reward_norm,
            "config": to_dict(cfg),
        }
        if v_opt is not None:
            state["value_optimizer"] = v_opt.state_dict()
            state["value_scheduler"] = v_sched.state_dict()

        def save_models(d: Path) -> None:
            save_tensors(d / "policy_trainable.safetensors", _trainable(acc.unwrap_model(policy_ddp)))
            if value_ddp is not None:
                save_tensors(d / "value_trainable.safetensors", _trainable(acc.unwrap_model(value_ddp)))

        save_checkpoint(out, step, state, save_models=save_models, keep=cfg.save_total_limit)
    acc.wait_for_everyone()


