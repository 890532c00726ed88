"""The one place where the text a reward model reads is rendered into token ids.

A reward model is trained on ``render_prompt(prefix + prompt) + response + EOS`` under
its own budgets; it must be scored on exactly that, whoever scores it: the reward
trainer (``ambient rm``), ``ambient rm eval``, the RL reward, ``ambient eval`` and the
members of a combined reward model.  All of them go through :class:`RewardInputs`,
built from the reward model's saved config (``reward_config.json``), never from the
caller's own settings:

* ``template``: the prompt template (``models.tokenize.render_prompt``);
* ``community_prefix``: ``[community] `` before the prompt text;
* ``max_prompt_tokens``: the rendered prompt's budget; the user's text is cut from the
  **left** (the question's end is kept, the template's tokens always are);
* ``max_response_tokens``: the response's budget *including* EOS; a response cut to fit
  (or one that never ended, like a policy sample that hit its length limit) has no EOS.

:class:`RewardFunction` scores (prompt, response, community) triples -- given as text
or as the policy's token ids -- with any reward model (single or combined); a combined
model's members each render their own inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger

log = get_logger("models.reward_inputs")

PROMPT_TRUNCATION = "left"
RESPONSE_TRUNCATION = "right"


@dataclass(frozen=True)
class RewardInputSpec:
    """How a reward model's inputs are rendered (saved in its ``reward_config.json``)."""

    template: str = "auto"
    """``auto``, ``chat`` or ``plain`` (see ``models.tokenize.render_prompt``)."""
    max_prompt_tokens: int = 128
    """Budget of the rendered prompt; the user's text is cut from the left."""
    max_response_tokens: int = 128
    """Budget of the response including EOS; cut from the right (then no EOS)."""
    community_prefix: bool = False
    """Prefix the prompt with ``[community] ``."""
    prompt_truncation: str = PROMPT_TRUNCATION
    """Which end of the prompt text is cut: always ``left``."""
    response_truncation: str = RESPONSE_TRUNCATION
    """Which end of the response is cut: always ``right``."""

    def __post_init__(self):
        if self.prompt_truncation != PROMPT_TRUNCATION or self.response_truncation != RESPONSE_TRUNCATION:
            raise AmbientError(f"reward inputs: truncation sides prompt={self.prompt_truncation!r} "
                               f"response={self.response_truncation!r} are not supported (left / right)")
        if self.max_prompt_tokens < 1 or self.max_response_tokens < 1:
            raise AmbientError(f"reward inputs: token budgets must be >= 1 (max_prompt_tokens="
                               f"{self.max_prompt_tokens}, max_response_tokens={self.max_response_tokens})")

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "RewardInputSpec":
        """From a ``reward_config.json``; keys it lacks (older directories) take the
        defaults those directories were trained with."""
        d = cls()
        return cls(template=str(meta.get("template", d.template)),
                   max_prompt_tokens=int(meta.get("max_prompt_tokens", d.max_prompt_tokens)),
                   max_response_tokens=int(meta.get("max_response_tokens", d.max_response_tokens)),
                   community_prefix=bool(meta.get("community_prefix", d.community_prefix)),
                   prompt_truncation=str(meta.get("prompt_truncation", d.prompt_truncation)),
                   response_truncation=str(meta.get("response_truncation", d.response_truncation)))

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)


def prompt_text(prompt: str, community: str | None, prefix: bool) -> str:
    """The prompt as the reward model reads it, before the template."""
    return f"[{community}] {prompt}" if prefix and community else prompt


@dataclass
class RewardEncoding:
    input_ids: list[int]
    """Rendered prompt ids followed by response ids (EOS when the response ended and fits)."""
    prompt_len: int
    """Number of leading prompt tokens."""
    prompt_truncated: bool
    response_truncated: bool


class RewardInputs:
    """Token ids of reward-model inputs, from one reward model's :class:`RewardInputSpec`.

    Prompts are rendered once per (prompt, community) and cached: a thread's responses,
    and an RL run's repeated prompts, share them."""

    def __init__(self, tokenizer, spec: RewardInputSpec):
        from ambient_rlhf.models.tokenize import resolve_template

        self.tok = tokenizer
        self.spec = spec
        try:
            self.template = resolve_template(tokenizer, spec.template)
        except ValueError as e:
            raise AmbientError(f"reward inputs: {e}") from None
        self._prompts: dict[tuple[str, str | None], tuple[list[int], bool]] = {}

    @classmethod
    def from_pretrained(cls, path) -> "RewardInputs":
        """The inputs of the reward model saved in directory ``path`` (its tokenizer and
        ``reward_config.json``): the public way to render exactly what it was trained on."""
        import json
        from pathlib import Path

        from ambient_rlhf.models.load import load_tokenizer

        p = Path(path)
        cfg = p / "reward_config.json"
        if not cfg.is_file():
            raise AmbientError(f"{p}: not a reward model directory (no reward_config.json)")
        meta = json.loads(cfg.read_text())
        if "members" in meta:
            raise AmbientError(f"{p}: a combination of reward models; render for each member directory "
                               f"({', '.join(meta['members'])})")
        return cls(load_tokenizer(str(p), padding_side="right"), RewardInputSpec.from_meta(meta))

    def prompt_ids(self, prompt: str, community: str | None = None) -> tuple[list[int], bool]:
        """``(ids, truncated)`` of the rendered prompt."""
        key = (prompt, community if self.spec.community_prefix else None)
        got = self._prompts.get(key)
        if got is None:
            from ambient_rlhf.models.tokenize import encode_prompt

            text = prompt_text(prompt, community, self.spec.community_prefix)
            try:
                got = encode_prompt(self.tok, text, self.spec.max_prompt_tokens, self.template)
            except ValueError as e:  # a budget smaller than the template
                raise AmbientError(f"reward model max_prompt_tokens / template: {e}") from None
            self._prompts[key] = got
        return got

    def response_ids(self, response: str, ended: bool = True) -> tuple[list[int], bool]:
        """``(ids, truncated)`` of a response given as text: its tokens, then EOS when it
        ended (a human answer did; a sample that hit its length limit did not) and the
        EOS fits in the budget."""
        ids = self.tok(response, add_special_tokens=False)["input_ids"]
        return self.clip_response(ids + [self.tok.eos_token_id] if ended else ids, ended)

    def clip_response(self, ids: Sequence[int], ended: bool) -> tuple[list[int], bool]:
        """``(ids, truncated)`` of response token ids -- EOS included when ``ended`` -- cut
        to the budget from the right.  A response that loses its EOS counts as truncated."""
        ids = list(ids)
        n = self.spec.max_response_tokens
        cut = len(ids) > n
        return (ids[:n] if cut else ids), cut

    def encode(self, prompt: str, response: str, community: str | None = None,
               ended: bool = True) -> RewardEncoding:
        p_ids, p_cut = self.prompt_ids(prompt, community)
        r_ids, r_cut = self.response_ids(response, ended)
        return RewardEncoding(p_ids + r_ids, len(p_ids), p_cut, r_cut)

    def encode_tokens(self, prompt: str, response_ids: Sequence[int], community: str | None = None,
                      ended: bool = True) -> RewardEncoding:
        """A policy sample's token ids (EOS last when ``ended``), not re-tokenised."""
        p_ids, p_cut = self.prompt_ids(prompt, community)
        r_ids, r_cut = self.clip_response(response_ids, ended)
        return RewardEncoding(p_ids + r_ids, len(p_ids), p_cut, r_cut)


    def batch(self, prompts: Sequence[str], responses: Sequence[str],
              communities: Sequence[str | None] | None = None) -> dict[str, Any]:
        """``{"input_ids", "attention_mask"}`` (B, T) tensors of text responses, padded on
        the right with the pad token: give them to the saved
        ``AutoModelForSequenceClassification`` (which reads the last non-pad token) or to
        :meth:`ScalarHeadModel.reward`."""
        from ambient_rlhf.models.tokenize import pad_batch

        communities = communities if communities is not None else [None] * len(prompts)
        enc = [self.encode(p, r, c).input_ids for p, r, c in zip(prompts, responses, communities)]
        ids, mask = pad_batch(enc, self.tok.pad_token_id, side="right")
        return {"input_ids": ids, "attention_mask": mask}

    def text(self, prompt: str, response: str, community: str | None = None, ended: bool = True) -> str:
        """The rendered input as text (for reading; score the ids of :meth:`encode`, since
        re-tokenising a decoded text need not give the same ids)."""
        return self.tok.decode(self.encode(prompt, response, community, ended).input_ids)


def reward_inputs_of(rm) -> RewardInputs:
    """The :class:`RewardInputs` of a loaded single reward model (``ScalarHeadModel``
    with ``.tokenizer`` and ``.meta``)."""
    return RewardInputs(rm.tokenizer, RewardInputSpec.from_meta(getattr(rm, "meta", {}) or {}))


class RewardFunction:
    """Normalised rewards of (prompt, response, community) triples under any reward model.

    ``rm``: a single reward model or a combined one (``models.reward_model.CompositeReward``:
    the weighted sum of its members' rewards, each member scoring its own rendering).
    ``drop_ids``: token ids the policy has and the reward model lacks (goal tokens),
    removed from token-id responses before scoring.  ``share_prompts``: responses to the
    same prompt (a thread's answers, RLOO's k samples) are batched together and their
    prompt runs once (:meth:`ScalarHeadModel.shared_prompt_outputs`; the same rewards up
    to float rounding).

    Models that read the same inputs (tokenizer and :class:`RewardInputSpec`) and hold
    the same bottom layers -- members of a combination trained from one base, or the
    judges of :meth:`of_models` -- run those layers once per batch
    (:mod:`ambient_rlhf.models.shared_bottom`).  Once per group, the first rows of its
    first batch are scored both jointly and by each model on its own; the group is scored
    jointly only when that gives the same numbers bit for bit (else each model alone, as
    without the group).  Keep one instance for many calls: the check is done once."""

    def __init__(self, rm, device=None, batch_size: int = 8, drop_ids: Sequence[int] = (), share_prompts: bool = True,
                 joint: bool = True):
        members = getattr(rm, "members", None)
        weights = [float(w) for w in rm.weights] if members is not None else [1.0]
        self._setup(rm, list(members) if members is not None else [rm], weights, device, batch_size, drop_ids,
                    share_prompts, joint)

    def _setup(self, rm, models: list, weights: list[float], device, batch_size: int, drop_ids: Sequence[int],
               share_prompts: bool, joint: bool) -> None:
        self.rm = rm
        self.share_prompts = share_prompts
        self.batch_size = max(int(batch_size), 1)
        self.drop = set(int(i) for i in drop_ids)
        self.parts = [(w, m, reward_inputs_of(m)) for w, m in zip(weights, models)]
        self.device = device if device is not None else next(models[0].parameters()).device
        self.groups, self.groups_shared = _joint_groups(self.parts, joint)
        self.joint_checked: dict[int, bool] = {}  # group's first part -> scored jointly (after its check)
        self.check_rows = 4  # the check: the first rows of the first batch, jointly and each alone

    @classmethod
    def of_models(cls, models: Sequence, device=None, batch_size: int = 8, share_prompts: bool = True,
                  joint: bool = True) -> "RewardFunction":
        """Several single reward models scoring the same texts: :meth:`each_texts` gives
        each model's rewards (``texts`` their sum)."""
        self = cls.__new__(cls)
        self._setup(None, list(models), [1.0] * len(models), device, batch_size, (), share_prompts, joint)
        return self

    def _order(self, encodings: list[RewardEncoding], share: bool) -> list[int]:
        if share:  # a prompt's responses in one batch (it runs once), little padding on either side
            return sorted(range(len(encodings)), key=lambda i: (encodings[i].prompt_len,
                          encodings[i].input_ids[: encodings[i].prompt_len], len(encodings[i].input_ids)))
        return sorted(range(len(encodings)), key=lambda i: len(encodings[i].input_ids))  # little padding

    def _batch(self, model, encodings: list[RewardEncoding], idx: list[int], pad_id: int, share: bool):
        """Normalised rewards (len(idx),) of one batch under one model, on the CPU."""
        import torch

        from ambient_rlhf.models.tokenize import pad_batch

        with torch.no_grad():
            got = (model.shared_prompt_outputs([encodings[i].input_ids for i in idx],
                                               [encodings[i].prompt_len for i in idx]) if share else None)
            if got is not None:
                return ((model.raw_reward(got) - model.norm_mean) / model.norm_std).float().cpu()
            ids, mask = pad_batch([encodings[i].input_ids for i in idx], pad_id, side="right")
            p_len = torch.tensor([encodings[i].prompt_len for i in idx], device=self.device)
            return model.reward(ids.to(self.device), mask.to(self.device), p_len).float().cpu()

    def _joint(self, models: list, group: list[int], encodings: list[RewardEncoding], idx: list[int], pad_id: int,
               share: bool) -> list | None:
        """Normalised rewards of one batch under each of ``models``, their shared bottom
        layers run once; None where that cannot be done for this batch."""
        import torch

        from ambient_rlhf.models.shared_bottom import joint_outputs

        with torch.no_grad():
            raw = joint_outputs(models, self.groups_shared[group[0]], [encodings[i].input_ids for i in idx],
                                [encodings[i].prompt_len for i in idx], pad_id, share)
        if raw is None:
            return None
        return [((m.raw_reward(r) - m.norm_mean) / m.norm_std).float().cpu() for m, r in zip(models, raw)]

    def _score_group(self, group: list[int], encodings: list[RewardEncoding], pad_id: int) -> list:
        """Normalised rewards (N,) of ``encodings`` under each part of ``group`` (parts
        with the same inputs; more than one when they share bottom layers)."""
        import torch

        models = [self.parts[k][1] for k in group]
        outs = [torch.zeros(len(encodings)) for _ in models]
        share = self.share_prompts and all(hasattr(m, "shared_prompt_outputs") for m in models)
        order = self._order(encodings, share)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            rows = torch.tensor(idx)
            got = None
            if len(models) > 1 and group[0] not in self.joint_checked:  # once: a slice jointly and each alone
                check = idx[:self.check_rows]
                joint = self._joint(models, group, encodings, check, pad_id, share)
                alone = [self._batch(m, encodings, check, pad_id, share) for m in models]
                same = joint is not None and all(torch.equal(a, b) for a, b in zip(alone, joint))
                self.joint_checked[group[0]] = same
                if not same:
                    log.info("reward models %s: scored jointly they differ from each alone (in the last bits); "
                             "scoring each on its own", ", ".join(str(k) for k in group))
            if len(models) > 1 and self.joint_checked[group[0]]:
                got = self._joint(models, group, encodings, idx, pad_id, share)
            if got is None:
                got = [self._batch(m, encodings, idx, pad_id, share) for m in models]
            for o, r in zip(outs, got):
                o[rows] = r
        return outs

    def _each(self, encode) -> list:
        """Each part's normalised rewards, (N,) per part in the order of ``self.parts``;
        ``encode(inputs)`` renders the texts for one part's inputs."""
        res: list = [None] * len(self.parts)
        for group in self.groups:
            inputs = self.parts[group[0]][2]
            enc = encode(inputs)
            for k, out in zip(group, self._score_group(group, enc, inputs.tok.pad_token_id)):
                res[k] = out
        return res

    def each_texts(self, prompts: Sequence[str], responses: Sequence[str],
                   communities: Sequence[str | None] | None = None, ended: Sequence[bool] | None = None) -> list:
        """Each part's (N,) float32 rewards of text responses (``ended``: default all True)."""
        n = len(prompts)
        communities = communities if communities is not None else [None] * n
        ended = ended if ended is not None else [True] * n
        return self._each(lambda inputs: [inputs.encode(p, r, c, e)
                                          for p, r, c, e in zip(prompts, responses, communities, ended)])

    def texts(self, prompts: Sequence[str], responses: Sequence[str], communities: Sequence[str | None] | None = None,
              ended: Sequence[bool] | None = None):
        """(N,) float32 tensor of rewards of text responses (``ended``: default all True)."""
        import torch

        total = torch.zeros(len(prompts))
        for (w, _, _), r in zip(self.parts, self.each_texts(prompts, responses, communities, ended)):
            total += w * r
        return total

    def tokens(self, prompts: Sequence[str], responses: Sequence[Sequence[int]],
               communities: Sequence[str | None] | None = None, ended: Sequence[bool] | None = None):
        """(N,) float32 tensor of rewards of responses given as the policy's token ids
        (EOS last when ``ended``; by default a response ended when its last id is EOS)."""
        import torch

        n = len(prompts)
        communities = communities if communities is not None else [None] * n
        resp = [[int(t) for t in r if int(t) not in self.drop] for r in responses]

        def encode(inputs):
            eos = inputs.tok.eos_token_id
            end = ended if ended is not None else [bool(r) and r[-1] == eos for r in resp]
            return [inputs.encode_tokens(p, r, c, e) for p, r, c, e in zip(prompts, resp, communities, end)]

        total = torch.zeros(n)
        for (w, _, _), r in zip(self.parts, self._each(encode)):
            total += w * r
        return total


def _joint_groups(parts, joint: bool = True) -> tuple[list[list[int]], dict[int, int]]:
    """``(groups, shared)``: indices of ``parts`` in groups that can be scored together --
    the same rendering (tokenizer vocabulary, EOS, pad and :class:`RewardInputSpec`) and at
    least one shared bottom layer (:func:`~ambient_rlhf.models.shared_bottom.shared_bottom`),
    the others alone -- and each group's shared layers by its first index."""
    from ambient_rlhf.models.shared_bottom import shared_bottom

    def key(inputs: "RewardInputs"):
        tok = inputs.tok
        return (inputs.spec, tuple(sorted(tok.get_vocab().items())), tok.eos_token_id, tok.pad_token_id)

    by_key: dict = {}
    for k, (_, m, inputs) in enumerate(parts):
        if not joint or not hasattr(m, "shared_prompt_outputs") or len(parts) < 2:
            by_key[("alone", k)] = [k]
            continue
        by_key.setdefault(key(inputs), []).append(k)
    groups, shared = [], {}
    for members in by_key.values():
        n = shared_bottom([parts[k][1] for k in members]) if len(members) > 1 else 0
        if n > 0:
            groups.append(members)
            shared[members[0]] = n
        else:
            groups.extend([k] for k in members)
    return sorted(groups), shared


class TextTable:
    """Distinct (prompt, response, community) texts of a reward model, each rendered once
    by :class:`RewardInputs`; rows are indices into ``ids``.  The reward trainer and
    ``rm eval`` score rows of a table."""

    def __init__(self, inputs: RewardInputs):
        self.inputs = inputs
        self.tok = inputs.tok
        self.ids: list[list[int]] = []
        self.prompt_len: list[int] = []
        self.resp_chars: list[int] = []
        self.texts: list[tuple[str, str, str | None]] = []
        self.index: dict[tuple[str, str, str | None], int] = {}
        self.prompt_truncated = 0
        self.response_truncated = 0

    @classmethod
    def of(cls, tokenizer, max_prompt_tokens: int, max_response_tokens: int, template: str = "auto",
           community_prefix: bool = False) -> "TextTable":
        """A table for the given tokenizer and budgets."""
        return cls(RewardInputs(tokenizer, RewardInputSpec(template, max_prompt_tokens, max_response_tokens,
                                                           community_prefix)))

    def add(self, prompt: str, response: str, community: str | None = None) -> int:
        key = (prompt, response, community if self.inputs.spec.community_prefix else None)
        i = self.index.get(key)
        if i is not None:
            return i
        e = self.inputs.encode(prompt, response, community)
        self.prompt_truncated += e.prompt_truncated
        self.response_truncated += e.response_truncated
        i = len(self.ids)
        self.index[key] = i
        self.ids.append(e.input_ids)
        self.prompt_len.append(e.prompt_len)
        self.resp_chars.append(len(response))
        self.texts.append((prompt, response, community))
        return i

    def __len__(self) -> int:
        return len(self.ids)
