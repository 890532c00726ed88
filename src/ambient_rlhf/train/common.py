"""Pieces every trainer shares: LoRA, optimizer, LR schedule, accelerator, token loss.

Small functions, no trainer base class (STYLE.md): each trainer (``sft``, ``reward``,
``rl``) reads top to bottom and calls these.

* :class:`LoraSettings` + :func:`apply_lora` / :func:`merge_lora`: LoRA through peft.
* :func:`make_optimizer`: AdamW (fused kernel), no weight decay on biases and norm weights.
* :func:`make_scheduler`: constant / linear / cosine, each with a linear warmup.
* :func:`setup_accelerator`: an ``accelerate.Accelerator`` that runs on CPU when there is
  no GPU, with bf16 autocast when there is one; the same code runs under
  ``accelerate launch`` / ``torchrun`` with several processes.
* :func:`on_main` / :func:`main_first`: writes done by the main process only.
* :class:`CausalLMLoss` / :func:`token_nll`: summed next-token NLL over labelled tokens
  and their count, so a trainer can normalise by the tokens of a whole (accumulated,
  multi-process) batch; the output head runs only where there are labels.
* :class:`TokenMeter`: tokens/s for the logs.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, ClassVar, Iterable

import torch
from torch import nn

from ambient_rlhf.config import above, at_least, between
from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger

log = get_logger("train")


# ---- LoRA ------------------------------------------------------------------------------
@dataclass
class LoraSettings:
    enabled: bool = False
    """Train low-rank adapters instead of all weights. Off by default: the default model
    (135M parameters) fits full fine-tuning on a laptop, and full fine-tuning is the
    reference behaviour; turn it on for larger models or to keep the base weights."""
    r: Annotated[int, at_least(1)] = 16
    """Adapter rank. 16 is the common choice for instruction tuning of small models
    (enough capacity for a style shift; the adapter stays a few MB)."""
    alpha: Annotated[int, above(0)] = 32
    """LoRA scaling numerator (update scaled by alpha/r). 2*r, the usual setting, so the
    effective step size does not change when r changes by a little."""
    dropout: Annotated[float, between(0, 1, hi_open=True)] = 0.0
    """Dropout on the adapter input. 0 keeps training deterministic (resume and
    invariance tests compare losses exactly) and dropout matters little on short runs."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt; ``all-linear`` (peft's shorthand: every linear layer except
    the output head) works for any architecture and adapts the MLPs too, which QLoRA
    found matters for quality."""


def apply_lora(model: nn.Module, settings: LoraSettings, trainable_token_ids: list[int] | None = None) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (a peft ``PeftModel``); return it unchanged when
    ``settings.enabled`` is false.

    ``trainable_token_ids``: embedding rows that must also train (newly added tokens,
    e.g. the goal tokens), through peft's ``trainable_token_indices``."""
    if not settings.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    targets: str | list[str] = list(settings.target_modules)
    if targets == ["all-linear"]:
        targets = "all-linear"
    kw: dict[str, Any] = {}
    if trainable_token_ids:
        kw["trainable_token_indices"] = list(trainable_token_ids)
    cfg = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                     target_modules=targets, task_type="CAUSAL_LM", **kw)
    try:
        peft_model = get_peft_model(model, cfg)
    except ValueError as e:
        raise AmbientError(f"lora.target_modules={settings.target_modules}: {e}") from None
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in peft_model.parameters())
    log.info("LoRA r=%d alpha=%d: %d of %d parameters trainable (%.2f%%)", settings.r, settings.alpha,
             n_train, n_all, 100.0 * n_train / max(n_all, 1))
    return peft_model


PER_DEVICE_RENAMED = {"lr": "learning_rate", "schedule": "lr_scheduler_type", "steps": "max_steps",
                      "epochs": "num_train_epochs", "grad_accum": "gradient_accumulation_steps",
                      "batch_size": "per_device_train_batch_size", "log_every": "logging_steps",
                      "eval_every": "eval_steps", "checkpoint_every": "save_steps",
                      "keep_checkpoints": "save_total_limit"}
"""The old training-key names of the stages whose batch is per process (sft, dpo), refused
with their transformers/TRL names (``config.upgrade_keys``)."""


@dataclass
class PromptTuningSettings:
    RENAMED: ClassVar[dict] = {"lr": "learning_rate"}
    """Old key names (``config.upgrade_keys``)."""

    enabled: bool = False
    """Train soft prompts only (peft prompt tuning): every weight of the model stays as it
    was; a few learned input vectors steer it (``--peft prompt``). With ``condition=tier``
    (SFT) one prompt per tier, selected by the goal; otherwise one prompt."""
    virtual_tokens: Annotated[int, at_least(1)] = 8
    """Virtual tokens per prompt. 8 gives 8 x 576 = 4.6k trainable numbers per prompt on the
    default model: small enough to show what frozen weights allow, and Lester et al. 2021
    found most of the gain by 5-20 tokens."""
    init_text: str = "Write a {name} answer."
    """Each prompt starts as the embeddings of this text (``{name}``: the tier, or
    ``default``), repeated to ``virtual_tokens``: real word vectors train far better than
    random ones (Lester et al. 2021)."""
    learning_rate: Annotated[float, above(0)] = 3e-3
    """Learning rate of the soft prompt (it replaces the stage's ``learning_rate``): prompt vectors need
    a much larger step than weights (Lester et al. used 0.3 with Adafactor; 3e-3 with Adam
    moves a 135M model's prompt within a few dozen steps)."""


def apply_prompt_tuning(model: nn.Module, settings: PromptTuningSettings, tok, names: list[str]) -> nn.Module:
    """Freeze ``model`` and give it a soft prompt per name (a
    :class:`~ambient_rlhf.models.soft_prompt.SoftPromptLM`); ``model`` unchanged when
    ``settings.enabled`` is false."""
    if not settings.enabled:
        return model
    from ambient_rlhf.models.soft_prompt import wrap

    lm = wrap(model, tok, names, settings.virtual_tokens, settings.init_text)
    n_train = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in lm.parameters())
    log.info("prompt tuning: %d prompt(s) x %d virtual tokens: %d of %d parameters trainable (%.4f%%)",
             len(names), settings.virtual_tokens, n_train, n_all, 100.0 * n_train / max(n_all, 1))
    return lm


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def adapter_base_name(model_name: str) -> str:
    """What a saved adapter's ``base_model_name_or_path`` says: the model as the user gave
    it (a directory as typed, a hub id), so ``peft.AutoPeftModelForCausalLM`` finds the
    base from where the user works.  The built-in names (``default``, ``tiny-random``) are
    no name transformers knows, so they become their converted directory (the default
    model is SmolLM2-135M-Instruct dequantised from a Q4_1 GGUF: the hub's
    ``HuggingFaceTB/SmolLM2-135M-Instruct`` weights differ)."""
    from ambient_rlhf.models.load import is_builtin_model, resolve_model

    if is_builtin_model(model_name):
        return resolve_model(model_name)
    return model_name


def save_adapter(model: nn.Module, out, tok, base_name: str) -> None:
    """Write the LoRA adapter of a peft ``model`` to ``out`` (peft's ``adapter_config.json``
    + ``adapter_model.safetensors``, the tokenizer beside it) with
    ``base_model_name_or_path`` = :func:`adapter_base_name` of ``base_name``."""
    name = adapter_base_name(base_name)
    for cfg in model.peft_config.values():
        cfg.base_model_name_or_path = name
    model.save_pretrained(out)
    tok.save_pretrained(out)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights and return the plain model (a no-op for
    a model without adapters).  Mutates the base model: call it at the end, or on a copy."""
    if is_peft(model):
        return model.merge_and_unload()
    return model


# ---- optimisation ----------------------------------------------------------------------
def make_optimizer(params: nn.Module | Iterable, lr: float, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                   fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (with ``weight_decay=0`` it is Adam).

    Given a module, biases and norm weights (1-D tensors) get no weight decay, the
    usual practice (decaying a LayerNorm gain towards 0 is not regularisation).  Given an
    iterable of tensors or param groups, it is passed to AdamW as is.

    ``fused=None`` uses the fused kernel (one pass over all tensors, on CPU and GPU) when
    every trainable parameter is a floating-point tensor: several times faster steps than
    the per-tensor loop for small models on a CPU, and the default of transformers'
    Trainer since torch 2.8."""
    if isinstance(params, nn.Module):
        decay, no_decay = [], []
        for p in params.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        groups: Any = [{"params": decay, "weight_decay": weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [p for p in params]
        if groups and isinstance(groups[0], torch.Tensor):
            groups = [p for p in groups if p.requires_grad]
    if not groups:
        raise AmbientError("no trainable parameters")
    if fused is None:
        tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
        fused = all(p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                             fused=fused or None)


def lr_factor(step: int, kind: str, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps (LambdaLR convention).

    Warmup: linear from 1/(warmup+1) up to 1 over ``warmup_steps``; then ``constant`` stays
    at 1, ``linear`` decays to 0 at ``total_steps``, ``cosine`` follows half a cosine to 0."""
    if kind not in ("constant", "linear", "cosine"):
        raise AmbientError(f"schedule {kind!r}: expected constant, linear or cosine")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min(max((step - warmup_steps) / span, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_count(warmup_steps: float, total_steps: int) -> int:
    """Warmup steps of a ``warmup_steps`` setting: a count when >= 1, else a fraction of
    ``total_steps`` (rounded down; transformers rounds up: at most one step apart)."""
    return int(warmup_steps) if warmup_steps >= 1 else int(warmup_steps * total_steps)


def make_scheduler(opt: torch.optim.Optimizer, kind: str = "cosine", warmup_steps: int = 0,
                   total_steps: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """LR schedule (see :func:`lr_factor`); call ``.step()`` once per optimizer step."""
    lr_factor(0, kind, warmup_steps, total_steps)  # validate ``kind`` now
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, kind, warmup_steps, total_steps))


# ---- accelerator -----------------------------------------------------------------------
def setup_accelerator(gradient_accumulation_steps: int = 1, mixed_precision: str = "auto", cpu: bool | None = None):
    """An ``accelerate.Accelerator`` for this machine.

    * ``cpu``: None = CPU exactly when no CUDA device is visible.  With several processes
      (``accelerate launch --multi_gpu --num_processes N`` or ``torchrun``) on CPU,
      processes talk over gloo.  (Note: ``accelerate launch --cpu --num_processes 2``
      starts a single process on a machine without MPI/IPEX.)
    * ``mixed_precision``: ``auto`` = bf16 autocast on a GPU that supports it, else none
      (CPU bf16 autocast is slower than float32 on most CPUs); or ``no``/``bf16``/``fp16``.
    * ``gradient_accumulation_steps``: passed to accelerate (``accelerator.accumulate``
      then divides losses by it).  Trainers that normalise by token counts across the
      accumulated batch themselves (SFT) pass 1 and use ``accelerator.no_sync``.
    """
    from accelerate import Accelerator

    if cpu is None:
        cpu = not torch.cuda.is_available()
    if mixed_precision == "auto":
        mixed_precision = "bf16" if (not cpu and torch.cuda.is_bf16_supported()) else "no"
    if mixed_precision not in ("no", "bf16", "fp16"):
        raise AmbientError(f"mixed_precision {mixed_precision!r}: expected auto, no, bf16 or fp16")
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision,
                       gradient_accumulation_steps=gradient_accumulation_steps)


def on_main(accelerator, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """Run ``fn`` on the main process only, then let every process continue together
    (so the others never read a half-written file).  Returns fn's result on main, None
    elsewhere."""
    out = fn(*args, **kw) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    return out


@contextlib.contextmanager
def main_first(accelerator):
    """The main process runs the block first (e.g. builds a cache), then the others."""
    with accelerator.main_process_first():
        yield


def all_sum(accelerator, value: float | int) -> float:
    """Sum a Python number over processes (identity with one process)."""
    if accelerator.num_processes == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


# ---- loss ------------------------------------------------------------------------------
class CausalLMLoss(nn.Module):
    """Wraps a causal LM; ``forward`` returns per-example summed next-token NLL and token
    counts over labelled positions.

    The output head (V x d, the largest matmul of a small model) is applied only at the
    positions that carry a label, not at prompt or padding positions, which saves a good
    part of the head's forward and backward work.  Models whose logits need more than the
    head (soft-capping, a logit scale) take the plain full-logits path.  Position ids
    come from the mask, so left and right padding give the same numbers.

    Wrapping the loss in a module lets ``accelerator.prepare`` put DDP around the whole
    computation (calling the LM's submodules from outside a DDP wrapper would skip the
    gradient sync)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        cfg = getattr(lm, "config", None)
        plain = any(getattr(cfg, a, None) not in (None, 1.0) for a in ("final_logit_softcapping", "logit_scale"))
        self.selective = (not plain and hasattr(lm, "get_decoder") and hasattr(lm, "get_output_embeddings")
                          and lm.get_output_embeddings() is not None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, goal_idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids, attention_mask, labels: (B, T), labels -100 where not predicted;
        goal_idx (B,): for a soft-prompt model, the prompt of each row (else ignored).
        Returns (nll_sum (B,), n_tokens (B,))."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        if bool(attention_mask.all()):
            attention_mask = None  # no padding: plain causal attention takes the faster kernel
        target = labels[:, 1:]  # (B, T-1): token t+1 is predicted at position t
        keep = target != -100  # (B, T-1)
        if self.selective:
            out = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                        position_ids=position_ids, use_cache=False, **(
                                            {"goal_idx": goal_idx} if goal_idx is not None else {}))
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B, T, d)
            h = hidden[:, :-1][keep]  # (N, d) only labelled positions
            logits = self.lm.get_output_embeddings()(h).float()  # (N, V)
            nll_flat = nn.functional.cross_entropy(logits, target[keep], reduction="none")  # (N,)
            rows = keep.nonzero()[:, 0]  # (N,) example of each kept position
            nll = torch.zeros(input_ids.shape[0], dtype=nll_flat.dtype, device=nll_flat.device)
            nll = nll.index_add(0, rows, nll_flat)  # (B,)
        else:
            logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False).logits[:, :-1].float()  # (B, T-1, V)
            per_tok = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                  ignore_index=-100, reduction="none")
            nll = per_tok.view(target.shape).sum(-1)  # (B,)
        return nll, keep.sum(-1)


def token_nll_per_example(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed NLL (B,) and labelled-token counts (B,) of a causal LM
    (see :class:`CausalLMLoss`)."""
    loss_fn = model if isinstance(model, CausalLMLoss) else CausalLMLoss(model)
    return loss_fn(input_ids, attention_mask, labels)


def token_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over labelled tokens and their count (scalars), so a trainer
    can normalise by the tokens of a whole accumulated, multi-process batch."""
    nll, n = token_nll_per_example(model, input_ids, attention_mask, labels)
    return nll.sum(), n.sum()


class TokenMeter:
    """Counts tokens between calls and reports tokens/s (for logs and benchmarks)."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.tokens = 0

    def add(self, n: int) -> None:
        self.tokens += int(n)

    def rate(self, reset: bool = True) -> float:
        now = time.perf_counter()
        r = self.tokens / max(now - self.t0, 1e-9)
        if reset:
            self.t0, self.tokens = now, 0
        return r
