"""Rollout invariances: padding, EOS truncation, the scored sequence."""

import pytest
import torch

from ambient_rlhf.train.rollout import filter_logits, response_logprobs, sample


@pytest.fixture(scope="module")
def lm(tiny_model_path):
    from ambient_rlhf.models.load import load_causal_lm

    return load_causal_lm(tiny_model_path).eval()


def test_padding_does_not_change_logprobs(lm):
    g = torch.Generator().manual_seed(0)
    p1, r1 = torch.randint(3, 1000, (5,), generator=g), torch.randint(3, 1000, (4,), generator=g)
    p2, r2 = torch.randint(3, 1000, (9,), generator=g), torch.randint(3, 1000, (6,), generator=g)
    with torch.no_grad():
        alone1 = response_logprobs(lm, torch.cat([p1, r1])[None], torch.ones(1, 9, dtype=torch.long), 5, 0.7)[0]
        alone2 = response_logprobs(lm, torch.cat([p2, r2])[None], torch.ones(1, 15, dtype=torch.long), 9, 0.7)[0]
        # batch: prompts left-padded to 9, responses right-padded to 6
        ids = torch.zeros(2, 15, dtype=torch.long)
        mask = torch.zeros(2, 15, dtype=torch.long)
        ids[0, 4:9], mask[0, 4:9] = p1, 1
        ids[0, 9:13], mask[0, 9:13] = r1, 1
        ids[1, :9], ids[1, 9:], mask[1] = p2, r2, 1
        batch = response_logprobs(lm, ids, mask, 9, 0.7)
    assert torch.allclose(batch[0, :4], alone1, atol=1e-5)
    assert torch.allclose(batch[1], alone2, atol=1e-5)


class _EosBias(torch.nn.Module):
    """Wraps an LM and adds ``bias`` to one token's logit (p ~ 0.3 per step at T=0.7 for bias 7)."""

    def __init__(self, lm, token, bias):
        super().__init__()
        self.lm, self.token, self.bias = lm, token, bias

    def forward(self, **kw):
        out = self.lm(**kw)
        out.logits[..., self.token] += self.bias
        return out


def test_sample_truncates_after_eos(lm):
    torch.manual_seed(0)
    q = torch.randint(3, 1000, (6, 5))
    q_mask = torch.ones_like(q)
    q_mask[0, :2] = 0  # a left-padded row
    eos = 2
    s = sample(_EosBias(lm, eos, 7.0), q, q_mask, 12, 0.7, eos_id=eos, pad_id=0)
    assert s.response.shape == s.mask.shape and s.response.shape[1] <= 12
    for row, m, e in zip(s.response, s.mask, s.has_eos):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()  # mask is a prefix
        if e:
            assert row[n - 1] == eos and (row[:n - 1] != eos).all()  # ends at the first EOS
            assert (row[n:] == 0).all()  # padding after it
        else:
            assert n == s.response.shape[1]
    assert s.has_eos.sum() >= 3
    assert len(set(s.mask.sum(1).tolist())) > 1  # rows of different lengths


def test_filter_logits_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # top-p 0.7: cumulative before each token 0, .5, .8, .95 -> keep the first two
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    # top-k 3 drops the smallest
    assert torch.isinf(filter_logits(logits, top_k=3)).tolist() == [[False, False, False, True]]
    assert not torch.isinf(filter_logits(logits)).any()


def test_draw_matches_the_distribution():
    from ambient_rlhf.train.rollout import draw

    torch.manual_seed(0)
    p = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(20000, 1)
    idx = draw(p)
    freq = torch.bincount(idx, minlength=4).float() / idx.numel()
    # binomial sd at n=20000 is <= 0.0035; 0.015 is > 4 sd; a zero-probability entry never comes up
    assert torch.allclose(freq, p[0], atol=0.015) and freq[1] == 0


def test_distinct_rows_by_hand():
    from ambient_rlhf.models.kv import distinct_rows

    ids = torch.tensor([[0, 5, 6], [0, 5, 6], [7, 8, 9], [0, 5, 6], [7, 8, 9]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1]])
    first, inverse = distinct_rows(ids, mask)
    assert first.tolist() == [0, 2] and inverse.tolist() == [0, 0, 1, 0, 1]
    # the same ids under another mask are another prompt; all distinct -> None
    assert distinct_rows(ids[:3], torch.tensor([[0, 1, 1], [1, 1, 1], [1, 1, 1]])) is None


@pytest.mark.parametrize("model", ["tiny", pytest.param("default", marks=pytest.mark.slow)])
def test_shared_prompt_prefill_samples_the_same_tokens(lm, model):
    """RLOO's k copies of a prompt: one prefill copied to k rows gives the tokens k prefills give."""
    if model == "default":
        from ambient_rlhf.models.load import load_causal_lm, resolve_model

        lm = load_causal_lm(resolve_model("default")).eval()
    g = torch.Generator().manual_seed(1)
    p1, p2 = torch.randint(3, 1000, (6,), generator=g), torch.randint(3, 1000, (9,), generator=g)
    one = torch.zeros(2, 9, dtype=torch.long)
    m = torch.zeros(2, 9, dtype=torch.long)
    one[0, 3:], m[0, 3:] = p1, 1
    one[1], m[1] = p2, 1
    ids, mask = one.repeat_interleave(4, 0), m.repeat_interleave(4, 0)  # (8, 9): 4 samples of each prompt
    runs = []
    for share in (True, False):
        torch.manual_seed(3)
        runs.append(sample(lm, ids, mask, 12, 1.0, eos_id=2, pad_id=0, share_prompts=share))
    a, b = runs
    assert torch.equal(a.response, b.response) and torch.equal(a.mask, b.mask)
    assert len({tuple(r) for r in a.response[:4].tolist()}) > 1  # the k samples differ: real sampling
