"""Loading any reward model directory -- one model (:class:`~ambient_rlhf.models.heads.ScalarHeadModel`)
or a weighted combination (:class:`CompositeReward`) -- and the reward function TRL's
trainers take (:func:`trl_reward_function`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ambient_rlhf import AmbientError
from ambient_rlhf.models.bodies import body_of
from ambient_rlhf.models.heads import CONFIG_FILE, ScalarHeadModel, is_reward_dir


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

    def merged(self) -> "ScalarHeadModel | None":
        """One scalar model equal to the combination, when every member is a scalar model
        on the same backbone weights (e.g. heads trained on one frozen base) reading the
        same inputs: the weighted sum of linear heads is a linear head.  Else None."""
        from ambient_rlhf.models.reward_inputs import RewardInputSpec

        ms = list(self.members)
        if any(not isinstance(m, ScalarHeadModel) or m.kind != "scalar" for m in ms):
            return None
        if len({RewardInputSpec.from_meta(m.meta) for m in ms}) != 1:
            return None
        first = body_of(ms[0].lm).state_dict()
        for m in ms[1:]:
            other = body_of(m.lm).state_dict()
            if other.keys() != first.keys() or any(not torch.equal(first[k], other[k]) for k in first):
                return None
        w = sum(wt * m.hf_score()[0].double() for wt, m in zip(self.weights, ms))
        c = sum(wt * m.hf_score()[1]["offset"] for wt, m in zip(self.weights, ms))
        if len({m.pooling for m in ms}) > 1:
            return None  # one head cannot read two poolings
        spec_keys = set(RewardInputSpec().to_meta()) | {"pooling"}
        meta = {k: v for k, v in ms[0].meta.items() if k in spec_keys}
        meta.update(objective="combined", combined_from=[
            {"path": p, "weight": wt, "objective": m.meta.get("objective")}
            for p, wt, m in zip(self.paths or [""] * len(ms), self.weights, ms)])
        out = ScalarHeadModel(ms[0].lm, kind="scalar", meta=meta)
        with torch.no_grad():
            out.head.weight.copy_(w.to(out.head.weight.dtype))
            out.head.bias.fill_(float(c))
        out.tokenizer = self.tokenizer
        return out.eval()

    def save_pretrained(self, out_dir: str | Path) -> None:
        """A merged ``*ForSequenceClassification`` directory when :meth:`merged` can build
        one; else a directory holding the tokenizer and ``reward_config.json`` naming the
        members (each a sequence-classification directory of its own)."""
        one = self.merged()
        if one is not None:
            one.save_pretrained(out_dir, self.tokenizer)
            return
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


def trl_reward_function(rm: "str | Path | nn.Module", batch_size: int = 8, device=None):
    """A reward function for TRL's ``GRPOTrainer`` / ``RLOOTrainer`` (``reward_funcs=[fn]``)
    that scores exactly as ambient-rlhf does: any reward model (scalar, tiers, a
    combination), each reading its own rendering.

    ``rm``: a reward model directory or a loaded model.  TRL calls
    ``fn(prompts=..., completions=..., completion_ids=..., **dataset_columns)``: a prompt
    is the question (a string, or a conversation whose last message is the question); with
    ``completion_ids`` (the policy's token ids; policy and reward model must share a
    tokenizer, as in ``ambient rl``) a completion counts as ended when its last id is EOS,
    else the completion text is scored as ended.  A dataset column ``community`` feeds the
    community prefix.  Returns a list of floats (the normalised rewards)."""
    from ambient_rlhf.models.reward_inputs import RewardFunction

    name = Path(rm).name if isinstance(rm, (str, Path)) else "ambient_reward"
    model = load_reward_model(rm) if isinstance(rm, (str, Path)) else rm
    fn = RewardFunction(model, device=device, batch_size=batch_size)

    def text_of(x) -> str:
        return x[-1]["content"] if isinstance(x, list) else str(x)

    def reward(prompts, completions, completion_ids=None, community=None, **_):
        qs = [text_of(p) for p in prompts]
        if completion_ids is not None:
            return fn.tokens(qs, completion_ids, community).tolist()
        return fn.texts(qs, [text_of(c) for c in completions], community).tolist()

    reward.__name__ = name
    return reward
