"""Scalar-head models: reward models and value models.

``ScalarHeadModel`` = a causal LM's transformer body + a linear head read at the **last
real token** of each sequence (found from the attention mask, so left and right padding
give the same answer).  The head is initialised small: normal with std ``1/sqrt(d+1)``
and zero bias (Stiennon et al. 2020; "N implementation details", detail 9).

Kinds of output (``kind``):
* ``scalar``: one number per sequence (pairwise / ranking / reply-sentiment objectives,
  and value models, which use :meth:`forward_all` for a value per token);
* ``tiers``: logits over (good, ok, bad); the reward is the expected tier value
  ``sum(softmax(logits) * tier_values)``.

The reward returned by :meth:`reward` is normalised: ``(raw - norm_mean) / norm_std``,
constants fitted after training on the valid split's reference responses.

On disk (``save_pretrained``) a reward model is a standard transformers
``*ForSequenceClassification`` directory (docs/reward.md, "On disk"):

* ``model.safetensors``: the body under ``model.`` and ``score.weight``, the head with the
  normalisation folded in where it is linear.  A scalar head ``w.h + b`` becomes
  ``score.weight = w / std``; transformers' ``score`` layer has no bias, so the constant
  ``(b - mean) / std`` is stored as ``ambient_reward.offset`` in ``config.json``:
  ``reward = logits[:, 0] + offset``.  A tiers head keeps its three logits' weights; their
  bias goes to ``ambient_reward.logit_bias`` and the reward is
  ``(sum(softmax(logits + logit_bias) * tier_values) - norm_mean) / norm_std``;
* ``config.json``: ``num_labels`` (1, or 3 with ``id2label`` good/ok/bad), ``pad_token_id``
  (never EOS: transformers reads the rightmost non-pad token, the project the last
  attended one; with right padding they are the same token), ``ambient_reward``;
* the tokenizer, ``reward_config.json`` (input spec, normalisation, provenance; written
  last, it marks a complete model) and, only for a backbone whose output embeddings are
  not tied to its input embeddings, ``lm_head.safetensors`` (the project's log-likelihood
  baseline and value models read it; transformers ignores it).

Pooling (``pooling`` in ``reward_config.json`` and ``ambient_reward``): ``last`` (the
default) reads the head at the last real token, as transformers does; ``mean`` reads it on
the mean of the **response** tokens' states (EOS included when present), which needs each
sequence's prompt length -- :class:`~ambient_rlhf.models.reward_inputs.RewardFunction`
and the project's scorers pass it.  transformers' sequence-classification model reads the
last token only, so a ``mean`` reward model loads there but must be scored through
ambient-rlhf (or by pooling its hidden states by hand, as its model card says).

A directory of the earlier format (the causal LM's own ``model.safetensors`` +
``reward_head.safetensors``) still loads, with a warning naming
:func:`convert_reward_dir`, which rewrites it in place.  One with the head as the pickle
``reward_head.pt`` is refused with the one command that converts it: a pickle can run
code when loaded, and nothing ambient-rlhf reads is unpickled.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ambient_rlhf import AmbientError
from ambient_rlhf.data.schema import TIERS
from ambient_rlhf.logging import get_logger
from ambient_rlhf.models.bodies import body_of
from ambient_rlhf.rl.masking import last_token_index

HEAD_FILE = "reward_head.safetensors"  # the earlier format's head
MODEL_FILE = "model.safetensors"
LM_HEAD_FILE = "lm_head.safetensors"
FORMAT = "sequence-classification"
"""``reward_config.json``'s ``format`` in the current layout (absent in the earlier one)."""
_FORMAT_KEYS = {"kind", "format", "n_outputs", "tier_values", "norm_mean", "norm_std", "offset", "logit_bias"}
OLD_HEAD_FILE = "reward_head.pt"
CONFIG_FILE = "reward_config.json"
TIER_LABELS = tuple(TIERS)

log = get_logger("rm")

POOLINGS = ("last", "mean")


def pool_states(h: torch.Tensor, attention_mask: torch.Tensor, prompt_lens: torch.Tensor | None = None,
                pooling: str = "last") -> torch.Tensor:
    """(B, T, d) hidden states -> (B, d): the last real token's (``last``) or the mean over
    the response tokens (``mean``: real tokens at or after ``prompt_lens[b]``, counted over
    real tokens only, so left and right padding agree).  A row without response tokens
    pools to zeros."""
    if pooling == "last":
        return h[torch.arange(h.shape[0], device=h.device), last_token_index(attention_mask)]
    if pooling != "mean":
        raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
    if prompt_lens is None:
        raise AmbientError("a reward model with pooling=mean needs each sequence's prompt length; score it "
                           "through ambient_rlhf.models.reward_inputs.RewardFunction (or pass prompt_lens)")
    real = attention_mask.bool()
    pos = attention_mask.long().cumsum(-1) - 1  # (B, T) index among real tokens
    m = real & (pos >= prompt_lens.to(pos.device).long().unsqueeze(1))  # (B, T) response tokens
    w = m.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
    return (h * w).sum(1) / w.sum(1).clamp(min=1.0)


class ScalarHeadModel(nn.Module):
    def __init__(self, lm: nn.Module, kind: str = "scalar", n_outputs: int | None = None,
                 tier_values: tuple[float, ...] = (1.0, 0.0, -1.0), meta: dict[str, Any] | None = None):
        super().__init__()
        if kind not in ("scalar", "tiers"):
            raise ValueError(f"kind must be scalar or tiers, not {kind!r}")
        self.lm = lm
        self.kind = kind
        self.tier_values = tuple(float(v) for v in tier_values)
        n = n_outputs or (len(self.tier_values) if kind == "tiers" else 1)
        d = lm.config.hidden_size
        self.head = nn.Linear(d, n)
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(d + 1))
        nn.init.zeros_(self.head.bias)
        self.norm_mean = 0.0
        self.norm_std = 1.0
        self.meta: dict[str, Any] = dict(meta or {})
        if self.pooling not in POOLINGS:
            raise AmbientError(f"reward model pooling={self.pooling!r}: must be one of {POOLINGS}")

    @property
    def pooling(self) -> str:
        """``last`` or ``mean`` (module doc); kept in ``meta`` so that it is saved and loaded."""
        return self.meta.get("pooling", "last")

    def pool(self, h: torch.Tensor, attention_mask: torch.Tensor, prompt_lens: torch.Tensor | None = None):
        """(B, T, d) -> (B, d) by this model's pooling (:func:`pool_states`)."""
        return pool_states(h, attention_mask, prompt_lens, self.pooling)

    @property
    def config(self):
        return self.lm.config

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, d) last hidden states of the body."""
        body = body_of(self.lm)
        # positions counted over real tokens only, so left and right padding give the same
        # hidden states (also for models with absolute position embeddings)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward_all(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head output at every position: (B, T, n_outputs).  Value models use this."""
        h = self.hidden_states(input_ids, attention_mask)
        return self.head(h.to(self.head.weight.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Raw head output on the pooled states (the last real token by default): (B, n_outputs).
        ``prompt_lens`` (B,): needed with ``pooling=mean``, ignored otherwise."""
        h = self.hidden_states(input_ids, attention_mask)  # (B, T, d)
        return self.head(self.pool(h, attention_mask, prompt_lens).to(self.head.weight.dtype))

    def shared_prompt_states(self, seqs: list[list[int]], prompt_lens: list[int]
                             ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Last hidden states of the response tokens of ``seqs`` (token ids, each a prompt
        of ``prompt_lens[i]`` tokens and its response), each distinct prompt run once.

        Sequences that share a prompt (the responses of one thread, RLOO's k samples)
        reuse its keys and values: the prompts run first (right-padded, with a cache), the
        cache is gathered per sequence, and the responses run on top with positions
        continuing after their prompt; gradients flow into the prompt pass through the
        cache.  Returns ``(h, mask)``, (B, Tr, d) and (B, Tr) in the order of ``seqs``, the
        responses right-padded -- or None when no two sequences share a prompt (or a
        prompt or response is empty): then one plain pass is as cheap."""
        from ambient_rlhf.models.kv import continue_cached, prefix_once, prompt_groups
        from ambient_rlhf.models.tokenize import pad_batch

        grouped = prompt_groups(seqs, prompt_lens)
        if grouped is None:
            return None
        prompts, order, g_list = grouped
        device = next(self.parameters()).device
        body = body_of(self.lm)
        p_ids, p_mask = (x.to(device) for x in pad_batch([list(p) for p in prompts], 0, "right"))  # (G, Tp)
        g = torch.tensor(g_list, device=device)  # (B,) prompt of each
        _, cache = prefix_once(body, p_ids, p_mask, (p_mask.cumsum(-1) - 1).clamp(min=0), g)
        r_ids, r_mask = (x.to(device) for x in pad_batch([seqs[i][prompt_lens[i]:] for i in order], 0, "right"))
        p_len = torch.tensor([prompt_lens[i] for i in order], device=device)
        r_pos = p_len.unsqueeze(1) + torch.arange(r_ids.shape[1], device=device).unsqueeze(0)  # (B, Tr)
        full_mask = torch.cat([p_mask[g], r_mask], dim=1)  # (B, Tp + Tr): prompt padding masked out
        h = continue_cached(body, cache, r_ids, full_mask, r_pos).last_hidden_state  # (B, Tr, d)
        back = torch.empty(len(order), dtype=torch.long, device=device)
        back[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
        return h[back], r_mask[back]

    def shared_prompt_outputs(self, seqs: list[list[int]], prompt_lens: list[int]) -> torch.Tensor | None:
        """Head outputs (B, n_outputs) of ``seqs`` with each distinct prompt run once
        (:meth:`shared_prompt_states`; the same numbers as :meth:`forward` up to float
        rounding), or None when nothing is shared."""
        got = self.shared_prompt_states(seqs, prompt_lens)
        if got is None:
            return None
        h, r_mask = got  # the response tokens' states alone: the prompt is 0 tokens of them
        pooled = self.pool(h, r_mask, torch.zeros(h.shape[0], dtype=torch.long, device=h.device))
        return self.head(pooled.to(self.head.weight.dtype))

    def raw_reward(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, n_outputs) head outputs -> (B,) unnormalised reward."""
        if self.kind == "tiers":
            vals = torch.tensor(self.tier_values, dtype=outputs.dtype, device=outputs.device)
            return (outputs.softmax(-1) * vals).sum(-1)
        return outputs[:, 0]

    def reward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               prompt_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised reward, (B,)."""
        r = self.raw_reward(self.forward(input_ids, attention_mask, prompt_lens))
        return (r - self.norm_mean) / self.norm_std

    def set_normalization(self, mean: float, std: float) -> None:
        self.norm_mean = float(mean)
        self.norm_std = float(std) if std > 1e-8 else 1.0

    # ---- persistence -------------------------------------------------------------
    def hf_score(self) -> tuple[torch.Tensor, dict[str, Any]]:
        """The head as transformers' bias-free ``score`` layer: ``(weight, ambient_reward)``.

        Scalar: ``reward = (w.h + b - mean) / std = (w / std).h + (b - mean) / std``, so
        ``weight = w / std`` and ``offset = (b - mean) / std``.  Tiers: the logits' weights as
        they are; the bias and normalisation go to the config (softmax is not linear)."""
        w = self.head.weight.detach().double()
        b = self.head.bias.detach().double()
        if self.kind == "scalar":
            weight = w / self.norm_std
            extra = {"offset": float((b[0] - self.norm_mean) / self.norm_std),
                     "reward": "logits[:, 0] + offset", "norm_mean": self.norm_mean, "norm_std": self.norm_std,
                     "normalization_folded": True}
        else:
            weight = w
            extra = {"logit_bias": b.tolist(), "tier_values": list(self.tier_values),
                     "norm_mean": self.norm_mean, "norm_std": self.norm_std,
                     "reward": "(sum(softmax(logits + logit_bias) * tier_values) - norm_mean) / norm_std",
                     "normalization_folded": False}
        if self.pooling != "last":  # transformers reads the last token: say what this head reads
            extra["pooling"] = self.pooling
        return weight.to(self.head.weight.dtype), {"kind": self.kind, "format": FORMAT, **extra}

    def save_pretrained(self, out_dir: str | Path, tokenizer=None) -> None:
        """Write a ``*ForSequenceClassification`` directory (module docstring)."""
        from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lm = self.lm
        if hasattr(lm, "merge_and_unload"):
            raise AmbientError("merge LoRA adapters before saving a ScalarHeadModel")
        cfg = copy.deepcopy(lm.config)
        arch = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.get(cfg.model_type)
        if arch is None:
            raise AmbientError(f"{cfg.model_type}: transformers has no sequence-classification model for this "
                               "backbone; a reward model needs one to be saved")
        pad = tokenizer.pad_token_id if tokenizer is not None else cfg.pad_token_id
        eos = tokenizer.eos_token_id if tokenizer is not None else cfg.eos_token_id
        if pad is None or pad == eos or (isinstance(eos, list) and pad in eos):
            raise AmbientError(f"reward model: pad token id {pad} must exist and differ from EOS {eos} "
                               "(transformers finds the last token as the last non-pad one)")
        weight, extra = self.hf_score()
        labels = TIER_LABELS if self.kind == "tiers" else ("reward",)
        if self.kind == "tiers" and len(labels) != self.head.out_features:
            labels = tuple(f"tier_{i}" for i in range(self.head.out_features))
        cfg.architectures = [arch]
        cfg.num_labels = len(labels)
        cfg.id2label = dict(enumerate(labels))
        cfg.label2id = {v: k for k, v in cfg.id2label.items()}
        cfg.problem_type = "single_label_classification" if self.kind == "tiers" else "regression"
        cfg.pad_token_id = pad
        cfg.ambient_reward = extra
        from ambient_rlhf.checkpoint import save_tensors

        prefix = getattr(lm, "base_model_prefix", "model")
        tensors = {f"{prefix}.{k}": v for k, v in body_of(lm).state_dict().items()}
        tensors["score.weight"] = weight
        for old in (HEAD_FILE, OLD_HEAD_FILE, CONFIG_FILE, LM_HEAD_FILE):  # a rewrite of another format
            (out / old).unlink(missing_ok=True)
        save_tensors(out / MODEL_FILE, tensors, metadata={"format": "pt"})
        out_emb, in_emb = lm.get_output_embeddings(), lm.get_input_embeddings()
        if out_emb is not None and (in_emb is None or out_emb.weight is not in_emb.weight):
            save_tensors(out / LM_HEAD_FILE, dict(out_emb.state_dict()))
        cfg.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        meta = {
            "kind": self.kind,
            "format": FORMAT,
            "n_outputs": self.head.out_features,
            "tier_values": list(self.tier_values),
            "norm_mean": self.norm_mean,
            "norm_std": self.norm_std,
            **{k: v for k, v in extra.items() if k in ("offset", "logit_bias")},
            **{k: v for k, v in self.meta.items() if k not in _FORMAT_KEYS},
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None) -> "ScalarHeadModel":
        p = Path(path)
        cfg_path = p / CONFIG_FILE
        if not cfg_path.is_file():
            raise AmbientError(f"{p}: not a reward/value model directory (no {CONFIG_FILE})")
        cfg = json.loads(cfg_path.read_text())
        meta = {k: v for k, v in cfg.items() if k not in _FORMAT_KEYS}
        old = cfg.get("format") != FORMAT
        if old:  # the earlier format: the raw head beside a causal-LM directory
            head = _load_head(p)
            log.warning("%s: a reward model in the earlier format (causal LM + %s); it loads, but "
                        "transformers' AutoModelForSequenceClassification does not read it.  Convert it once "
                        "with\n  python -c \"from ambient_rlhf.models.heads import convert_reward_dir; "
                        "convert_reward_dir('%s')\"", p, HEAD_FILE, p)
        else:  # read (and so check) the weights file before transformers opens it
            from ambient_rlhf.checkpoint import load_tensors

            score = load_tensors(p / MODEL_FILE, "train the reward model again with `ambient rm`",
                                 keys=["score.weight"])["score.weight"].double()
            mean, std = float(cfg["norm_mean"]), float(cfg["norm_std"])
            if cfg["kind"] == "scalar":  # unfold: the model keeps the raw (trained) scale, as in training
                w, b = score * std, torch.tensor([float(cfg["offset"]) * std + mean], dtype=torch.float64)
            else:
                w, b = score, torch.tensor(cfg["logit_bias"], dtype=torch.float64)
            head = {"weight": w.float(), "bias": b.float()}
        lm = _load_body(p, dtype, old)
        m = cls(lm, kind=cfg["kind"], n_outputs=cfg["n_outputs"], tier_values=tuple(cfg["tier_values"]), meta=meta)
        m.head.load_state_dict(head)
        m.head.to(next(lm.parameters()).dtype)
        m.set_normalization(cfg["norm_mean"], cfg["norm_std"])
        return m


def _load_body(p: Path, dtype, old: bool) -> nn.Module:
    """The causal LM of a reward model directory (either format).  In the new format the
    checkpoint's ``score.weight`` is not part of a causal LM: transformers' report of it
    is silenced, and untied output embeddings come from ``lm_head.safetensors``."""
    from ambient_rlhf.models.load import load_causal_lm

    if old:
        return load_causal_lm(str(p), dtype=dtype)
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        lm = load_causal_lm(str(p), dtype=dtype)
    finally:
        hf_logging.set_verbosity(level)
    arch = type(lm).__name__
    lm.config.architectures = [arch]
    for k in ("ambient_reward", "problem_type"):
        if hasattr(lm.config, k):
            delattr(lm.config, k)
    lm.config.num_labels = 2  # transformers' default, as in a causal LM's config
    if (p / LM_HEAD_FILE).is_file():
        from ambient_rlhf.checkpoint import load_tensors

        out_emb = lm.get_output_embeddings()
        out_emb.load_state_dict(load_tensors(p / LM_HEAD_FILE, "train the reward model again with `ambient rm`"))
    return lm


def convert_reward_dir(path: str | Path) -> Path:
    """Rewrite a reward model directory of the earlier format (causal LM +
    ``reward_head.safetensors``) in place as a ``*ForSequenceClassification`` directory.

    The new files are written beside it first; ``reward_config.json`` is removed before the
    swap and moved in last, so an interrupted conversion leaves a directory that says it is
    incomplete (the new files wait in ``.<name>.convert-*``)."""
    import os
    import uuid

    from ambient_rlhf.models.load import load_tokenizer

    p = Path(path)
    m = ScalarHeadModel.from_pretrained(p)
    tok = load_tokenizer(str(p))
    tmp = p.parent / f".{p.name}.convert-{uuid.uuid4().hex[:8]}"
    m.save_pretrained(tmp, tok)
    (p / CONFIG_FILE).unlink()
    for f in [*p.glob("model*.safetensors*"), p / HEAD_FILE]:  # the causal LM's (maybe sharded) weights, the head
        f.unlink(missing_ok=True)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == CONFIG_FILE):
        os.replace(f, p / f.name)
    tmp.rmdir()
    return p


def _load_head(p: Path) -> dict[str, torch.Tensor]:
    from ambient_rlhf.checkpoint import load_tensors

    if not (p / HEAD_FILE).is_file() and (p / OLD_HEAD_FILE).is_file():
        old, new = p / OLD_HEAD_FILE, p / HEAD_FILE
        raise AmbientError(
            f"{old}: a reward head in the old pickle format, which ambient-rlhf no longer reads (loading a "
            "pickle can run code).  If you trust the file, convert it once with\n"
            f"  python -c \"import torch, safetensors.torch as st; st.save_file(torch.load('{old}', "
            f"weights_only=True), '{new}')\"\n"
            "or train the reward model again with `ambient rm`")
    head = load_tensors(p / HEAD_FILE, "train the reward model again with `ambient rm`")
    if set(head) != {"weight", "bias"}:
        raise AmbientError(f"{p / HEAD_FILE}: holds {sorted(head)}, expected weight and bias; "
                           "train the reward model again with `ambient rm`")
    return head


def reward_from_logits(logits: torch.Tensor, ambient_reward: dict[str, Any]) -> torch.Tensor:
    """(B, num_labels) logits of the saved ``AutoModelForSequenceClassification`` -> (B,)
    the project's normalised reward, from its ``config.ambient_reward``."""
    if ambient_reward["kind"] == "scalar":
        return logits[:, 0] + ambient_reward["offset"]
    bias = torch.tensor(ambient_reward["logit_bias"], dtype=logits.dtype, device=logits.device)
    vals = torch.tensor(ambient_reward["tier_values"], dtype=logits.dtype, device=logits.device)
    expected = ((logits + bias).softmax(-1) * vals).sum(-1)
    return (expected - ambient_reward["norm_mean"]) / ambient_reward["norm_std"]


def is_reward_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()
