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


def test_copied_prefix_rows_are_the_prefix_and_their_gradients_sum_the_same_way_every_time():
    """select_rows copies prefix g's keys/values to the rows continuing it; the backward
    adds a repeated prefix's row gradients in one fixed order (two threads, 10 repeats,
    bit for bit).  Advanced indexing -- what ``Cache.batch_select_indices`` does --
    accumulates them with atomic adds across threads and differs in the last bits here."""
    from transformers.cache_utils import DynamicCache

    from ambient_rlhf.models.kv import select_rows

    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        k0 = torch.randn(6, 4, 100, 64, requires_grad=True)  # (G, heads, Tp, d): 6 prompts
        v0 = torch.randn(6, 4, 100, 64, requires_grad=True)
        index = torch.randint(0, 6, (24,))  # (B,): 24 rows, each continuing one of them
        w = torch.randn(24, 4, 100, 64)

        def grads():
            cache = DynamicCache()
            cache.update(k0 * 1.0, v0 * 1.0, 0)
            select_rows(cache, index)
            layer = cache.layers[0]
            assert torch.equal(layer.keys, k0[index]) and torch.equal(layer.values, v0[index])
            k0.grad = v0.grad = None
            ((layer.keys + layer.values) * w).sum().backward()
            return k0.grad.clone(), v0.grad.clone()

        first = grads()
        # by hand: prefix g's gradient is the sum of w over the rows that continue it
        want = torch.stack([w[index == g].sum(0) for g in range(6)])
        assert torch.allclose(first[0], want, atol=1e-4) and torch.allclose(first[1], want, atol=1e-4)
        for _ in range(10):
            again = grads()
            assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])
    finally:
        torch.set_num_threads(threads)


def test_prompt_groups_by_hand():
    from ambient_rlhf.models.kv import prompt_groups

    # prompts [1, 2] (rows 0, 2), [3] (rows 1, 3), [1, 2, 9] (row 4): grouped in order of first appearance
    seqs = [[1, 2, 5], [3, 6, 6], [1, 2, 7, 7], [3, 8], [1, 2, 9, 4]]
    lens = [2, 1, 2, 1, 3]
    assert prompt_groups(seqs, lens) == ([(1, 2), (3,), (1, 2, 9)], [0, 2, 1, 3, 4], [0, 0, 1, 1, 2])
    assert prompt_groups([[1, 5], [2, 5]], [1, 1]) is None  # nothing shared
    assert prompt_groups([[1, 5], [1]], [1, 1]) is None  # an empty response
    assert prompt_groups([[5], [6]], [0, 0]) is None  # empty prompts
