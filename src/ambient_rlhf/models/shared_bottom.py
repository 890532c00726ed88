"""Reward models that hold the same bottom layers, scored with those layers run once.

A proxy and a gold reward model trained from one base with only their top layers trained
(the demo's ``rm.train_layers: 2``), head-only models on one backbone (``train_layers:
0``), the members of a combined reward: each scores a text by running the same frozen
layers first.  :func:`shared_bottom` finds how many bottom layers a set of loaded models
holds bit for bit; :func:`joint_outputs` runs a batch through them once and each model's
own top layers (:class:`TopLayers`), final norm and head on the states where they part.

The split does, layer by layer, what each model's own forward does (the same inputs,
masks, positions and keys/values), so the outputs are those of each model alone; the
caller (:class:`ambient_rlhf.models.reward_inputs.RewardFunction`) checks that bit for bit
on its first batch and scores each model on its own where they differ.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from ambient_rlhf.models.bodies import body_of
from ambient_rlhf.models.kv import cache_kw, cache_out, prompt_groups, select_rows


class _Stop(Exception):
    pass


def states_into(layer: nn.Module, fn: Callable[[], object]) -> torch.Tensor:
    """The hidden states entering ``layer`` in the forward that ``fn`` runs, which is
    stopped there (the layers below it run; nothing above it does)."""
    got: dict[str, torch.Tensor] = {}

    def grab(module, args, kwargs):
        got["h"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    handle = layer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        fn()
    except _Stop:
        pass
    finally:
        handle.remove()
    return got.pop("h")


class TopLayers(nn.Module):
    """The top ``n`` layers + final norm + head, run on cached hidden states that enter
    layer ``L - n``.  Runs the body's own forward with ``inputs_embeds`` = the cached
    states and its layer list cut to the top ``n`` (so masks and rotary embeddings are
    the body's own)."""

    def __init__(self, rm, n: int):
        super().__init__()
        body = body_of(rm.lm)
        self.__dict__["_body"] = body  # not a submodule: only the trained part is registered
        self.layers = nn.ModuleList(list(body.layers)[len(body.layers) - n:])
        self.norm = body.norm
        self.head = rm.head
        self.pooling = rm.pooling

    def _attention_modules(self) -> list[nn.Module] | None:
        """The top layers' attention modules when each indexes the KV cache by its own
        ``layer_idx`` (Llama-like bodies), else None (no prompt sharing)."""
        mods = [getattr(layer, "self_attn", None) for layer in self.layers]
        return mods if all(m is not None and isinstance(getattr(m, "layer_idx", None), int) for m in mods) else None

    @property
    def can_share_prompts(self) -> bool:
        return self._attention_modules() is not None

    def _run(self, **kwargs):
        """The body's forward with its layer list cut to the top layers.  With a cache the
        cut layers index it as 0..n-1 (their own indices are L-n..L-1, and the body reads
        the cached length from layer 0), restored afterwards."""
        body = self._body
        full = body.layers
        mods = self._attention_modules() if kwargs.get("use_cache") else None
        idx = [m.layer_idx for m in mods] if mods else []
        body.layers = self.layers
        try:
            for i, m in enumerate(mods or ()):
                m.layer_idx = i
            return body(**kwargs)
        finally:
            body.layers = full
            for m, i in zip(mods or (), idx):
                m.layer_idx = i

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                prompt_lens: torch.Tensor | None = None) -> torch.Tensor:
        from ambient_rlhf.models.heads import pool_states

        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        h = self._run(inputs_embeds=hidden, attention_mask=attention_mask, position_ids=pos,
                      use_cache=False).last_hidden_state  # (n, T, d)
        return self.head(pool_states(h, attention_mask, prompt_lens, self.pooling).to(self.head.weight.dtype))

    def forward_shared(self, prompt_h: torch.Tensor, prompt_mask: torch.Tensor, inverse: torch.Tensor,
                       resp_h: torch.Tensor, resp_mask: torch.Tensor) -> torch.Tensor:
        """Head outputs of B rows whose G distinct prompts run through the top layers once.

        Shapes: prompt_h (G, Tp, d) and prompt_mask (G, Tp) the prompts' cached states,
        right-padded; inverse (B,) each row's prompt; resp_h (B, Tr, d) and resp_mask
        (B, Tr) the rows' response states, right-padded -> (B, n_outputs).  The responses
        attend to their prompt's keys/values (copied per row; gradients reach the one prompt
        pass through them) at positions continuing after the prompt, so this is the same
        function as :meth:`forward` on the full rows, up to float rounding."""
        from ambient_rlhf.models.heads import pool_states

        p_pos = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = cache_out(self._run(inputs_embeds=prompt_h, attention_mask=prompt_mask, position_ids=p_pos,
                                    use_cache=True))
        select_rows(cache, inverse)  # (G, ...) -> (B, ...)
        p_len = prompt_mask.long().sum(1)[inverse]  # (B,)
        r_pos = p_len.unsqueeze(1) + torch.arange(resp_h.shape[1], device=resp_h.device).unsqueeze(0)
        mask = torch.cat([prompt_mask[inverse], resp_mask], dim=1)  # (B, Tp + Tr): prompt padding masked out
        h = self._run(inputs_embeds=resp_h, attention_mask=mask, position_ids=r_pos, use_cache=True,
                      **cache_kw(self._body, cache)).last_hidden_state  # (B, Tr, d)
        zero = torch.zeros(h.shape[0], dtype=torch.long, device=h.device)  # the response tokens alone
        return self.head(pool_states(h, resp_mask, zero, self.pooling).to(self.head.weight.dtype))


# ---- which layers are shared ---------------------------------------------------------------
def _same(a: nn.Module, b: nn.Module) -> bool:
    """Whether two modules hold equal parameters and buffers (names, shapes, dtypes, values)."""
    ta = list(a.named_parameters()) + list(a.named_buffers())
    tb = list(b.named_parameters()) + list(b.named_buffers())
    return len(ta) == len(tb) and all(
        na == nb and x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y)
        for (na, x), (nb, y) in zip(ta, tb))


def _config_key(model: nn.Module) -> dict:
    cfg = model.config.to_dict()
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("name_or_path", "architectures")}


def shared_bottom(models: Sequence[nn.Module]) -> int:
    """How many bottom transformer layers all ``models`` (``ScalarHeadModel``) hold bit for
    bit, their embeddings and the body's other modules included: 0 when they share none
    (or their bodies differ in kind or configuration); the layer count + 1 when the whole
    body, final norm included, is the same (models that differ only in their heads)."""
    if len(models) < 2:
        return 0
    bodies = [body_of(m.lm) for m in models]
    b0 = bodies[0]
    if any(type(b) is not type(b0) or len(b.layers) != len(b0.layers) or _config_key(b) != _config_key(b0)
           for b in bodies[1:]):
        return 0
    if not hasattr(b0, "norm"):
        return 0

    def rest(b):  # everything but the layers and the final norm: embeddings, rotary tables
        return [(n, c) for n, c in b.named_children() if n not in ("layers", "norm")]

    r0 = rest(b0)
    for b in bodies[1:]:
        rb = rest(b)
        if [n for n, _ in rb] != [n for n, _ in r0] or not all(_same(x, y) for (_, x), (_, y) in zip(r0, rb)):
            return 0
    n = 0
    while n < len(b0.layers) and all(_same(b0.layers[n], b.layers[n]) for b in bodies[1:]):
        n += 1
    if n == len(b0.layers) and all(_same(b0.norm, b.norm) for b in bodies[1:]):
        n += 1
    return n


# ---- a batch through the shared layers once --------------------------------------------------
@torch.no_grad()
def joint_outputs(models: Sequence[nn.Module], n_shared: int, seqs: Sequence[Sequence[int]],
                  prompt_lens: Sequence[int], pad_id: int, share_prompts: bool) -> list[torch.Tensor] | None:
    """Head outputs (B, n_outputs) of each of ``models`` on one batch, the first
    ``n_shared`` layers (:func:`shared_bottom`, >= 1) run once.

    ``seqs``: token ids, each a prompt of ``prompt_lens[i]`` tokens and its response.
    ``share_prompts``: rows that share a prompt run it once, as
    :meth:`ScalarHeadModel.shared_prompt_outputs` does (else the rows are right-padded
    with ``pad_id`` and run whole, as :meth:`ScalarHeadModel.forward` does).  None when
    the top layers cannot continue a shared prompt's keys/values (not Llama-like): score
    each model on its own then."""
    from ambient_rlhf.models.tokenize import pad_batch

    m0 = models[0]
    body = body_of(m0.lm)
    n_layers = len(body.layers)
    whole = n_shared > n_layers
    n_shared = min(n_shared, n_layers - 1)  # all layers but not the final norm: part before the last layer
    device = next(m0.parameters()).device
    zero = torch.zeros(len(seqs), dtype=torch.long, device=device)
    grouped = prompt_groups(seqs, prompt_lens) if share_prompts else None
    if grouped is not None and whole:  # the response states once; each model pools and reads them
        h, r_mask = m0.shared_prompt_states(list(seqs), list(prompt_lens))
        return [m.head(m.pool(h, r_mask, zero).to(m.head.weight.dtype)) for m in models]
    if grouped is not None:
        if not all(TopLayers(m, n_layers - n_shared).can_share_prompts for m in models):
            return None  # each model alone runs its prompts once through its whole body
        from transformers import DynamicCache

        prompts, order, g_list = grouped
        p_ids, p_mask = (x.to(device) for x in pad_batch([list(p) for p in prompts], 0, "right"))  # (G, Tp)
        g = torch.tensor(g_list, device=device)
        cache = DynamicCache(config=body.config)  # filled below the split, where the passes stop
        layer = body.layers[n_shared]
        p_h = states_into(layer, lambda: body(input_ids=p_ids, attention_mask=p_mask, use_cache=True,
                                              position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                                              **cache_kw(body, cache)))
        select_rows(cache, g)
        r_ids, r_mask = (x.to(device) for x in pad_batch([seqs[i][prompt_lens[i]:] for i in order], 0, "right"))
        p_len = torch.tensor([prompt_lens[i] for i in order], device=device)
        r_pos = p_len.unsqueeze(1) + torch.arange(r_ids.shape[1], device=device).unsqueeze(0)  # (B, Tr)
        r_h = states_into(layer, lambda: body(input_ids=r_ids, attention_mask=torch.cat([p_mask[g], r_mask], 1),
                                              position_ids=r_pos, use_cache=True, **cache_kw(body, cache)))
        back = torch.empty(len(order), dtype=torch.long, device=device)
        back[torch.tensor(order, device=device)] = torch.arange(len(order), device=device)
        return [TopLayers(m, n_layers - n_shared).forward_shared(p_h, p_mask, g, r_h, r_mask)[back] for m in models]
    ids, mask = (x.to(device) for x in pad_batch([list(s) for s in seqs], pad_id, side="right"))
    p_len = torch.tensor(list(prompt_lens), device=device)
    if whole:
        h = m0.hidden_states(ids, mask)
        return [m.head(m.pool(h, mask, p_len).to(m.head.weight.dtype)) for m in models]
    h = states_into(body.layers[n_shared], lambda: m0.hidden_states(ids, mask))
    return [TopLayers(m, n_layers - n_shared)(h, mask, p_len) for m in models]
