"""``ambient rl``'s configuration: :class:`RLConfig` (with :class:`KLSettings`), validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from ambient_rlhf import AmbientError
from ambient_rlhf.config import Bound, above, at_least, between, check_bounds
from ambient_rlhf.train.common import LoraSettings, PromptTuningSettings
from ambient_rlhf.data.schema import TIERS


@dataclass
class KLSettings:
    kind: Literal["adaptive", "fixed"] = "adaptive"
    """``adaptive``: the proportional controller of Ziegler et al. 2019 steers the KL toward
    ``target``; ``fixed``: beta stays at ``init_beta`` (the 2024 N details' TL;DR setting)."""
    init_beta: Annotated[float, at_least(0)] = 0.15
    """Initial KL coefficient beta. 0.15 with the adaptive controller is the 2019 setting for
    the stylistic tasks (lm-human-preferences ``launch.py``: ``rewards.kl_coef=0.15``)."""
    target: Annotated[float, above(0)] = 6.0
    """Target KL (nats per response, summed over tokens) of the adaptive controller; 6.0
    as in lm-human-preferences ``launch.py`` (``rewards.adaptive_kl.target``)."""
    horizon: Annotated[int, at_least(1)] = 10000
    """Adaptive controller horizon in episodes (rollouts): beta moves by at most
    20% * episodes/horizon per step. 10000, the 2019 default (``AdaptiveKLParams``)."""
    estimator: Literal["k1", "k3"] = "k1"
    """KL estimator of the penalty: ``k1 = log p - log q`` per token in the reward (the 2019
    and TRL penalty), or ``k3 = q/p - 1 - log(q/p)`` (Schulman 2020) as a loss term, which
    needs ``in_loss=true``: in the reward k3's policy gradient is grad KL(p||q) - grad
    KL(q||p) and can push the policy away from the reference (docs/rl.md).
    ``objective/kl`` always reports k1, the quantity the adaptive controller is defined on."""
    in_loss: bool = False
    """``false``: the penalty ``-beta * k1`` is part of each token's reward (2019, TRL PPO).
    ``true``: ``beta * k3`` is added to the policy loss and differentiated through log p
    (GRPO, Shao et al. 2024); the reward then carries no KL.  Needs ``estimator=k3`` (k1 in
    the loss has expected gradient 0)."""


@dataclass
class RLConfig:
    RENAMED: ClassVar[dict] = {"lr": "learning_rate", "schedule": "lr_scheduler_type", "steps": "max_steps",
                               "adam_eps": "adam_epsilon", "save_every": "save_steps",
                               "keep_checkpoints": "save_total_limit", "response_length": "max_response_tokens"}
    """Old key names, refused with the new name (``config.upgrade_keys``)."""

    policy: str = "default"
    """Initial policy (normally the SFT output directory) and, unless ``reference`` is
    given, the frozen reference."""
    reference: str = ""
    """Frozen KL reference when it is not the initial policy (empty = ``policy``).  The
    later rounds of ``ambient run rounds=N`` start from the previous round's policy and
    keep the KL to the SFT model.  Not with LoRA (there the reference is the policy with
    its adapter off)."""
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
    """Continue the run in ``out`` from its latest checkpoint (starting fresh if there is
    none); only a run of the same config is continued, a finished one is left as it is
    (``ambient_rlhf.outdir``)."""
    overwrite: bool = False
    """Delete what ``out`` holds and start over (never when ``out`` is, contains or lies
    inside ``policy``, ``reward`` or ``data``)."""
    max_steps: Annotated[int, at_least(1)] = 100
    """Iterations (rollout batch + optimisation). A CPU-sized default; the 2019 runs used
    1M episodes / 512 per batch ~ 2000 iterations."""
    batch_size: Annotated[int, at_least(1)] = 16
    """Prompts per iteration, over all processes (RLOO samples ``rloo_k`` responses for
    each). The 2019 and N-details runs used 512 rollouts; 16 is a laptop-sized default
    (on a CPU, SmolLM2-135M with 4 prompts x 32 tokens takes ~45 s per PPO step)."""
    num_minibatches: Annotated[int, at_least(1)] = 1
    """Minibatches per epoch (one optimizer step each); the rollouts of a process are
    split evenly. 1, the 2019 default (``nminibatches=1``)."""
    reuse_forward: bool = True
    """With one minibatch, take the rollout's old-policy log-probs (and PPO values) from
    the first training forward -- the same weights on the same batch -- instead of a
    separate no-grad forward before it: one policy (and value) forward fewer per
    iteration, the same numbers (tests/train/test_rl_speed.py).  false runs the separate
    forward; ignored with several minibatches."""
    share_prompts: bool = True
    """RLOO: run each prompt through a model once for its ``rloo_k`` samples -- in sampling,
    in the reference forward and in the training forward and backward -- and copy its
    keys/values to the k rows (the same computation up to float rounding; with the
    default model's chat template it cut the forward and backward by a third on a CPU,
    docs/rl.md).  With ``prompt_tuning`` only sampling shares."""
    rloo_k: Annotated[int, at_least(1)] = 4
    """RLOO: samples per prompt for the leave-one-out baseline; 4, as in Ahmadian et al.
    2024 (k=4 recovered most of the gain of larger k)."""
    reinforce_baseline: Literal["mean", "running"] = "mean"
    """REINFORCE baseline: the batch mean reward, or a moving average of past batch means
    (``baseline_decay``; it does not depend on the current batch, so the gradient is
    unbiased -- the batch mean's bias is O(1/B)) (Williams 1992).  With ``running``,
    ``whiten_advantages`` only scales the advantages (centring them would put the batch
    mean back in place of the running baseline; docs/rl.md)."""
    baseline_decay: Annotated[float, between(0, 1, hi_open=True)] = 0.9
    """Decay of the running REINFORCE baseline (weight of the past per step)."""
    max_response_tokens: Annotated[int, at_least(1)] = 64
    """Response budget: the most new tokens sampled per response (EOS included), as in
    ``sft`` and ``rm``. The 2019 summarisation tasks used 75, the N details
    53; 64 keeps CPU runs short. Responses are truncated after the first EOS."""
    max_prompt_tokens: Annotated[int, at_least(1)] = 256
    """Prompt budget in tokens; longer prompts lose text from the left (the end of a
    question is nearest the answer). 256 is this project's generation default."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """Prompt template (``models.tokenize.render_prompt``); must match the SFT stage."""
    goal: str | None = None
    """Quality tier whose goal token is appended to each prompt (for a tier-conditioned SFT
    policy, e.g. ``good``); the reward model scores the prompt without it."""
    temperature: Annotated[float, above(0)] = 0.7
    """Sampling temperature; log-probs are computed at the same temperature. 0.7, the 2019
    books/TL;DR setting (``policy.temperature``)."""
    top_p: Annotated[float, Bound(lo=0, lo_open=True, hi=1)] = 1.0
    """Nucleus sampling; 1.0 = off, so samples come from the policy's own distribution
    (required for the policy-gradient estimate to be unbiased)."""
    top_k: Annotated[int, at_least(0)] = 0
    """Top-k filtering; 0 = off (same reason as ``top_p``)."""
    missing_eos_score: float | None = -1.0
    """Score given to responses that produced no EOS within ``max_response_tokens``, replacing
    the reward-model score (``penalty_reward_value=-1`` in lm-human-preferences; the N
    details do the same). ``null`` turns it off."""
    reward_normalize: Literal["none", "reference"] = "none"
    """An affine map applied to every score before it enters the reward.  ``none``: scores as
    the reward returns them (a reward model's already carry the normalisation fitted when it
    was trained, on the valid split's reference responses).  ``reference``: before the first
    step, score ``reward_normalize_samples`` responses of the reference policy to the first
    training prompts and set gain and bias so that they have mean 0 and standard deviation
    1 (lm-human-preferences ``normalize_after``): the scores are then measured on the
    policy's own starting distribution, and beta means the same whatever the reward's scale.
    Gain and bias go into the manifest and every checkpoint (a resumed run reuses them)."""
    reward_normalize_samples: Annotated[int, at_least(0)] = 64
    """Reference responses scored for ``reward_normalize=reference`` (2019: 256; 64 keeps the
    start of a CPU run short).  Read only then."""
    kl: KLSettings = field(default_factory=KLSettings)
    """KL penalty to the reference policy."""
    ppo_epochs: Annotated[int, at_least(1)] = 4
    """PPO: optimisation epochs over each rollout batch (2019 ``noptepochs=4``). RLOO and
    REINFORCE make one on-policy pass (Ahmadian et al. 2024)."""
    clip: Annotated[float, above(0)] = 0.2
    """Policy ratio clip range (2019 ``cliprange=0.2``); RLOO/REINFORCE clip the sequence
    ratio the same way (it is 1 on the first minibatch)."""
    value_clip: Annotated[float, at_least(0)] = 0.2
    """Value clip range around the rollout values (2019 ``cliprange_value=0.2``)."""
    vf_coef: Annotated[float, at_least(0)] = 0.1
    """Weight of the value loss (2019 ``vf_coef=0.1``)."""
    gamma: Annotated[float, between(0, 1)] = 1.0
    """Discount; 1 (2019), an episode is one response."""
    lam: Annotated[float, between(0, 1)] = 0.95
    """GAE lambda (2019 ``lam=0.95``)."""
    whiten_rewards: bool = True
    """PPO: scale the shaped rewards to unit variance, keeping their mean, before GAE (2019
    ``whiten_rewards=True``, ``whiten(rewards, shift_mean=False)``)."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, variance 1 over the batch (2019 ``whiten(advantages)``;
    N details).  REINFORCE with ``reinforce_baseline=running``: variance 1 only, the
    running baseline stays the centre."""
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
    prompt_tuning: PromptTuningSettings = field(default_factory=PromptTuningSettings)
    """Optimise only a soft prompt (peft prompt tuning; ``--peft prompt``): every weight
    of the policy stays the SFT model's, the KL to that reference is paid through the
    prompt alone, and the policy's learning rate is ``prompt_tuning.learning_rate``. Needs a plain
    policy (no goal, no LoRA); a PPO value model still trains as configured."""
    learning_rate: Annotated[float, above(0)] = 1e-5
    """Peak learning rate of policy and value model (2019 books tasks ``ppo.lr=1e-5``)."""
    adam_epsilon: Annotated[float, above(0)] = 1e-5
    """Adam epsilon; 1e-5 as in the PyTorch reproduction of the 2019 code (N details)."""
    lr_scheduler_type: Literal["linear", "constant", "cosine"] = "linear"
    """LR schedule over all optimizer steps; linear decay to 0 as in 2019
    (``lrnow = lr * (1 - frac)``)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers, through accelerate's integrations (``train/trackers.py``), as in
    transformers' ``report_to``: ``tensorboard`` (events in ``out/tensorboard``), ``wandb``,
    ``mlflow``, ``trackio``, ...; [] = ``metrics.jsonl`` only.  A tracker whose package is not
    installed costs a one-line notice, not the run.  Changes no result (a resume may change it)."""
    seed: int = 1
    """Seed of sampling, shuffling and initialisation (2019 launch ``run.seed=1``)."""
    sample_every: Annotated[int, at_least(1)] = 10
    """Write ``samples_per_log`` samples (prompt, response, score, KL) to ``samples.jsonl``
    every this many steps (and at step 1)."""
    samples_per_log: Annotated[int, at_least(0)] = 4
    """Samples written each time (2019 ``print_samples`` showed 3)."""
    save_steps: Annotated[int, at_least(0)] = 50
    """Checkpoint every this many steps (0 = only the final model)."""
    save_total_limit: Annotated[int, at_least(1)] = 2
    """Checkpoints kept (older ones deleted)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto`` = bf16 autocast on a GPU that supports it, float32 on CPU."""


def _validate(cfg: RLConfig, n_proc: int) -> None:
    for key in ("data", "out"):
        if not getattr(cfg, key):
            raise AmbientError(f"{key}: required")
    check_bounds(cfg)  # declared on the fields (load_config checks them too)
    from ambient_rlhf.train.trackers import check_report_to

    check_report_to(cfg.report_to)
    if cfg.prompt_tuning.enabled and (cfg.lora.enabled or cfg.goal is not None):
        raise AmbientError("prompt_tuning.enabled: the soft prompt is the only thing trained; turn lora.enabled off "
                           "and leave goal unset (--peft prompt)")
    if cfg.batch_size % n_proc:
        raise AmbientError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({n_proc})")
    n_rollouts = cfg.batch_size // n_proc * (cfg.rloo_k if cfg.algo == "rloo" else 1)
    if n_rollouts % cfg.num_minibatches:
        raise AmbientError(f"num_minibatches={cfg.num_minibatches} must divide the rollouts per process ({n_rollouts})")
    if cfg.algo == "rloo" and cfg.rloo_k < 2:
        raise AmbientError("rloo_k must be >= 2 for RLOO")
    if cfg.temperature <= 0:
        raise AmbientError("temperature must be > 0")
    if cfg.reference and cfg.lora.enabled:
        raise AmbientError(f"reference={cfg.reference} with lora.enabled: with LoRA the reference is the policy with "
                           "its adapter off; leave reference empty or turn LoRA off")
    if cfg.reward_normalize == "reference" and cfg.reward_normalize_samples < 2:
        raise AmbientError(f"reward_normalize_samples={cfg.reward_normalize_samples}: needs at least 2 samples")
    if cfg.kl.estimator == "k3" and not cfg.kl.in_loss:
        raise AmbientError("kl.estimator=k3 in the reward: the policy gradient of a k3 reward penalty is "
                           "grad KL(p||ref) - grad KL(ref||p), which can push the policy away from the reference "
                           "(docs/rl.md); use kl.estimator=k1 in the reward (the 2019 and TRL penalty), or "
                           "kl.in_loss=true to add beta * k3 to the loss with its gradient (GRPO)")
    if cfg.kl.in_loss and cfg.kl.estimator != "k3":
        raise AmbientError(f"kl.in_loss=true with kl.estimator={cfg.kl.estimator}: k1 as a loss term has expected "
                           "gradient 0 on the policy's own samples; use kl.estimator=k3, or kl.in_loss=false")
    if cfg.goal is not None and cfg.goal not in TIERS:
        raise AmbientError(f"goal={cfg.goal!r}: expected one of {list(TIERS)} (or null)")


