"""``ambient rl``: policy optimisation against a reward model -- PPO, RLOO or REINFORCE.

    ambient rl --policy SFT_DIR --reward RM_DIR --data DATA_DIR --algo ppo --out OUT [--resume]

One iteration of :func:`train_rl` (the numbered comments in the loop are these steps):

1. take a batch of train-split prompts (left-padded, truncated from the left at
   ``max_prompt_tokens``); RLOO repeats each prompt ``rloo_k`` times;
2. generate with the KV cache (temperature 0.7, top-k off, top-p 1), truncate after EOS;
3. score prompt + response (the policy's own tokens) with the reward model (or a
   programmatic reward); replace the score of responses without EOS by ``missing_eos_score``;
4. reference log-probs from the frozen reference (with LoRA: the same model with the
   adapter disabled, so no second copy in memory); the policy's own log-probs too;
5. values (PPO): a separate value model (initialised from the reward model by default)
   or a value head on the policy;
6. shaped rewards ``-beta * KL_t`` plus the score at the last response token, advantages
   (GAE for PPO; leave-one-out over the k samples of a prompt for RLOO; a mean or running
   baseline for REINFORCE), whitened;
7. optimisation epochs over shuffled minibatches (PPO: 4 epochs, clip 0.2, value clip
   0.2, vf_coef 0.1; RLOO/REINFORCE: one on-policy pass);
8. update the KL controller; log metrics, samples and checkpoints.

Outputs in ``out``: the final policy (``save_pretrained``, loadable with
``AutoModelForCausalLM.from_pretrained(out)``) and its tokenizer, ``metrics.jsonl``,
``samples.jsonl``, ``manifest.json`` and ``checkpoints/step-N`` (everything needed to
continue bit-for-bit with ``--resume``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import (latest_checkpoint, load_state, load_tensors, rng_state, save_checkpoint,
                                     save_tensors, seed_everything, set_rng_state)
from ambient_rlhf.cli import common_parser, parse_stage
from ambient_rlhf.config import to_dict
from ambient_rlhf.io import write_manifest
from ambient_rlhf.logging import MetricsWriter, get_logger, progress, read_jsonl
from ambient_rlhf.rl.advantages import RunningBaseline, gae, mean_baseline_advantages, rloo_advantages
from ambient_rlhf.rl.kl_control import AdaptiveKLController, FixedKLController
from ambient_rlhf.rl.logprobs import logprobs_from_logits
from ambient_rlhf.rl.losses import explained_variance, ppo_policy_loss, ppo_value_loss, sequence_policy_loss
from ambient_rlhf.rl.masking import masked_whiten
from ambient_rlhf.rl.rewards import apply_missing_eos_score, kl_per_token, sequence_rewards, shaped_rewards
from ambient_rlhf.train.common import LoraSettings, apply_lora, make_optimizer, make_scheduler, merge_lora, setup_accelerator
from ambient_rlhf.models.tokenize import TIERS
from ambient_rlhf.train.rollout import PolicyWithValue, ValueModel, response_logits, sample

log = get_logger("rl")


@dataclass
class KLSettings:
    kind: Literal["adaptive", "fixed"] = "adaptive"
    """``adaptive``: the proportional controller of Ziegler et al. 2019 steers the KL toward
    ``target``; ``fixed``: beta stays at ``init_beta`` (the 2024 N details' TL;DR setting)."""
    init_beta: float = 0.15
    """Initial KL coefficient beta. 0.15 with the adaptive controller is the 2019 setting for
    the stylistic tasks (lm-human-preferences ``launch.py``: ``rewards.kl_coef=0.15``)."""
    target: float = 6.0
    """Target KL (nats per response, summed over tokens) of the adaptive controller; 6.0
    as in lm-human-preferences ``launch.py`` (``rewards.adaptive_kl.target``)."""
    horizon: int = 10000
    """Adaptive controller horizon in episodes (rollouts): beta moves by at most
    20% * episodes/horizon per step. 10000, the 2019 default (``AdaptiveKLParams``)."""
    estimator: Literal["k1", "k3"] = "k1"
    """KL estimator in the reward penalty. ``k1 = log p - log q`` is the 2019 penalty;
    ``k3`` (Schulman 2020) is non-negative with lower variance. ``objective/kl`` always
    reports k1, the quantity the adaptive controller is defined on."""


@dataclass
class RLConfig:
    policy: str = "default"
    """Initial policy (normally the SFT output directory) and the frozen reference."""
    reward: str = ""
    """Reward: a reward-model directory written by ``ambient rm`` (must share the policy's
    tokenizer), or a programmatic reward: ``token-count:<ids>`` (how many response
    tokens have an id in ``<ids>``, e.g. ``13`` or ``0-4095,13``) or
    ``python:<module>:<function>`` with
    ``function(prompts: list[str], responses: list[str]) -> list[float]``."""
    data: str = ""
    """Data directory (``ambient data build``); prompts are the distinct prompts of its
    train split."""
    out: str = ""
    """Output directory (policy, metrics, samples, checkpoints)."""
    algo: Literal["ppo", "rloo", "reinforce"] = "ppo"
    """``ppo`` (Ziegler et al. 2019; Ouyang et al. 2022), ``rloo`` (REINFORCE leave-one-out,
    Ahmadian et al. 2024) or ``reinforce`` (Williams 1992 with a baseline)."""
    resume: bool = False
    """Continue from the latest checkpoint in ``out`` (starting fresh if there is none)."""
    overwrite: bool = False
    """Replace an existing ``out`` that is not being resumed."""
    steps: int = 100
    """Iterations (rollout batch + optimisation). A CPU-sized default; the 2019 runs used
    1M episodes / 512 per batch ~ 2000 iterations."""
    batch_size: int = 16
    """Prompts per iteration, over all processes (RLOO samples ``rloo_k`` responses for
    each). The 2019 and N-details runs used 512 rollouts; 16 is a laptop-sized default
    (on a CPU, SmolLM2-135M with 4 prompts x 32 tokens takes ~45 s per PPO step)."""
    num_minibatches: int = 1
    """Minibatches per epoch (one optimizer step each); the rollouts of a process are
    split evenly. 1, the 2019 default (``nminibatches=1``)."""
    rloo_k: int = 4
    """RLOO: samples per prompt for the leave-one-out baseline; 4, as in Ahmadian et al.
    2024 (k=4 recovered most of the gain of larger k)."""
    reinforce_baseline: Literal["mean", "running"] = "mean"
    """REINFORCE baseline: the batch mean reward, or a moving average of past batch means
    (``baseline_decay``); both keep the gradient unbiased up to O(1/B) (Williams 1992)."""
    baseline_decay: float = 0.9
    """Decay of the running REINFORCE baseline (weight of the past per step)."""
    response_length: int = 64
    """Maximum new tokens per response. The 2019 summarisation tasks used 75, the N details
    53; 64 keeps CPU runs short. Responses are truncated after the first EOS."""
    max_prompt_tokens: int = 256
    """Prompt budget in tokens; longer prompts lose text from the left (the end of a
    question is nearest the answer). 256 is this project's generation default."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """Prompt template (``models.tokenize.render_prompt``); must match the SFT stage."""
    goal: str | None = None
    """Quality tier whose goal token is appended to each prompt (for a tier-conditioned SFT
    policy, e.g. ``good``); the reward model scores the prompt without it."""
    temperature: float = 0.7
    """Sampling temperature; log-probs are computed at the same temperature. 0.7, the 2019
    books/TL;DR setting (``policy.temperature``)."""
    top_p: float = 1.0
    """Nucleus sampling; 1.0 = off, so samples come from the policy's own distribution
    (required for the policy-gradient estimate to be unbiased)."""
    top_k: int = 0
    """Top-k filtering; 0 = off (same reason as ``top_p``)."""
    missing_eos_score: float | None = -1.0
    """Score given to responses that produced no EOS within ``response_length``, replacing
    the reward-model score (``penalty_reward_value=-1`` in lm-human-preferences; the N
    details do the same). ``null`` turns it off."""
    kl: KLSettings = field(default_factory=KLSettings)
    """KL penalty to the reference policy."""
    ppo_epochs: int = 4
    """PPO: optimisation epochs over each rollout batch (2019 ``noptepochs=4``). RLOO and
    REINFORCE make one on-policy pass (Ahmadian et al. 2024)."""
    clip: float = 0.2
    """Policy ratio clip range (2019 ``cliprange=0.2``); RLOO/REINFORCE clip the sequence
    ratio the same way (it is 1 on the first minibatch)."""
    value_clip: float = 0.2
    """Value clip range around the rollout values (2019 ``cliprange_value=0.2``)."""
    vf_coef: float = 0.1
    """Weight of the value loss (2019 ``vf_coef=0.1``)."""
    gamma: float = 1.0
    """Discount; 1 (2019), an episode is one response."""
    lam: float = 0.95
    """GAE lambda (2019 ``lam=0.95``)."""
    whiten_rewards: bool = True
    """PPO: scale the shaped rewards to unit variance, keeping their mean, before GAE (2019
    ``whiten_rewards=True``, ``whiten(rewards, shift_mean=False)``)."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, variance 1 over the batch (2019 ``whiten(advantages)``;
    N details)."""
    value_model: Literal["reward", "policy", "shared"] = "reward"
    """PPO value function: ``reward`` = a separate model initialised from the reward model
    (Stiennon et al. 2020, N details) -- from the policy when the reward is programmatic;
    ``policy`` = a separate model initialised from the policy; ``shared`` = a value head on
    the policy (one body, as in the 2019 code; less memory).  A value head that does not
    come from a reward model starts at zero, so the first advantages are the returns
    rather than noise from random values."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA on the policy (and a separate value model). The reference is then the same
    model with the adapter disabled."""
    lr: float = 1e-5
    """Peak learning rate of policy and value model (2019 books tasks ``ppo.lr=1e-5``)."""
    adam_eps: float = 1e-5
    """Adam epsilon; 1e-5 as in the PyTorch reproduction of the 2019 code (N details)."""
    schedule: Literal["linear", "constant", "cosine"] = "linear"
    """LR schedule over all optimizer steps; linear decay to 0 as in 2019
    (``lrnow = lr * (1 - frac)``)."""
    seed: int = 1
    """Seed of sampling, shuffling and initialisation (2019 launch ``run.seed=1``)."""
    sample_every: int = 10
    """Write ``samples_per_log`` samples (prompt, response, score, KL) to ``samples.jsonl``
    every this many steps (and at step 1)."""
    samples_per_log: int = 4
    """Samples written each time (2019 ``print_samples`` showed 3)."""
    save_every: int = 50
    """Checkpoint every this many steps (0 = only the final model)."""
    keep_checkpoints: int = 2
    """Checkpoints kept (older ones deleted)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto`` = bf16 autocast on a GPU that supports it, float32 on CPU."""


# ---- rewards -------------------------------------------------------------------------------
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
    token budgets -- the text it was trained on, not the policy's prompt)."""

    def __init__(self, rm, prompts: list[str], community: str | None, device, drop_ids: list[int] = ()):
        from ambient_rlhf.models.reward_inputs import RewardFunction

        self.fn = RewardFunction(rm, device=device, batch_size=64, drop_ids=drop_ids)
        self.prompts, self.community = prompts, community
        self.name = "reward-model"

    @torch.no_grad()
    def __call__(self, prompt_idx, response, mask):
        resp = [r[m.bool()].tolist() for r, m in zip(response, mask)]  # (B,) real tokens, EOS last if it ended
        return self.fn.tokens([self.prompts[i] for i in prompt_idx], resp, [self.community] * len(resp))


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
    from ambient_rlhf.models.heads import is_reward_dir, load_reward_model

    if not is_reward_dir(spec):
        raise AmbientError(f"reward={spec!r}: not a reward-model directory (train one with `ambient rm`), "
                           "nor token-count:<ids> / python:<module>:<fn>")
    rm = load_reward_model(spec)
    drop = policy_only_ids(rm.tokenizer, tokenizer)
    if drop is None:
        raise AmbientError(f"reward={spec}: the reward model's tokenizer differs from the policy's ({cfg.policy}); "
                           "train the reward model from the same base model as the policy")
    for p in rm.parameters():
        p.requires_grad_(False)
    rm.to(device)
    return RewardModelScorer(rm, prompts, community_name(cfg.data), device, drop), rm


# ---- data ----------------------------------------------------------------------------------
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


# ---- the trainer ---------------------------------------------------------------------------
def _validate(cfg: RLConfig, n_proc: int) -> None:
    for key in ("data", "out"):
        if not getattr(cfg, key):
            raise AmbientError(f"{key}: required")
    if cfg.batch_size % n_proc:
        raise AmbientError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({n_proc})")
    n_rollouts = cfg.batch_size // n_proc * (cfg.rloo_k if cfg.algo == "rloo" else 1)
    if n_rollouts % cfg.num_minibatches:
        raise AmbientError(f"num_minibatches={cfg.num_minibatches} must divide the rollouts per process ({n_rollouts})")
    if cfg.algo == "rloo" and cfg.rloo_k < 2:
        raise AmbientError("rloo_k must be >= 2 for RLOO")
    if cfg.temperature <= 0:
        raise AmbientError("temperature must be > 0")
    if cfg.goal is not None and cfg.goal not in TIERS:
        raise AmbientError(f"goal={cfg.goal!r}: expected one of {list(TIERS)} (or null)")


def train_rl(cfg: RLConfig) -> Path:
    """Run policy optimisation (see the module docstring for the steps); return ``cfg.out``."""
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer
    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.tokenize import encode_prompt, has_goal_tokens, render_prompt

    acc = setup_accelerator(mixed_precision=cfg.mixed_precision)
    _validate(cfg, acc.num_processes)
    out = Path(cfg.out)
    ckpt = latest_checkpoint(out) if cfg.resume else None
    if acc.is_main_process and ckpt is None and out.exists() and any(out.iterdir()):
        # a resumed run with no checkpoint yet starts over, but only in a directory that
        # holds nothing except what this stage writes before its first checkpoint
        ours = {"metrics.jsonl", "samples.jsonl", "checkpoints", "tensorboard"}
        restart = cfg.resume and all(p.name in ours for p in out.iterdir())
        if not (cfg.overwrite or restart):
            raise AmbientError(f"{out}: output directory exists; pass --resume to continue a run, "
                               "overwrite=true to replace it, or choose another --out")
        shutil.rmtree(out)
    acc.wait_for_everyone()
    out.mkdir(parents=True, exist_ok=True)
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
        ref_lm = load_causal_lm(cfg.policy).to(device).eval()
        ref_lm.requires_grad_(False)
    lm = apply_lora(lm, cfg.lora)
    policy = PolicyWithValue(lm, value_head=(cfg.algo == "ppo" and cfg.value_model == "shared")).to(device).eval()
    scorer, rm = make_scorer(cfg, tok, prompts, device)
    value = None
    if cfg.algo == "ppo" and cfg.value_model != "shared":
        if cfg.value_model == "reward" and rm is not None and isinstance(rm, ScalarHeadModel):
            vm = ScalarHeadModel.from_pretrained(cfg.reward)
        else:
            if cfg.value_model == "reward":
                log.warning("value_model=reward but the reward is not a single reward model; initialising the "
                            "value model from the policy")
            vm = ScalarHeadModel(load_causal_lm(cfg.policy))
            torch.nn.init.zeros_(vm.head.weight)  # a fresh head starts at V = 0 (see value_model)
        if vm.lm.get_input_embeddings().num_embeddings < len(tok):  # the policy's goal tokens
            vm.lm.resize_token_embeddings(len(tok), mean_resizing=True)
        vm.lm = apply_lora(vm.lm, cfg.lora)
        for p in vm.head.parameters():
            p.requires_grad_(True)
        value = ValueModel(vm).to(device).eval()

    # optimizers: one per trained model, linear decay over all optimizer steps (2019)
    per_proc = cfg.batch_size // acc.num_processes
    epochs = cfg.ppo_epochs if cfg.algo == "ppo" else 1
    total_updates = cfg.steps * epochs * cfg.num_minibatches
    opt = _adam(policy, cfg)
    sched = make_scheduler(opt, cfg.schedule, 0, total_updates)
    v_opt = v_sched = None
    if value is not None:
        v_opt = _adam(value, cfg)
        v_sched = make_scheduler(v_opt, cfg.schedule, 0, total_updates)
    kl_ctl = (AdaptiveKLController(cfg.kl.init_beta, cfg.kl.target, cfg.kl.horizon) if cfg.kl.kind == "adaptive"
              else FixedKLController(cfg.kl.init_beta))
    baseline = RunningBaseline(cfg.baseline_decay)

    # resume: trainable weights, optimizers, schedulers, controller, baseline, RNG, data position
    start_step, data_pos = 0, 0
    if ckpt is not None:
        state = load_state(ckpt)
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

    metrics = MetricsWriter(out, resume_step=start_step if ckpt is not None else None, enabled=acc.is_main_process)
    samples_path = out / "samples.jsonl"
    if acc.is_main_process:
        if ckpt is not None and samples_path.exists():
            kept = [r for r in read_jsonl(samples_path) if r["step"] <= start_step]
            samples_path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        elif ckpt is None and samples_path.exists():
            samples_path.unlink()
    bar = progress(total=cfg.steps, initial=start_step, desc=f"rl {cfg.algo}", unit="step")
    eos_id, pad_id = tok.eos_token_id, tok.pad_token_id
    k = cfg.rloo_k if cfg.algo == "rloo" else 1
    T = cfg.temperature
    run_t0 = time.perf_counter()

    for step in range(start_step + 1, cfg.steps + 1):
        t_step = time.perf_counter()
        timings: dict[str, float] = {}

        # step 1. a batch of train prompts (this process's slice), left-padded; RLOO: k copies each
        idx = prompt_indices(len(prompts), data_pos + acc.process_index * per_proc, per_proc, cfg.seed)
        data_pos += cfg.batch_size
        idx = [i for i in idx for _ in range(k)]  # the k samples of a prompt are contiguous
        seqs = [prompt_ids[i] for i in idx]
        Tp = max(len(s) for s in seqs)
        q = torch.full((len(seqs), Tp), pad_id, dtype=torch.long)
        q_mask = torch.zeros_like(q)
        for i, s in enumerate(seqs):
            q[i, Tp - len(s):] = torch.tensor(s)
            q_mask[i, Tp - len(s):] = 1
        q, q_mask = q.to(device), q_mask.to(device)

        # step 2. generate with the KV cache, truncate after EOS
        t0 = time.perf_counter()
        with acc.autocast():
            smp = sample(acc.unwrap_model(policy_ddp).lm, q, q_mask, cfg.response_length, T, eos_id, pad_id,
                         cfg.top_k, cfg.top_p)
        resp, r_mask = smp.response, smp.mask  # (N, R)
        qr = torch.cat([q, resp], 1)  # (N, Tp + R)
        qr_mask = torch.cat([q_mask, r_mask], 1)
        timings["time/generate"] = time.perf_counter() - t0

        # step 3. score the policy's own tokens; missing-EOS penalty
        t0 = time.perf_counter()
        with acc.autocast():
            raw_scores = scorer(idx, resp.cpu(), r_mask.cpu()).to(device)  # (N,)
        scores = apply_missing_eos_score(raw_scores, smp.has_eos, cfg.missing_eos_score)
        timings["time/score"] = time.perf_counter() - t0

        # step 4. reference log-probs (LoRA: adapter disabled), and the policy's own
        t0 = time.perf_counter()
        with torch.no_grad(), acc.autocast():
            base = acc.unwrap_model(policy_ddp)
            if ref_lm is not None:
                ref_logits, _ = response_logits(ref_lm, qr, qr_mask, Tp)
            else:
                with base.lm.disable_adapter():
                    ref_logits, _ = response_logits(base.lm, qr, qr_mask, Tp)
            ref_logp = logprobs_from_logits(ref_logits, resp, T)
            del ref_logits
            timings["time/reference"] = time.perf_counter() - t0
            t0 = time.perf_counter()
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
        if cfg.algo == "ppo":
            rewards, non_score = shaped_rewards(scores, old_logp, ref_logp, r_mask, beta, cfg.kl.estimator)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, r_mask, shift_mean=False)
            old_values = old_values * m
            adv, returns = gae(rewards, old_values, r_mask, cfg.gamma, cfg.lam)
            if cfg.whiten_advantages:
                adv = masked_whiten(adv, r_mask)
        else:
            seq_r = sequence_rewards(scores, old_logp, ref_logp, r_mask, beta, cfg.kl.estimator)  # (N,)
            if cfg.algo == "rloo":
                adv = rloo_advantages(seq_r, k)
            elif cfg.reinforce_baseline == "mean":
                adv = mean_baseline_advantages(seq_r)
            else:
                adv = baseline.advantages(seq_r)
            if cfg.whiten_advantages and adv.numel() > 1:
                adv = masked_whiten(adv[None], torch.ones_like(adv[None]))[0]

        # step 7. optimisation epochs over shuffled minibatches
        t0 = time.perf_counter()
        N = qr.shape[0]
        mb = N // cfg.num_minibatches
        stats: dict[str, list[float]] = {}
        for _epoch in range(epochs):
            perm = torch.randperm(N)
            for s in range(0, N, mb):
                b = perm[s:s + mb].to(device)
                with acc.autocast():
                    new_logits, v_pred = policy_ddp(qr[b], qr_mask[b], Tp)
                    new_logp = logprobs_from_logits(new_logits, resp[b], T)
                    del new_logits
                    if cfg.algo == "ppo":
                        pg_loss, st = ppo_policy_loss(new_logp, old_logp[b], adv[b], r_mask[b], cfg.clip)
                        if value is not None:
                            v_pred = value_ddp(qr[b], qr_mask[b], Tp)
                        vf_loss, vf_clip = ppo_value_loss(v_pred, old_values[b], returns[b], r_mask[b], cfg.value_clip)
                        loss = pg_loss + cfg.vf_coef * vf_loss
                        st = {**st, "value_loss": vf_loss.detach(), "value_clipfrac": vf_clip}
                    else:
                        loss, st = sequence_policy_loss(new_logp, old_logp[b], adv[b], r_mask[b], cfg.clip)
                        pg_loss = loss
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
        log.info("step %d/%d: score %.3f, kl %.3f, beta %.4f, length %.1f, %.1fs", step, cfg.steps,
                 row["objective/score"], row["objective/kl"], beta, row["gen/length"], row["time/step"])

        if acc.is_main_process and (step == 1 or step % cfg.sample_every == 0):
            with samples_path.open("a") as f:
                for i in range(min(cfg.samples_per_log, N)):
                    f.write(json.dumps({
                        "step": step, "prompt": prompts[idx[i]],
                        "response": tok.decode(resp[i][r_mask[i].bool()], skip_special_tokens=True),
                        "score": float(raw_scores[i]), "kl": float(kl_seq[i]), "has_eos": bool(smp.has_eos[i]),
                    }) + "\n")

        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            _checkpoint(acc, out, step, data_pos, policy_ddp, value_ddp if value is not None else None, opt, sched,
                        v_opt, v_sched, kl_ctl, baseline, cfg)
    bar.close()
    metrics.close()

    # the final policy: LoRA merged, a plain save_pretrained directory + tokenizer
    acc.wait_for_everyone()
    if acc.is_main_process:
        final_lm = merge_lora(acc.unwrap_model(policy_ddp).lm)
        final_lm.save_pretrained(out)
        tok.padding_side = "right"
        tok.save_pretrained(out)
        write_manifest(out, "rl", to_dict(cfg), inputs=[p for p in (cfg.policy, cfg.data, cfg.reward) if Path(p).exists()],
                       counts={"prompts": len(prompts), "steps": cfg.steps, "episodes": cfg.steps * cfg.batch_size * k,
                               "processes": acc.num_processes},
                       reward=scorer.name, seconds=round(time.perf_counter() - run_t0, 1),
                       example_prompt=render_prompt(tok, prompts[0], cfg.template, cfg.goal))
    acc.wait_for_everyone()
    return out


def _adam(module: torch.nn.Module, cfg: RLConfig) -> torch.optim.Optimizer:
    """Adam (AdamW with no weight decay) over the trainable parameters, fused kernel, eps
    ``cfg.adam_eps`` (1e-5, as lm-human-preferences and the N-details report use)."""
    return make_optimizer(module, lr=cfg.lr, weight_decay=0.0, eps=cfg.adam_eps)


def _trainable(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu() for n, t in module.state_dict(keep_vars=True).items() if n in names}


def _checkpoint(acc, out, step, data_pos, policy_ddp, value_ddp, opt, sched, v_opt, v_sched, kl_ctl, baseline, cfg):
    from accelerate.utils import gather_object

    rngs = gather_object([rng_state()]) if acc.num_processes > 1 else [rng_state()]
    if acc.is_main_process:
        state = {
            "step": step, "data_pos": data_pos, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "kl_controller": kl_ctl.state_dict(), "baseline": baseline.state_dict(), "rng": rngs,
            "config": to_dict(cfg),
        }
        if v_opt is not None:
            state["value_optimizer"] = v_opt.state_dict()
            state["value_scheduler"] = v_sched.state_dict()

        def save_models(d: Path) -> None:
            save_tensors(d / "policy_trainable.safetensors", _trainable(acc.unwrap_model(policy_ddp)))
            if value_ddp is not None:
                save_tensors(d / "value_trainable.safetensors", _trainable(acc.unwrap_model(value_ddp)))

        save_checkpoint(out, step, state, save_models=save_models, keep=cfg.keep_checkpoints)
    acc.wait_for_everyone()


# ---- command line --------------------------------------------------------------------------
def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ambient rl", parents=[common_parser()],
                                description="Policy optimisation against a reward model (PPO, RLOO, REINFORCE).")
    p.add_argument("--policy", help="initial policy / reference (SFT output directory or model name)")
    p.add_argument("--reward", help="reward-model directory, token-count:<ids> or python:<module>:<fn>")
    p.add_argument("--data", help="data directory (prompts of the train split)")
    p.add_argument("--algo", choices=["ppo", "rloo", "reinforce"])
    p.add_argument("--out", help="output directory")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    args, cfg = parse_stage(p, argv, RLConfig, values=("policy", "reward", "data", "algo", "out"),
                            switches=("resume",))
    if cfg is None:
        return 0
    out = train_rl(cfg)
    print(out)
    return 0
