"""The KV-cache argument across transformers 5.x: ``forward(cache=...)`` and ``out.cache``
from 5.24 on (``past_key_values`` still works there but warns that it goes in 5.40),
``past_key_values`` before.  Decoding loops pass the cache with :func:`cache_kw` and read
it back with :func:`cache_out`, so they run without the warning on every version the
package allows.

Shared prefixes: RL's k samples of a prompt (sampling, reference and training forwards)
and the reward model's responses of one thread run their common prompt once
(:func:`distinct_rows`, :func:`prefix_once`) and only their own tokens on top of its
copied keys/values (:func:`continue_cached`)."""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=None)
def _kw_of(cls: type) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def cache_kw(model, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the name ``model.forward`` takes (``cache`` or ``past_key_values``)."""
    return {_kw_of(type(model)): cache}


def cache_out(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` on new versions, else ``out.past_key_values``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def distinct_rows(ids, mask):
    """Rows that repeat an earlier row (ids and mask alike), as RLOO's k samples of a prompt
    or the responses of one thread do.

    Shapes: (B, T), (B, T) -> (first, inverse): ``first`` (G,) the index of each distinct
    row's first occurrence, ``inverse`` (B,) which distinct row each row is; None when
    every row is distinct."""
    import torch

    seen: dict[tuple, int] = {}
    first, inverse = [], []
    for i, key in enumerate(zip(ids.tolist(), mask.tolist())):
        key = (tuple(key[0]), tuple(key[1]))
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inverse.append(seen[key])
    if len(first) == ids.shape[0]:
        return None
    return torch.tensor(first, device=ids.device), torch.tensor(inverse, device=ids.device)


def prompt_groups(seqs, prompt_lens):
    """Sequences that share a prompt (token ids, each a prompt of ``prompt_lens[i]`` tokens
    and its response), grouped: ``(prompts, order, g)`` -- the distinct prompts (tuples of
    ids) in order of first appearance, the sequences' indices grouped by prompt, and the
    prompt of each grouped sequence -- or None when no two share a prompt, or a prompt or
    a response is empty (then one plain pass is as cheap)."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (s, n) in enumerate(zip(seqs, prompt_lens)):
        groups.setdefault(tuple(s[:n]), []).append(i)
    if len(groups) == len(seqs) or any(len(p) == 0 for p in groups) or any(len(s) <= n for s, n in
                                                                          zip(seqs, prompt_lens)):
        return None
    prompts = list(groups)
    order = [i for p in prompts for i in groups[p]]
    g = [k for k, p in enumerate(prompts) for _ in groups[p]]
    return prompts, order, g


def prefix_once(model, ids, mask, pos, inverse, **kwargs) -> tuple[Any, Any]:
    """Run G distinct prefixes through ``model`` once, with a cache, and copy each prefix's
    keys/values to the rows that continue it.

    Shapes: ids, mask, pos (G, Tp) -> (out, cache): ``out`` the prefixes' own outputs
    (G rows), ``cache`` holding (B, ...) keys/values of every layer, row b those of prefix
    ``inverse[b]``.  Continue with :func:`continue_cached`; gradients reach the one prefix
    computation from all its rows through the cache."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kwargs)
    cache = cache_out(out)
    select_rows(cache, inverse)  # (G, ...) -> (B, ...)
    return out, cache


def select_rows(cache, index) -> None:
    """Replace the batch of every layer of ``cache`` by its rows ``index`` (B,), in place,
    with ``index_select``: its backward (``index_add``) sums a repeated row's gradients in a
    fixed order, where the advanced indexing of ``Cache.batch_select_indices`` accumulates
    them with atomic adds across CPU threads -- a different last bit from run to run."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        cache.batch_select_indices(index)
        return
    for layer in layers:
        if type(layer) not in _plain_layers():
            layer.batch_select_indices(index)  # a layer with more state than keys/values: its own method
        elif layer.keys is not None and layer.keys.numel() > 0:
            layer.keys, layer.values = layer.keys.index_select(0, index), layer.values.index_select(0, index)


@lru_cache(maxsize=1)
def _plain_layers() -> tuple[type, ...]:
    """Cache layers whose batch is their ``keys`` and ``values`` alone."""
    from transformers import cache_utils

    return tuple(getattr(cache_utils, n) for n in ("DynamicLayer", "DynamicSlidingWindowLayer") if hasattr(cache_utils, n))


def continue_cached(model, cache, ids, mask, pos, **kwargs) -> Any:
    """The tokens ``ids`` (B, Tc) on top of ``cache``: ``mask`` (B, Tp + Tc) covers the
    cached prefix and the new tokens, ``pos`` (B, Tc) their positions."""
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache_kw(model, cache),
                 **kwargs)
