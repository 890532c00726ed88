"""The reward stage's configuration: :class:`RewardConfig`, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from ambient_rlhf import AmbientError
from ambient_rlhf.config import ConfigError, above, at_least, check_bounds
from ambient_rlhf.models.reward_inputs import RewardInputSpec
from ambient_rlhf.train.common import LoraSettings

OBJECTIVES = ("pairwise", "ranking", "tiers", "reply-sentiment")


def _warmup_from_ratio(v):
    """The old ``warmup_ratio`` (a fraction of the steps) as ``warmup_steps``, which reads
    a value below 1 as that fraction."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1:
        raise ConfigError(f"config key 'warmup_ratio': {v!r} is the whole run; it is now 'warmup_steps' "
                          "(a number of steps, or a fraction < 1 of them): give warmup_steps=<steps>")
    return v


@dataclass
class RewardConfig:
    RENAMED: ClassVar[dict] = {"lr": "learning_rate", "schedule": "lr_scheduler_type", "epochs": "num_train_epochs",
                               "grad_clip": "max_grad_norm", "warmup_ratio": ("warmup_steps", _warmup_from_ratio),
                               "eval_every": "eval_steps", "save_every": "save_steps"}
    """Old key names, refused with the new name (``config.upgrade_keys``)."""

    data: list[str] = field(default_factory=list)
    """Data directories (``ambient data build`` output).  Several directories train one
    model on several communities (the seed's merged reward model)."""
    data_weights: list[float] = field(default_factory=list)
    """``pairwise``: one weight per ``data`` directory ([] = all 1): each pair's term of the
    Bradley-Terry loss is multiplied by its directory's weight (the batch loss stays a mean
    over pairs).  With an ``ambient label export`` directory beside an ambient one,
    ``data_weights=[1,5]`` makes an explicit comparison count five times an upvote pair."""
    model: str = "default"
    """Model to start from: best the SFT model's directory (reward models not started
    from an SFT model sat at chance in other toolkits); ``default`` = SmolLM2-135M-Instruct."""
    out: str = ""
    """Output directory (reward model + metrics.jsonl + eval.json + manifest.json)."""
    objective: Literal["pairwise", "ranking", "tiers", "reply-sentiment"] = "pairwise"
    """``pairwise``: Bradley-Terry on pairs.parquet; ``ranking``: InstructGPT K-way loss on
    rankings.parquet (each thread's responses scored once, every thread weighs the same);
    ``tiers``: good/ok/bad classifier, reward = expected tier value; ``reply-sentiment``:
    regress the sentiment of a response's replies (responses with replies only)."""
    train_half: Literal["all", "a", "b"] = "all"
    """Which threads to train on: ``all``, or half ``a``/``b`` by the parity of a salted
    hash of thread_id.  ``ambient run`` trains a proxy model on one half and a gold judge
    on the other, so the judge has not seen the proxy's data."""
    community_prefix: bool = False
    """Prefix every prompt with ``[community] `` (the data directory's community name).
    For a model trained on several communities, so it can tell them apart; off by default
    because a single-community model gains nothing from it."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """Prompt template (``models.tokenize.render_prompt``); must match the policy's, so
    ``auto`` (the tokenizer's chat template when it has one), like the SFT stage."""
    max_prompt_tokens: Annotated[int, at_least(1)] = 128
    """Prompt budget in tokens (cut from the left).  128 + 128 keeps a 135M forward pass
    affordable on a laptop CPU; raise both on a GPU."""
    max_response_tokens: Annotated[int, at_least(1)] = 128
    """Response budget in tokens including EOS (cut from the right, no EOS when cut)."""
    balance_length: bool = False
    """``pairwise``: drop training pairs at random (seeded) until the preferred answer is
    the longer one (in words) in exactly half of them.  On SHP-rule Reddit pairs the
    longer answer wins ~65% of the time, and a small reward model learns that before
    anything else; balanced pairs carry no length signal, so what the model learns must
    come from the content (``ambient rm eval`` reports both, including the beyond-length
    test).  Pairs of equal length are kept; the drop count goes into the manifest."""
    pairs: Literal["time_rule", "all", "acts"] = "time_rule"
    """``pairwise``: which pairs train.  ``time_rule``: pairs.parquet (the SHP rule: the
    preferred answer came later, so its lead is not exposure).  ``all``: every candidate
    pair of responses.parquet (``data.covariates.candidate_pairs``: score ratio >=
    ``all_pairs_min_ratio``, both scores >= ``all_pairs_min_score``, whenever posted) --
    several times the evidence, confounded by exposure unless ``covariates`` model it.
    ``acts``: act_pairs.parquet (``ambient data acts``: within a thread, the sibling act whose
    replies drew gratitude/agreement over the one whose replies drew disagreement; the prompt
    is the act's context).  Validation is on the time-rule pairs in every case."""
    all_pairs_min_ratio: Annotated[float, at_least(1.0)] = 2.0
    """``pairs=all``: the preferred answer's score is at least this times the other's."""
    all_pairs_min_score: Annotated[int, at_least(0)] = 2
    """``pairs=all``: both scores at least this."""
    all_pairs_per_thread: Annotated[int, at_least(0)] = 0
    """``pairs=all``: at most this many pairs per thread (a seeded subset); 0 = all."""
    covariates: list[str] = field(default_factory=list)
    """``pairwise``: non-text covariates of each response (``data.covariates.COVARIATES``:
    delay, order, length, delay_x_thread, order_x_thread) in the Bradley-Terry model:
    ``P(A beats B) = sigmoid(r(A) - r(B) + w . (x_A - x_B))``, ``w`` learned with the
    reward.  What exposure (and, with ``length``, answer length) explains goes into ``w``;
    the text reward ``r`` -- what is saved and what RL uses -- need not carry it.  ``w``
    (per standardised covariate) is written to ``reward_config.json``.  [] = none."""
    length_decorrelation: Annotated[float, at_least(0.0)] = 0.0
    """Weight of a penalty ``corr(r, log words)^2`` over each batch's distinct texts (the
    decorrelation term of ODIN, Chen et al. 2024): the text reward is pushed to carry no
    length.  0 = off; with ``covariates`` including ``length`` the length effect still has
    a place to go.  ``rm eval`` reports the reward's Spearman correlation with length."""
    max_ranked: Annotated[int, at_least(2)] = 8
    """``ranking``: at most this many responses per thread (a seeded random subset);
    InstructGPT ranked K = 4..9.  Bounds the batch of a very large thread."""
    max_train_units: Annotated[int, at_least(0)] = 0
    """Use at most this many training units (pairs / threads / responses), a seeded
    random subset of threads; 0 = all.  For CPU-sized runs."""
    batch_size: Annotated[int, at_least(1)] = 4
    """Units per optimizer step (pairs, threads for ``ranking``, responses otherwise).
    4 pairs = at most 8 sequences of 256 tokens: the CPU budget here."""
    length_grouped: bool = True
    """Form batches from threads of similar length (within shuffled windows of 64
    batches) and keep a thread's units together, so each distinct response of a batch is
    scored once and little compute goes to padding.  Off: plain shuffled units."""
    learning_rate: Annotated[float, at_least(0)] = 0.0
    """Peak learning rate; 0 = by what trains: 1e-3 head only, 5e-5 top layers,
    1e-4 LoRA, 1e-5 full (InstructGPT used 9e-6 for its full 6B reward model)."""
    weight_decay: Annotated[float, at_least(0)] = 0.0
    """AdamW weight decay (not on biases/norms).  0: short runs, the data is the regulariser."""
    head_fit: Literal["adamw", "lbfgs"] = "adamw"
    """How a head alone on cached features (``train_layers=0``) is fitted: ``adamw`` = the
    same steps, batches and schedule as any reward model; ``lbfgs`` (pairwise) = the ridge
    Bradley-Terry fit to convergence, full batch, as a linear probe is fitted (no learning
    rate, epochs or batch order): ``weight_decay`` is then the L2 coefficient on the mean
    pair loss (on the text weights; the covariate weights are not penalised; 1e-3 - 1 is the
    useful range) and
    ``weight_decay_grid`` chooses it on the valid pairs the same way."""
    weight_decay_grid: list[float] = field(default_factory=list)
    """Head only on cached features (``train_layers=0``, pairwise): train the head once per
    value and keep the weight decay whose text reward -- plus the preference model's length
    term when ``length`` is a covariate -- has the lowest log-loss on the valid time-rule
    pairs (the ``eval_max_pairs`` that the valid accuracy uses); the saved model is then
    trained with it and says so (``reward_config.json`` ``weight_decay``, manifest
    ``counts.weight_decay_selection``).  Lets a new community choose its own strength
    instead of inheriting one tuned elsewhere.  Empty: ``weight_decay`` as given."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "linear"
    """LR schedule after warmup; linear decay to 0 as in InstructGPT's reward model."""
    warmup_steps: Annotated[float, at_least(0)] = 0.05
    """Linear warmup: a number of steps (>= 1), or a fraction of all steps (< 1, rounded
    down), as in transformers; 5% of the steps by default."""
    num_train_epochs: Annotated[float, above(0)] = 1.0
    """Passes over the training units (fractions allowed).  One epoch: reward models
    overfit after one (InstructGPT, Stiennon et al.).  Ignored when ``max_steps`` > 0."""
    max_steps: Annotated[int, at_least(0)] = 0
    """Optimizer steps; 0 = ``num_train_epochs`` worth."""
    max_grad_norm: Annotated[float, at_least(0)] = 1.0
    """Clip the gradient norm to this (0 = off); guards the first steps of a fresh head."""
    train_layers: Annotated[int, at_least(-1)] = -1
    """How much of the network trains: -1 = all of it (full fine-tuning, or LoRA with
    ``lora.enabled``); 0 = the head only (backbone frozen); N = the top N transformer
    layers, the final norm and the head."""
    backbone_layers: Annotated[int, at_least(0)] = 0
    """Keep only the first N transformer layers of the backbone (0 = all).  The reward
    model is then a smaller model of the same architecture (``num_hidden_layers=N``, saved
    and loaded as any *ForSequenceClassification dir), reading the backbone's layer-N
    state through the final norm.  Middle layers are often as good as the last for a
    linear read-out, and cost N/L of the compute: what makes caching every response of a
    community feasible on a CPU (docs/reward.md, "Using all the data on a CPU")."""
    pooling: Literal["last", "mean"] = "last"
    """What the head reads: ``last`` = the state at the last real token (as transformers'
    sequence-classification models do); ``mean`` = the mean of the response tokens' states
    (EOS included), which carried preference information beyond length where the last token
    did not (docs/reward.md, "Mean-pooled features").  Any ``train_layers`` (head only on
    cached features, top layers, full fine-tuning); saved with the model and applied by
    every ambient-rlhf scorer, but transformers alone reads the last token."""
    standardize_features: bool = False
    """Head only (``train_layers=0``): the head reads the cached features standardised with
    the training texts' mean and standard deviation, folded into the saved head at the end
    (the same function of raw features).  With ``weight_decay`` it is an L2-penalised
    linear read-out of equally scaled features, as a linear probe is fitted."""
    cache_features: bool = True
    """With a frozen bottom (``train_layers`` >= 0), compute its output once per text and
    reuse it every step (exact: the frozen part never changes).  What makes a reward
    model practical on a CPU.  Off: run the frozen part each step (no gradient through it)."""
    share_prompts: bool = True
    """Run each distinct prompt of a batch once and the responses of that prompt on top of
    its keys/values (the same outputs and gradients up to float rounding): when the whole
    network runs each step (no cached features) -- batches keep a thread's units
    together, so its responses share one prompt pass --, when the top layers train on
    cached states (``train_layers>0``: the prompt runs through them once per step; Llama-like
    bodies, else off), and when head-only features are cached (``train_layers=0``; the
    texts to cache are batched by prompt).  Off: every sequence runs in full."""
    feature_cache: str = ""
    """Directory in which head-only runs (``train_layers=0``) keep the backbone's
    last-token features, keyed by model and token ids, so further reward models from the
    same backbone (another objective, another seed) and their evaluation skip the
    backbone entirely; '' = keep them in memory for this run only."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters (``lora.enabled=true``, with ``train_layers=-1``); merged into the
    backbone at the end so the output loads as a plain model."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers, through accelerate's integrations (``train/trackers.py``), as in
    transformers' ``report_to``: ``tensorboard`` (events in ``out/tensorboard``), ``wandb``,
    ``mlflow``, ``trackio``, ...; [] = ``metrics.jsonl`` only.  A tracker whose package is not
    installed costs a one-line notice, not the run.  Changes no result (a resume may change it)."""
    seed: int = 0
    """Seed for the head init, subsets and batch order."""
    eval_steps: Annotated[int, at_least(0)] = 50
    """Log the valid-split pair accuracy every this many steps (0 = only at the end)."""
    eval_max_pairs: Annotated[int, at_least(0)] = 256
    """Valid pairs used by the periodic evaluation (a seeded subset; 0 = all)."""
    norm_max_responses: Annotated[int, at_least(0)] = 512
    """Valid-split reference responses used to fit the normalisation (seeded subset; 0 =
    all).  512 pins mean and std to about 5% of a std."""
    eval_split: str = "test"
    """Split evaluated at the end with baselines into eval.json ('' = skip)."""
    eval_loglik: str = "auto"
    """Log-likelihood baseline model for the final evaluation: ``auto`` (the reward
    model's own backbone when it was frozen, else skip), ``none``, ``self``, or a model."""
    save_steps: Annotated[int, at_least(0)] = 200
    """Checkpoint every this many steps (and at the end); 0 = only at the end."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out``."""
    overwrite: bool = False
    """Replace an existing ``out`` (without ``resume``)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``.  With several processes each
    takes its own GPU (or all run on the CPU, over gloo)."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast of the trained part's forward pass in training: ``auto`` = bf16 on a GPU
    that supports it, float32 on CPU (CPU bf16 is slower), as in ``sft`` and ``rl``
    (``ambient run`` runs the stages in one process, where accelerate keeps one setting).
    Frozen-part caching, evaluation and normalisation run in float32."""


def _auto_lr(cfg: RewardConfig) -> float:
    if cfg.learning_rate > 0:
        return cfg.learning_rate
    if cfg.train_layers == 0:
        return 1e-3
    if cfg.train_layers > 0:
        return 5e-5
    return 1e-4 if cfg.lora.enabled else 1e-5


def _validate(cfg: RewardConfig) -> None:
    if not cfg.data:
        raise AmbientError("rm: no data directory; pass --data DIR (several for a merged model)")
    if not cfg.out:
        raise AmbientError("rm: no output directory; pass --out DIR")
    check_bounds(cfg)  # declared on the fields (load_config checks them too)
    from ambient_rlhf.train.trackers import check_report_to

    check_report_to(cfg.report_to)
    if cfg.batch_size < 1:
        raise AmbientError(f"rm: batch_size={cfg.batch_size} must be >= 1")
    if cfg.backbone_layers and cfg.train_layers > cfg.backbone_layers:
        raise AmbientError(f"rm: train_layers={cfg.train_layers} exceeds backbone_layers={cfg.backbone_layers}")
    head_only = [o for o, on in (("standardize_features=true", cfg.standardize_features),
                                 ("weight_decay_grid", bool(cfg.weight_decay_grid)),
                                 ("head_fit=lbfgs", cfg.head_fit == "lbfgs")) if on]
    if head_only and (cfg.train_layers != 0 or not cfg.cache_features):
        raise AmbientError(f"rm: {', '.join(head_only)}: the head alone reads cached features here; set "
                           f"train_layers=0 and cache_features=true (got train_layers={cfg.train_layers}, "
                           f"cache_features={str(cfg.cache_features).lower()})")
    if cfg.lora.enabled and cfg.train_layers != -1:
        raise AmbientError("rm: lora.enabled=true needs train_layers=-1 (LoRA adapts every layer)")
    if cfg.max_ranked < 2:
        raise AmbientError(f"rm: max_ranked={cfg.max_ranked} must be >= 2")
    if cfg.balance_length and cfg.objective != "pairwise":
        raise AmbientError(f"rm: balance_length=true applies to objective=pairwise, not {cfg.objective}")
    from ambient_rlhf.data.covariates import COVARIATES

    if cfg.objective != "pairwise" and (cfg.covariates or cfg.pairs != "time_rule"):
        raise AmbientError(f"rm: covariates and pairs=all|acts apply to objective=pairwise, not {cfg.objective}")
    if cfg.pairs == "acts" and cfg.covariates:
        raise AmbientError("rm: covariates need responses.parquet rows; act pairs (pairs=acts) have none")
    if cfg.data_weights:
        if len(cfg.data_weights) != len(cfg.data):
            raise AmbientError(f"rm: data_weights={cfg.data_weights} has {len(cfg.data_weights)} weights for "
                               f"{len(cfg.data)} data directories; give one per directory, in the same order")
        if cfg.objective != "pairwise":
            raise AmbientError(f"rm: data_weights applies to objective=pairwise, not {cfg.objective}")
        if min(cfg.data_weights) < 0 or max(cfg.data_weights) <= 0:
            raise AmbientError(f"rm: data_weights={cfg.data_weights}: each >= 0 and at least one > 0")
    if cfg.head_fit == "lbfgs" and (cfg.objective != "pairwise" or cfg.length_decorrelation > 0 or cfg.lora.enabled):
        raise AmbientError("rm: head_fit=lbfgs fits a pairwise Bradley-Terry head (objective=pairwise, no "
                           "length_decorrelation, no LoRA); use head_fit=adamw for the rest")
    if cfg.weight_decay_grid:
        if cfg.objective != "pairwise":
            raise AmbientError(f"rm: weight_decay_grid chooses on valid pairs: objective=pairwise, not {cfg.objective}")
        if min(cfg.weight_decay_grid) < 0:
            raise AmbientError(f"rm: weight_decay_grid={cfg.weight_decay_grid}: every value >= 0")
    bad = [c for c in cfg.covariates if c not in COVARIATES]
    if bad:
        raise AmbientError(f"rm: covariates={cfg.covariates}: unknown {bad}; choose from {list(COVARIATES)}")


def input_spec(cfg: RewardConfig) -> RewardInputSpec:
    """How the reward model's inputs are rendered; saved with the model, so every later
    reader (rm eval, RL, ambient eval) renders the same text."""
    return RewardInputSpec(template=cfg.template, max_prompt_tokens=cfg.max_prompt_tokens,
                           max_response_tokens=cfg.max_response_tokens, community_prefix=cfg.community_prefix)
