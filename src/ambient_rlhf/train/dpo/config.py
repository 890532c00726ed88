"""``ambient dpo``'s configuration: :class:`DPOConfig`, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, ClassVar, Literal

from ambient_rlhf import AmbientError
from ambient_rlhf.config import above, at_least, between, check_bounds
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.train.common import PER_DEVICE_RENAMED, LoraSettings


@dataclass
class DPOConfig:
    RENAMED: ClassVar[dict] = PER_DEVICE_RENAMED
    """Old key names, refused with the new name (``config.upgrade_keys``)."""

    data: str = ""
    """Data directory from ``ambient data build`` (reads ``pairs.parquet``, or
    ``rankings.parquet`` / ``responses.parquet`` as ``pairs`` says). Required."""
    model: str = ""
    """The model to start from and the frozen reference: usually the SFT directory; also
    ``default`` (SmolLM2-135M-Instruct), ``tiny-random`` or any causal LM directory. Required."""
    out: str = ""
    """Output directory (a ``save_pretrained`` model directory at the end). Required."""
    resume: bool = False
    """Continue the run in ``out`` from its newest checkpoint (``ambient_rlhf.outdir``)."""
    overwrite: bool = False
    """Delete what ``out`` holds and start over."""
    loss: Literal["dpo", "cdpo", "ipo", "ln_dpo", "rdpo"] = "dpo"
    """``dpo`` (sigmoid, Rafailov et al. 2023); ``cdpo`` (conservative: ``label_smoothing``
    of the labels, for noisy votes); ``ipo`` (squared loss to a finite margin, Azar et al.
    2023); ``ln_dpo`` (log-ratios per response token); ``rdpo`` (length-regularised, Park
    et al. 2024: ``rdpo_alpha`` times the token-length difference inside the sigmoid).
    Formulas in ``ambient_rlhf.rl.dpo_losses`` and docs/dpo.md."""
    beta: Annotated[float, above(0)] = 0.1
    """Strength of the pull to the reference (the KL coefficient of the implicit RL
    problem). 0.1 is the DPO paper's and TRL's default; IPO's papers use 0.1-1."""
    label_smoothing: Annotated[float, between(0, 0.5, hi_open=True)] = 0.1
    """``cdpo``: the assumed probability that a pair's label is wrong. Upvote pairs are
    noisy (the vote also counts exposure and luck); 0.1 is a moderate guess."""
    rdpo_alpha: Annotated[float, at_least(0)] = 0.01
    """``rdpo``: weight of the length difference in tokens. 0.01 per token means a 100-token
    longer winner counts as a logit of 1 already explained by length."""
    pairs: Literal["time_rule", "all", "ranking"] = "time_rule"
    """Which preferences train.  ``time_rule``: pairs.parquet (SHP rule: the preferred
    answer came later, so its lead is not exposure).  ``all``: every candidate pair of
    responses.parquet (score ratio >= ``all_pairs_min_ratio``, whenever posted; more
    evidence, confounded by exposure unless ``exposure_weight`` < 1).  ``ranking``:
    every ordered pair of each thread's ranking in rankings.parquet (by the adjusted rank,
    which corrects for posting time), weighted so every thread weighs the same (the
    ranking reward model's normalisation)."""
    train_half: Literal["all", "a", "b"] = "all"
    """Train on the pairs of one half of the train threads (``data.splits.half_of``, the
    halves ``ambient rm train_half`` uses); valid pairs are all kept.  ``ambient run``
    sets ``a``: the half its RL proxy learns from, so that the gold judge (half ``b``)
    never saw the pairs DPO trained on."""
    all_pairs_min_ratio: Annotated[float, at_least(1.0)] = 2.0
    """``pairs=all``: the preferred answer's score is at least this times the other's."""
    all_pairs_min_score: Annotated[int, at_least(0)] = 2
    """``pairs=all``: both scores at least this."""
    max_ranked: Annotated[int, at_least(2)] = 8
    """``pairs=ranking``: at most this many responses per thread (a seeded subset), so at
    most 28 pairs; bounds the cost of a very large thread."""
    exposure_weight: Annotated[float, between(0, 1)] = 1.0
    """``pairs=all``: weight of the pairs whose preferred answer was posted *earlier*
    (its lead may be exposure: the time rule drops them).  1 = keep as they are, 0 = drop
    (the time rule), in between = down-weight."""
    length: Literal["keep", "balance", "reweight"] = "keep"
    """Pairs whose preferred answer is the longer one (in words) may be won by length
    alone.  ``keep``: as they are.  ``balance``: drop a seeded random subset of the larger
    side until "longer wins" and "shorter wins" are equally many (as ``ambient rm
    balance_length``).  ``reweight``: keep every pair, weight each side so both carry the
    same total weight."""
    goal: str | None = None
    """Quality tier whose goal token is put in each prompt (for a tier-conditioned SFT
    model, as ``ambient rl goal=``); null = none."""
    template: Literal["auto", "chat", "plain"] = "auto"
    """Prompt template, as in SFT: ``auto`` = the model's chat template when it has one."""
    max_prompt_tokens: Annotated[int, at_least(1)] = 256
    """Prompt budget in tokens (cut from the left)."""
    max_response_tokens: Annotated[int, at_least(1)] = 256
    """Response budget in tokens including EOS (cut from the right, no EOS when cut)."""
    per_device_train_batch_size: Annotated[int, at_least(1)] = 4
    """Pairs per micro-batch per process (2x sequences: chosen and rejected run together)."""
    gradient_accumulation_steps: Annotated[int, at_least(1)] = 4
    """Micro-batches per optimizer step: 16 pairs per step with the defaults (TRL's
    examples use 8-64)."""
    learning_rate: Annotated[float, above(0)] = 5e-7
    """Peak learning rate (AdamW). DPO moves far with little: 5e-7 is the Zephyr / TRL
    full fine-tuning value; with LoRA use about 5e-6."""
    weight_decay: Annotated[float, at_least(0)] = 0.0
    """AdamW weight decay (not on biases/norms)."""
    lr_scheduler_type: Literal["constant", "linear", "cosine"] = "linear"
    """LR schedule after warmup; linear to 0 as in the DPO paper's setup."""
    warmup_steps: Annotated[float, at_least(0)] = 10
    """Linear warmup: a number of steps (>= 1), or a fraction of all steps (< 1), as in
    transformers."""
    max_steps: Annotated[int, at_least(0)] = 0
    """Optimizer steps to run; 0 = ``num_train_epochs`` over the train pairs."""
    num_train_epochs: Annotated[float, above(0)] = 1.0
    """Passes over the train pairs when ``max_steps`` is 0; DPO overfits after one or two."""
    max_grad_norm: Annotated[float, at_least(0)] = 1.0
    """Clip the global gradient norm (0 = off)."""
    group_by_length: bool = True
    """Form steps from pairs of similar length (less padding); the order of steps is
    still shuffled."""
    logging_steps: Annotated[int, at_least(1)] = 10
    """Write train metrics every N optimizer steps (averaged over them)."""
    eval_steps: Annotated[int, at_least(0)] = 50
    """Evaluate on the valid pairs every N steps (and at step 0 and the end); 0 = only then."""
    eval_pairs: Annotated[int, at_least(0)] = 256
    """Valid pairs used for evaluation (a fixed seeded subset); 0 = all."""
    sample_prompts: Annotated[int, at_least(0)] = 4
    """Valid prompts answered greedily at each evaluation: their mean length is
    ``eval/sample_length`` (DPO on votes can drift towards longer answers) and the texts
    go to ``samples.jsonl``; 0 = none."""
    sample_max_new_tokens: Annotated[int, at_least(1)] = 64
    """Length budget of those samples."""
    save_steps: Annotated[int, at_least(0)] = 100
    """Write a checkpoint every N steps; 0 = only at the end."""
    save_total_limit: Annotated[int, at_least(1)] = 2
    """Newest checkpoints kept while training."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """``auto`` = bf16 autocast on a GPU that supports it, float32 on CPU."""
    seed: int = 0
    """Seeds data order, subsets and sampling."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapters through peft (``lora.enabled=true``); the reference is the model
    before the adapters, and its log-probs are cached anyway."""


def validate(cfg: DPOConfig) -> None:
    """Checks that need more than one field (the bounds are declared on the fields)."""
    for key in ("data", "model", "out"):
        if not getattr(cfg, key):
            raise AmbientError(f"dpo: --{key} is required")
    check_bounds(cfg)
    if cfg.exposure_weight != 1.0 and cfg.pairs != "all":
        raise AmbientError(f"dpo: exposure_weight={cfg.exposure_weight} applies to pairs=all (time_rule pairs "
                           f"already satisfy the time rule; ranking uses the time-adjusted rank), not pairs={cfg.pairs}")
    if cfg.length != "keep" and cfg.pairs == "ranking":
        raise AmbientError("dpo: length=balance/reweight applies to pairs=time_rule or all, not ranking "
                           "(a ranking's pairs share answers; dropping one drops several)")
    if cfg.goal is not None and cfg.goal not in TIERS:
        raise AmbientError(f"dpo: goal={cfg.goal!r}: expected one of {list(TIERS)} (or null)")
