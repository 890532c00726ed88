"""The transformer body of a causal LM: finding it (through peft wrappers) and cutting it
to its first layers (a reward model's backbone)."""

from __future__ import annotations

from torch import nn

from ambient_rlhf import AmbientError


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


def keep_first_layers(model, n: int):
    """Cut a decoder-only model to its first ``n`` transformer layers, in place.

    The config says so (``num_hidden_layers``, and ``layer_types`` where the architecture
    has one), so ``save_pretrained`` writes a model that ``from_pretrained`` loads as the
    same smaller network.  ``n`` = 0 or >= the layer count leaves the model as it is."""
    body = body_of(model)
    total = len(body.layers)
    if n <= 0 or n >= total:
        return model
    body.layers = body.layers[:n]
    cfg = model.config
    cfg.num_hidden_layers = n
    for attr in ("layer_types", "sliding_window_pattern_types"):
        v = getattr(cfg, attr, None)
        if isinstance(v, list) and len(v) == total:
            setattr(cfg, attr, v[:n])
    return model
