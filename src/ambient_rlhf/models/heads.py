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
constants fitted after training on the valid split's reference responses and stored in
``reward_config.json``.

On disk (``save_pretrained``): the body as a normal causal-LM directory (loadable with
``AutoModelForCausalLM.from_pretrained``), the tokenizer, ``reward_head.safetensors`` and
``reward_config.json``.  A directory from an earlier version, with the head as the pickle
``reward_head.pt``, is refused with the one command that converts it: a pickle can run
code when loaded, and nothing ambient-rlhf reads is unpickled.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ambient_rlhf import AmbientError
from ambient_rlhf.rl.masking import last_token_index

HEAD_FILE = "reward_head.safetensors"
OLD_HEAD_FILE = "reward_head.pt"
CONFIG_FILE = "reward_config.json"


def body_of(lm: nn.Module) -> nn.Module:
    """The transformer body (no LM head) of a HF causal LM (also through a peft wrapper)."""
    base = lm
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    prefix = getattr(base, "base_model_prefix", "model")
    body = getattr(base, prefix, None)
    if body is None:
        raise AmbientError(f"cannot find the transformer body ('{prefix}') of {type(base).__name__}")
    return body


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw head output at the last real token: (B, n_outputs)."""
        h = self.hidden_states(input_ids, attention_mask)  # (B, T, d)
        idx = last_token_index(attention_mask)  # (B,)
        last = h[torch.arange(h.shape[0], device=h.device), idx]  # (B, d)
        return self.head(last.to(self.head.weight.dtype))

    def raw_reward(self, outputs: torch.Tensor) -> torch.Tensor:
        """(B, n_outputs) head outputs -> (B,) unnormalised reward."""
        if self.kind == "tiers":
            vals = torch.tensor(self.tier_values, dtype=outputs.dtype, device=outputs.device)
            return (outputs.softmax(-1) * vals).sum(-1)
        return outputs[:, 0]

    def reward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised reward, (B,)."""
        r = self.raw_reward(self.forward(input_ids, attention_mask))
        return (r - self.norm_mean) / self.norm_std

    def set_normalization(self, mean: float, std: float) -> None:
        self.norm_mean = float(mean)
        self.norm_std = float(std) if std > 1e-8 else 1.0

    # ---- persistence -------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path, tokenizer=None) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        lm = self.lm
        if hasattr(lm, "merge_and_unload"):
            raise AmbientError("merge LoRA adapters before saving a ScalarHeadModel")
        lm.save_pretrained(out)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
        from ambient_rlhf.checkpoint import save_tensors

        save_tensors(out / HEAD_FILE, self.head.state_dict())
        cfg = {
            "kind": self.kind,
            "n_outputs": self.head.out_features,
            "tier_values": list(self.tier_values),
            "norm_mean": self.norm_mean,
            "norm_std": self.norm_std,
            **self.meta,
        }
        (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None) -> "ScalarHeadModel":
        from ambient_rlhf.models.load import load_causal_lm

        p = Path(path)
        cfg_path = p / CONFIG_FILE
        if not cfg_path.is_file():
            raise AmbientError(f"{p}: not a reward/value model directory (no {CONFIG_FILE})")
        cfg = json.loads(cfg_path.read_text())
        lm = load_causal_lm(str(p), dtype=dtype)
        known = {"kind", "n_outputs", "tier_values", "norm_mean", "norm_std"}
        m = cls(lm, kind=cfg["kind"], n_outputs=cfg["n_outputs"], tier_values=tuple(cfg["tier_values"]),
                meta={k: v for k, v in cfg.items() if k not in known})
        m.head.load_state_dict(_load_head(p))
        m.head.to(next(lm.parameters()).dtype)
        m.set_normalization(cfg["norm_mean"], cfg["norm_std"])
        return m


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


def is_reward_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


# ---- loading any reward model: single or composite -------------------------------------
COMPOSITE_KIND = "composite"


def _vocab_fingerprint(tokenizer) -> tuple:
    """What must agree for two models to read the same token ids: vocabulary, EOS, pad."""
    return (tuple(sorted(tokenizer.get_vocab().items())), tokenizer.eos_token_id, tokenizer.pad_token_id)


class CompositeReward(nn.Module):
    """Weighted sum of the normalised rewards of several reward models.

    Score it through :class:`ambient_rlhf.models.reward_inputs.RewardFunction`, which lets
    each member read the text rendered from its own saved config (template, community
    prefix, token budgets): the members of a combination may have been trained with
    different budgets, so there is no single token sequence to give them all.  Members
    must share a tokenizer (checked here), so a policy's token ids mean the same to each."""

    def __init__(self, members: list[nn.Module], weights: list[float], paths: list[str] | None = None):
        super().__init__()
        if len(members) != len(weights) or not members:
            raise AmbientError(f"composite reward: {len(members)} members but {len(weights)} weights")
        fp = [_vocab_fingerprint(m.tokenizer) for m in members]
        for i, f in enumerate(fp[1:], 1):
            if f != fp[0]:
                where = f" ({paths[0]} vs {paths[i]})" if paths else ""
                raise AmbientError(f"composite reward: members 0 and {i} have different tokenizers{where}; "
                                   "combine reward models trained from the same base model")
        self.members = nn.ModuleList(members)
        self.weights = [float(w) for w in weights]
        self.paths = list(paths or [])
        self.tokenizer = members[0].tokenizer
        self.meta = {"kind": COMPOSITE_KIND}

    def save_pretrained(self, out_dir: str | Path) -> None:
        """A directory holding the tokenizer and ``reward_config.json`` naming the members."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out)
        cfg = {**self.meta, "members": [str(Path(p).resolve()) for p in self.paths], "weights": self.weights}
        (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")


def load_reward_model(path: str | Path, dtype=None) -> "ScalarHeadModel | CompositeReward":
    """Load a reward model directory written by ``ambient rm`` or ``ambient rm combine``.

    Returns a :class:`ScalarHeadModel` (in eval mode) or a :class:`CompositeReward`, each
    with ``.tokenizer``; score either with
    :class:`~ambient_rlhf.models.reward_inputs.RewardFunction`."""
    from ambient_rlhf.models.load import load_tokenizer

    p = Path(path)
    cfg_path = p / CONFIG_FILE
    if not cfg_path.is_file():
        raise AmbientError(f"{p}: not a reward model directory (no {CONFIG_FILE}); train one with `ambient rm`")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("kind") == COMPOSITE_KIND:
        paths = []
        for m in cfg["members"]:
            mp = Path(m)
            if not mp.is_absolute():
                mp = p / mp
            if not is_reward_dir(mp):
                raise AmbientError(f"{cfg_path}: member {m} is not a reward model directory (moved or deleted?)")
            paths.append(str(mp))
        members = [load_reward_model(mp, dtype=dtype) for mp in paths]
        return CompositeReward(members, cfg["weights"], paths).eval()
    m = ScalarHeadModel.from_pretrained(p, dtype=dtype)
    m.tokenizer = load_tokenizer(str(p))
    return m.eval()
