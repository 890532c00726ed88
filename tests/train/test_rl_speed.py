"""The RL step's shortcuts change no number: a run with them equals a run without them.

``reuse_forward`` takes the old policy's log-probs (and PPO values) from the first training
forward instead of a separate no-grad forward; the reference is the run with
``reuse_forward=false`` (the separate forward, as before the shortcut).  Every logged
metric but the timings, and every weight of the final policy, must be equal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ambient_rlhf.config import load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.train.rl import RLConfig, train_rl



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from helpers import make_data_dir

    return make_data_dir(tmp_path_factory.mktemp("rlspeed") / "data")


def _run(out, data_dir, model, algo, *overrides):
    cfg = load_config(RLConfig, None, [
        f"policy={model}", "reward=token-count:0-20000", f"data={data_dir}", f"algo={algo}", f"out={out}",
        "max_response_tokens=12", "missing_eos_score=null", "save_steps=0", "learning_rate=3e-3", "max_steps=3", "batch_size=4",
        "kl.kind=fixed", "kl.init_beta=0.1", *overrides])
    train_rl(cfg)
    rows = [{k: v for k, v in r.items() if k != "time" and not k.startswith("time/")} for r in read_jsonl(out / "metrics.jsonl")]
    return rows, load_file(str(out / "model.safetensors"))


@pytest.mark.parametrize("algo,extra", [
    ("rloo", ()),
    ("reinforce", ("kl.in_loss=true", "kl.estimator=k3")),
    ("ppo", ("value_model=shared", "ppo_epochs=2")),
    ("ppo", ("value_model=policy", "ppo_epochs=2")),
])
def test_reuse_forward_changes_no_number(tmp_path, data_dir, tiny_model_path, algo, extra):
    fast, w_fast = _run(tmp_path / "fast", data_dir, tiny_model_path, algo, *extra)
    slow, w_slow = _run(tmp_path / "slow", data_dir, tiny_model_path, algo, "reuse_forward=false", *extra)
    assert len(fast) == len(slow) == 3
    for a, b in zip(fast, slow):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k], (k, a[k], b[k])
    # the runs moved the weights (two runs that changed nothing would agree trivially)
    w0 = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert any(not torch.equal(w_fast[k], w0[k]) for k in w0)
    assert w_fast.keys() == w_slow.keys()
    for k in w_fast:
        assert torch.equal(w_fast[k], w_slow[k]), k


def test_reuse_forward_is_off_with_several_minibatches(tmp_path, data_dir, tiny_model_path):
    """Two minibatches: the first training forward covers half the batch, so the separate
    forward runs whatever reuse_forward says."""
    a, wa = _run(tmp_path / "a", data_dir, tiny_model_path, "ppo", "num_minibatches=2", "ppo_epochs=1")
    b, wb = _run(tmp_path / "b", data_dir, tiny_model_path, "ppo", "num_minibatches=2", "ppo_epochs=1",
                 "reuse_forward=false")
    assert a == b
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# ---- share_prompts: each prompt's keys/values computed once for its k samples ----------------
def _rloo_batch(g, k=3):
    """Three prompts (left-padded, lengths 5/9/7) x k samples each, the rows interleaved
    (a prompt's samples need not be adjacent), responses right-padded (EOS at different
    places).  Returns ids, mask (B, 9 + 6), n_prompt 9."""
    prompts = [torch.randint(3, 1000, (n,), generator=g) for n in (5, 9, 7)]
    rows = [(p, torch.randint(3, 1000, (1 + (j * 5 + i) % 6,), generator=g)) for i in range(k)
            for j, p in enumerate(prompts)]
    ids = torch.zeros(len(rows), 15, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (p, resp) in enumerate(rows):
        ids[r, 9 - len(p):9], mask[r, 9 - len(p):9] = p, 1
        ids[r, 9:9 + len(resp)], mask[r, 9:9 + len(resp)] = resp, 1
    return ids, mask, 9


def test_shared_prompt_forward_equals_the_plain_one(tiny_model_path):
    """Logits and the gradient of a loss on them: the prompt computed once for its rows
    equals every row computing it, up to float rounding; and the prompt really ran once
    (the embedding layer saw 3 prompt rows, then the 9 rows' response tokens only)."""
    from ambient_rlhf.models.load import load_causal_lm
    from ambient_rlhf.train.rollout import response_logits

    lm = load_causal_lm(tiny_model_path).train()
    ids, mask, tp = _rloo_batch(torch.Generator().manual_seed(0))
    seen = []
    hook = lm.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    results = []
    for share in (False, True):
        lm.zero_grad()
        seen.clear()
        logits, _ = response_logits(lm, ids, mask, tp, share_prompts=share)
        picked = torch.gather(logits.float().log_softmax(-1), -1, ids[:, tp:, None])[..., 0]
        (picked * mask[:, tp:]).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in lm.named_parameters()}, list(seen)))
    hook.remove()
    (plain, g_plain, seen_plain), (shared, g_shared, seen_shared) = results
    assert seen_plain == [(9, 15)]
    assert seen_shared == [(3, 9), (9, 5)]
    m = mask[:, tp:, None].bool()
    assert torch.allclose(plain * m, shared * m, atol=1e-5)
    assert any(float(g.abs().max()) > 0 for g in g_plain.values())
    for n in g_plain:
        assert torch.allclose(g_plain[n], g_shared[n], rtol=1e-4, atol=1e-6), n


def test_shared_prompt_forward_with_one_response_token(tiny_model_path):
    """Every sample ended at its first token (R = 1): the prompt pass alone predicts it."""
    from ambient_rlhf.models.load import load_causal_lm
    from ambient_rlhf.train.rollout import response_logits

    lm = load_causal_lm(tiny_model_path).eval()
    ids, mask, tp = _rloo_batch(torch.Generator().manual_seed(2))
    ids, mask = ids[:, :tp + 1], mask[:, :tp + 1]
    with torch.no_grad():
        a, _ = response_logits(lm, ids, mask, tp)
        b, _ = response_logits(lm, ids, mask, tp, share_prompts=True)
    assert a.shape == b.shape == (9, 1, lm.config.vocab_size)
    assert torch.allclose(a, b, atol=1e-5)


def test_shared_prompt_forward_without_repeats_is_the_plain_one(tiny_model_path):
    """Every prompt distinct (PPO's batches): nothing to share, the same single forward."""
    from ambient_rlhf.models.load import load_causal_lm
    from ambient_rlhf.train.rollout import response_logits

    lm = load_causal_lm(tiny_model_path).eval()
    ids, mask, tp = _rloo_batch(torch.Generator().manual_seed(1), k=1)
    with torch.no_grad():
        a, _ = response_logits(lm, ids, mask, tp)
        b, _ = response_logits(lm, ids, mask, tp, share_prompts=True)
    assert torch.equal(a, b)


def test_share_prompts_changes_an_rloo_run_only_by_rounding(tmp_path, data_dir, tiny_model_path):
    """The same seed with and without sharing: the same sampled answers (so the same
    lengths and scores), metrics and final weights equal to float rounding."""
    on, w_on = _run(tmp_path / "on", data_dir, tiny_model_path, "rloo")
    off, w_off = _run(tmp_path / "off", data_dir, tiny_model_path, "rloo", "share_prompts=false")
    assert len(on) == len(off) == 3
    for a, b in zip(on, off):
        assert a["gen/length"] == b["gen/length"] and a["objective/score"] == b["objective/score"]
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    w0 = load_file(str(Path(tiny_model_path) / "model.safetensors"))
    assert any(not torch.equal(w_on[k], w0[k]) for k in w0)
    # Adam divides each gradient entry by its own scale, so rounding in the near-zero
    # entries moves their updates by more than the rounding itself: the runs' weights
    # differ by less than 1% of how far the run moved them
    for k in w_on:
        moved = float((w_on[k] - w0[k]).abs().max())
        assert float((w_on[k] - w_off[k]).abs().max()) <= 0.01 * moved, k
