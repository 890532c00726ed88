"""The KV-cache argument across transformers 5.x: ``forward(cache=...)`` and ``out.cache``
from 5.24 on (``past_key_values`` still works there but warns that it goes in 5.40),
``past_key_values`` before.  Decoding loops pass the cache with :func:`cache_kw` and read
it back with :func:`cache_out`, so they run without the warning on every version the
package allows."""

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
