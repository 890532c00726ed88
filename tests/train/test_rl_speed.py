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
