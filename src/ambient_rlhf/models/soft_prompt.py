"""Soft-prompt goals: a frozen causal LM steered only by learned input vectors.

The seed's "goals in autoregressive models" in its frozen-weights form: keep every weight
of the model, and learn a few *virtual tokens* (peft prompt tuning, Lester et al. 2021)
whose embeddings are prepended to the input, so that the wanted output becomes likelier.

**One soft prompt per goal.**  peft's prompt-tuning adapter is one prompt of
``num_virtual_tokens`` vectors.  A goal-conditioned model needs one per tier, so a
:class:`SoftPromptLM` holds one peft prompt-tuning adapter per *name* (``good``, ``ok``,
``bad`` for tier conditioning; ``default`` for a single prompt) in one ``PeftModel``, and
the goal of each row selects its block of virtual tokens.  Why adapters and not one long
prompt whose blocks are masked: each tier's prompt is then a standard peft adapter
directory (``PeftModel.from_pretrained(base, DIR/soft_prompt/good)`` loads it, and peft's
own ``generate`` reproduces this module's outputs), and a goal adds no token to the
vocabulary, so the embedding matrix -- every base weight -- stays bit-identical.  peft
runs one adapter per forward pass; this module instead gathers the block of each row's
goal itself, so one batch can mix tiers, and training sees exactly the mixed batches of
ordinary SFT.

Layout of a forward pass (virtual tokens first, as peft places them)::

    inputs_embeds = [ P[goal] (k) | embed(input_ids) (T) ]     (B, k + T, d)
    attention     = [ 1 ... 1     | attention_mask       ]
    positions     = cumsum(attention) - 1   (virtual 0..k-1, the text from k on,
                                             whatever the padding side)

Outputs (logits, hidden states) are returned for the ``T`` text positions only, so
callers index them as for the plain model.  With a KV cache (sampling), later calls
carry only new tokens; the cache already holds the virtual tokens.

Saved as ``save_pretrained(DIR)``: the (unchanged) base model files in ``DIR`` and the
adapters under ``DIR/soft_prompt/`` (``default`` at its root, every other name in a
subfolder, peft's layout) with ``soft_prompts.json`` naming them.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ambient_rlhf import AmbientError
from ambient_rlhf.models.kv import cache_kw

SOFT_PROMPT_DIR = "soft_prompt"
INDEX_FILE = "soft_prompts.json"
DEFAULT = "default"


def is_soft_prompt_dir(path: str | Path) -> bool:
    return (Path(path) / SOFT_PROMPT_DIR / INDEX_FILE).is_file()


def _adapter_dir(root: Path, name: str) -> Path:
    return root if name == DEFAULT else root / name


class SoftPromptLM(nn.Module):
    """A frozen causal LM with one trainable peft soft prompt per name.

    ``peft_model``: a ``PeftModelForCausalLM`` with a prompt-tuning adapter for each of
    ``names`` (all with the same number of virtual tokens)."""

    def __init__(self, peft_model: nn.Module, names: list[str]):
        super().__init__()
        self.peft = peft_model
        self.names = list(names)
        self.active = self.names[0]
        ks = {peft_model.peft_config[n].num_virtual_tokens for n in self.names}
        if len(ks) != 1:
            raise ValueError(f"soft prompts of different lengths: {ks}")
        self.k = ks.pop()

    # ---- what callers of a causal LM use ----------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return self.peft.get_base_model()

    @property
    def config(self):
        return self.base.config

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def select(self, goal: str | None) -> None:
        """Make ``goal``'s prompt the one used by rows without an explicit goal (sampling,
        log-probs).  ``None`` selects ``default``."""
        name = DEFAULT if goal is None else goal
        if name not in self.names:
            raise AmbientError(f"goal={goal}: this soft-prompt model has prompts for {self.names}"
                               + ("; give a goal (--goal good)" if goal is None else ""))
        self.active = name
        self.peft.set_adapter(name)

    def prompt_table(self) -> torch.Tensor:
        """(G, k, d): the virtual-token embeddings of every name, in ``names`` order."""
        return torch.stack([self.peft.prompt_encoder[n].embedding.weight for n in self.names])

    def _expand(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                goal_idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """inputs_embeds (B, k+T, d), attention (B, k+T), positions (B, k+T)."""
        B, T = input_ids.shape
        if goal_idx is None:
            goal_idx = torch.full((B,), self.names.index(self.active), dtype=torch.long)
        emb = self.get_input_embeddings()(input_ids)  # (B, T, d)
        prompts = self.prompt_table()[goal_idx.to(emb.device)].to(emb.dtype)  # (B, k, d)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask = torch.cat([torch.ones(B, self.k, dtype=mask.dtype, device=mask.device), mask], 1)
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return torch.cat([prompts, emb], 1), mask, pos

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               goal_idx: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states of the text positions, (B, T, d)."""
        embeds, mask, pos = self._expand(input_ids, attention_mask, goal_idx)
        out = self.base.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, self.k:]

    def get_decoder(self):
        """A decoder-like callable: ``(input_ids, attention_mask, ...) -> .last_hidden_state``
        of the text positions (what ``train.rollout.response_logits`` reads)."""
        def decoder(input_ids, attention_mask=None, position_ids=None, use_cache=False, goal_idx=None, **_):
            return SimpleNamespace(last_hidden_state=self.hidden(input_ids, attention_mask, goal_idx))
        return decoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Any = None, use_cache: bool = False,
                logits_to_keep: int = 0, goal_idx: torch.Tensor | None = None, cache: Any = None, **_):
        """Logits of the text positions (the last ``logits_to_keep`` when > 0), like the
        base model's ``forward``.  ``position_ids`` are recomputed from the mask (the
        virtual tokens shift them by ``k``).  With ``past_key_values`` the call continues
        a cached sequence: ``input_ids`` are new tokens only, ``attention_mask`` covers
        the text so far, and the cache already holds the virtual tokens.  ``cache`` is the
        same argument under its transformers >= 5.24 name (:mod:`ambient_rlhf.models.kv`)."""
        past_key_values = cache if cache is not None else past_key_values
        if past_key_values is None:
            embeds, mask, pos = self._expand(input_ids, attention_mask, goal_idx)
            out = self.base(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=use_cache,
                            logits_to_keep=logits_to_keep)
            if not logits_to_keep:
                out.logits = out.logits[:, self.k:]
            return out
        B = input_ids.shape[0]
        mask = torch.cat([torch.ones(B, self.k, dtype=attention_mask.dtype, device=attention_mask.device),
                          attention_mask], 1)
        pos = (mask.long().cumsum(-1) - 1)[:, -input_ids.shape[1]:]
        return self.base(input_ids=input_ids, attention_mask=mask, position_ids=pos,
                         **cache_kw(self.base, past_key_values), use_cache=use_cache, logits_to_keep=logits_to_keep)

    @torch.no_grad()
    def generate(self, **kw):
        """peft's own generation with the selected prompt (the standard loader's path)."""
        import warnings

        self.peft.set_adapter(self.active)
        with warnings.catch_warnings():  # peft recomputes positions itself, as forward() does
            warnings.filterwarnings("ignore", message="Position ids are not supported")
            return self.peft.generate(**kw)

    # ---- files ---------------------------------------------------------------------------------
    def save_pretrained(self, out: str | Path, **kw) -> None:
        """The base model's files in ``out`` (its weights unchanged) and the soft prompts
        as peft adapters under ``out/soft_prompt``."""
        out = Path(out)
        self.base.save_pretrained(out, **kw)
        root = out / SOFT_PROMPT_DIR
        self.peft.save_pretrained(root, selected_adapters=self.names)
        (root / INDEX_FILE).write_text(json.dumps({"names": self.names, "virtual_tokens": self.k}) + "\n")


def init_vectors(base: nn.Module, tok, text: str, k: int) -> torch.Tensor:
    """(k, d) initial virtual tokens: the embeddings of ``text``'s tokens, repeated to
    ``k`` (peft's ``PromptTuningInit.TEXT``, done with our tokenizer): real word vectors
    start the prompt on the model's input manifold, where random vectors train poorly
    (Lester et al. 2021, section 3)."""
    ids = tok(text, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
    ids = (ids * (k // len(ids) + 1))[:k]
    return base.get_input_embeddings().weight[torch.tensor(ids)].detach().clone()


def wrap(base: nn.Module, tok, names: list[str], k: int, init_text: str) -> SoftPromptLM:
    """Freeze ``base`` and give it one fresh soft prompt of ``k`` virtual tokens per name;
    ``init_text`` may hold ``{name}`` (``"a {name} answer:"``)."""
    from peft import PromptTuningConfig, get_peft_model

    def cfg():
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=k,
                                  base_model_name_or_path=getattr(base.config, "_name_or_path", None))

    pm = get_peft_model(base, cfg(), adapter_name=names[0])
    for n in names[1:]:
        pm.add_adapter(n, cfg())
    for n in names:
        with torch.no_grad():
            pm.prompt_encoder[n].embedding.weight.copy_(init_vectors(base, tok, init_text.format(name=n), k))
    for p in pm.get_base_model().parameters():
        p.requires_grad_(False)
    for n in names:
        pm.prompt_encoder[n].embedding.weight.requires_grad_(True)
    lm = SoftPromptLM(pm, names)
    lm.select(names[0] if DEFAULT not in names else DEFAULT)
    return lm


def load(base: nn.Module, path: str | Path, trainable: bool = False) -> SoftPromptLM:
    """The soft prompts saved in ``path/soft_prompt`` on ``base``, with peft's loader."""
    from peft import PeftModel

    root = Path(path) / SOFT_PROMPT_DIR
    try:
        names = json.loads((root / INDEX_FILE).read_text())["names"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise AmbientError(f"{root / INDEX_FILE}: unreadable ({e}); the soft prompts of {path} cannot be loaded") from None
    pm = PeftModel.from_pretrained(base, str(_adapter_dir(root, names[0])), adapter_name=names[0], is_trainable=trainable)
    for n in names[1:]:
        pm.load_adapter(str(_adapter_dir(root, n)), adapter_name=n, is_trainable=trainable)
    lm = SoftPromptLM(pm, names)
    lm.select(names[0] if DEFAULT not in names else DEFAULT)
    return lm


def select_goal(model: nn.Module, goal: str | None) -> str | None:
    """The goal to render as a token in the prompt text: ``goal`` for a goal-token model;
    for a soft-prompt model the goal selects its prompt instead, and no token is written
    (``None``)."""
    if isinstance(model, SoftPromptLM):
        model.select(goal)
        return None
    return goal
