"""models/kv.py: the KV cache passed under the name the installed transformers takes."""

from __future__ import annotations

import warnings

import torch

from ambient_rlhf.models.kv import cache_kw, cache_out
from ambient_rlhf.models.load import load_causal_lm


def test_cached_step_equals_full_forward_without_deprecation_warning(tiny_model_path):
    lm = load_causal_lm(tiny_model_path).eval()
    ids = torch.tensor([[5, 17, 301, 42, 9]])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the deprecated name would warn here
        first = lm(input_ids=ids[:, :4], attention_mask=torch.ones(1, 4, dtype=torch.long), use_cache=True)
        step = lm(input_ids=ids[:, 4:], attention_mask=torch.ones(1, 5, dtype=torch.long),
                  position_ids=torch.tensor([[4]]), **cache_kw(lm, cache_out(first)), use_cache=True)
        full = lm(input_ids=ids, attention_mask=torch.ones(1, 5, dtype=torch.long))
    assert torch.allclose(step.logits[0, -1], full.logits[0, -1], atol=1e-5)
    assert not torch.allclose(full.logits[0, -1], full.logits[0, -2])  # the check is not vacuous
