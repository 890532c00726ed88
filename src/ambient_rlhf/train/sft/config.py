"""``ambient sft``'s configuration: :class:`SFTConfig`, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from ambient_rlhf.config import above, at_least
from ambient_rlhf.train.common import PER_DEVICE_RENAMED, LoraSettings, PromptTuningSettings


MODEL_INFO_FILE = "ambient_model.json"
"""Written into every model directory this stage produces: how prompts were rendered
(template, goal tokens), so ``generate`` renders them the same way."""


@dataclass
class SFTConfig:
    RENAMED: ClassVar[dict] = PER_DEVICE_RENAMED
    """Old key names, refused with the new name (``config.upgrade_keys``)."""

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
    top_k: Annotated[int, at_least(1)] = 1
    """k for ``select=top_k``: 1 = the community's favourite answer per thread, the
    usual "best response" variant."""
    min_score: int = 2
    """Threshold for ``select=min_score``; 2 = at least one upvote besides the author's
    own (Reddit starts every comment at 1), the SHP cut-off."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """Prompt template: ``auto`` = the tokenizer's chat template when it has one (the
    default model has ChatML), else ``Prompt: ...\\nResponse: ``."""
    max_prompt_tokens: Annotated[int, at_least(1)] = 256
    """Prompt budget in tokens (cut from the left: the end of a question is nearest the
    answer). 256 covers most Reddit questions; longer costs quadratic attention on CPU."""
    max_response_tokens: Annotated[int, at_least(1)] = 256
    """Response budget (cut from the right; a cut response gets no EOS). 256 keeps most
    answers whole at a cost a CPU can bear."""
    per_device_train_batch_size: Annotated[int, at_least(1)] = 4
    """Sequences per micro-batch per process. 4 fits the default model at 512 tokens in a
    few GB on CPU; raise it on a GPU."""
    gradient_accumulation_steps: Annotated[int, at_least(1)] = 4
    """Micro-batches per optimizer step. With per_device_train_batch_size 4 an optimizer step sees 16
    sequences, a common SFT batch for small models."""
    learning_rate: Annotated[float, above(0)] = 2e-5
    """Peak learning rate (AdamW). 2e-5 is the usual full fine-tuning rate for small
    instruction models; with LoRA use about 10x (2e-4)."""
    weight_decay: Annotated[float, at_least(0)] = 0.0
    """AdamW weight decay (not on biases/norms). 0: short SFT runs do not overfit enough
    to need it, and it is the TRL default."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "cosine"
    """LR schedule after warmup; cosine to 0 is the common SFT choice."""
    warmup_steps: Annotated[float, at_least(0)] = 10
    """Linear warmup: a number of steps (>= 1), or a fraction of all steps (< 1), as in
    transformers; 10 steps steady Adam's first moments without wasting a short run."""
    max_steps: Annotated[int, at_least(0)] = 0
    """Optimizer steps to run; 0 = ``num_train_epochs`` over the selected train data."""
    num_train_epochs: Annotated[float, above(0)] = 1.0
    """Passes over the train data when ``max_steps`` is 0 (fractions allowed). One epoch is
    the usual SFT budget on community data (more overfits the few responses per thread)."""
    max_grad_norm: Annotated[float, at_least(0)] = 1.0
    """Clip the global gradient norm (0 = off); 1.0 is the standard guard against the odd
    long, surprising response."""
    group_by_length: bool = True
    """Form batches from examples of similar length (less padding, faster). The order of
    steps is still shuffled. Turn off for exact i.i.d. batches."""
    logging_steps: Annotated[int, at_least(1)] = 10
    """Write train metrics every N optimizer steps (averaged over them)."""
    eval_steps: Annotated[int, at_least(0)] = 50
    """Evaluate on the valid split every N optimizer steps (and at step 0 and the end);
    0 = only at the start and the end."""
    eval_examples: Annotated[int, at_least(0)] = 256
    """Valid responses used for evaluation (a fixed, seeded subset); 256 gives a loss
    estimate to about 1% at a cost of a few training steps; 0 = all."""
    save_steps: Annotated[int, at_least(0)] = 100
    """Write a checkpoint (and samples) every N optimizer steps; 0 = only at the end.
    Checkpoints of the default model take ~1.6 GB (weights + Adam state)."""
    save_total_limit: Annotated[int, at_least(1)] = 2
    """Newest checkpoints kept while training (2: one survives a kill during a save).
    Checkpoints are removed from the final output directory."""
    sample_prompts: Annotated[int, at_least(0)] = 4
    """Valid prompts sampled at each checkpoint into ``samples.jsonl`` (0 = none); four
    give a quick look at the style without slowing training."""
    sample_max_new_tokens: Annotated[int, at_least(1)] = 64
    """Length of those samples in new tokens."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto`` = bf16 autocast on a GPU that supports it, float32 on CPU (CPU bf16
    autocast is slower on most CPUs)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers, through accelerate's integrations (``train/trackers.py``), as in
    transformers' ``report_to``: ``tensorboard`` (events in ``out/tensorboard``), ``wandb``,
    ``mlflow``, ``trackio``, ...; [] = ``metrics.jsonl`` only.  A tracker whose package is not
    installed costs a one-line notice, not the run.  Changes no result (a resume may change it)."""
    seed: int = 0
    """Seeds data order, new-token initialisation and sampling."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters through peft (``lora.enabled=true``, or ``--peft lora``)."""
    prompt_tuning: PromptTuningSettings = field(default_factory=PromptTuningSettings)
    """Soft prompts through peft, every model weight frozen (``prompt_tuning.enabled=true``,
    or ``--peft prompt``). With ``condition=tier``: one prompt per tier, chosen by the goal
    (no goal tokens are added to the vocabulary); the learning rate is
    ``prompt_tuning.learning_rate``."""


