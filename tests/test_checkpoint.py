"""Checkpoint state as safetensors + JSON, and checksums that let a resume skip a torn checkpoint."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess

import numpy as np
import pytest
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import (SUMS_FILE, latest_checkpoint, load_state, rng_state, save_checkpoint,
                                     save_state, set_rng_state, verify_checkpoint)
from ambient_rlhf.train.common import make_optimizer, make_scheduler


def same(a, b) -> bool:
    """Equal in value and in type, all the way down (tensors: dtype, shape and bits)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def trained_optimizer():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = make_optimizer(m, 1e-2, 0.1)
    sched = make_scheduler(opt, "cosine", 1, 10)
    for _ in range(2):
        m(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return m, opt, sched


def test_state_round_trip_is_exact(tmp_path):
    _, opt, sched = trained_optimizer()
    state = {
        "optimizer": opt.state_dict(),  # int keys, tuples (betas), None, bools, 0-dim tensors
        "scheduler": sched.state_dict(),
        "rng": [rng_state(), rng_state()],  # tuples of ints, a NumPy uint32 array, a byte tensor
        "odd": {"__looks_like_a_tag": 1, "nan": float("nan"), "inf": float("-inf"), "neg0": -0.0, "big": 2**70,
                "bytes": b"\x00\xff", "np": np.arange(6, dtype=np.float16).reshape(2, 3), "empty": {},
                "mixed": {1: "a", "1": "b", None: [1, (2, 3)], (4, "x"): 5.5},
                "bf16": torch.ones(2, dtype=torch.bfloat16)},
        "step": 7,
    }
    save_state(tmp_path, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "state.safetensors"]
    back = load_state(tmp_path)
    assert same(state, back)
    # the JSON is plain JSON (no NaN literals) and names the tensors where they stood
    doc = json.loads((tmp_path / "state.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    first_param = doc["state"]["optimizer"]["state"]["__dict__"][0]
    assert first_param == [0, {"step": {"__tensor__": "optimizer/state/0/step"},
                               "exp_avg": {"__tensor__": "optimizer/state/0/exp_avg"},
                               "exp_avg_sq": {"__tensor__": "optimizer/state/0/exp_avg_sq"}}]


def test_reloaded_optimizer_continues_bit_for_bit(tmp_path):
    m, opt, sched = trained_optimizer()
    save_state(tmp_path, {"model": m.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict()})
    m2 = torch.nn.Linear(3, 2)
    opt2 = make_optimizer(m2, 1e-2, 0.1)
    sched2 = make_scheduler(opt2, "cosine", 1, 10)
    s = load_state(tmp_path)
    m2.load_state_dict(s["model"])
    opt2.load_state_dict(s["optimizer"])
    sched2.load_state_dict(s["scheduler"])
    x = torch.randn(4, 3)
    for mm, oo, ss in ((m, opt, sched), (m2, opt2, sched2)):
        mm(x).pow(2).sum().backward()
        oo.step()
        ss.step()
    assert torch.equal(m.weight, m2.weight) and torch.equal(m.bias, m2.bias)
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_rng_state_round_trip_through_files(tmp_path):
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    save_state(tmp_path, {"rng": rng_state()})
    a = (random.random(), np.random.rand(), torch.rand(2))
    set_rng_state(load_state(tmp_path)["rng"])
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_state_round_trip_through_files(tmp_path):
    torch.cuda.manual_seed_all(5)
    save_state(tmp_path, {"rng": rng_state()})
    a = torch.rand(3, device="cuda")
    set_rng_state(load_state(tmp_path)["rng"])
    assert torch.equal(a, torch.rand(3, device="cuda"))


def test_unsupported_values_are_refused_by_path(tmp_path):
    with pytest.raises(TypeError, match="at /a/b/1"):
        save_state(tmp_path, {"a": {"b": [1, object()]}})


def test_bad_state_json_is_a_clear_error(tmp_path):
    save_state(tmp_path, {"x": torch.ones(1)})
    head = '{"format": "ambient-state", "version": 1, "state": '
    (tmp_path / "state.json").write_text(head + '{"x": {"__tensor__": "y"}}}')
    with pytest.raises(AmbientError, match=r"state.json: tensor 'y' .* not in state.safetensors"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text(head + '{"__code__": 1}}')
    with pytest.raises(AmbientError, match="unknown entry"):
        load_state(tmp_path)
    (tmp_path / "state.json").write_text("{")
    with pytest.raises(AmbientError, match="not readable JSON"):
        load_state(tmp_path)


def checkpoints(tmp_path, steps, keep=3):
    for s in steps:
        save_checkpoint(tmp_path, s, {"step": s, "w": torch.full((4,), float(s))},
                        save_models=lambda d: (d / "model").mkdir() or (d / "model" / "w.bin").write_bytes(b"x" * 100),
                        keep=keep)
    return tmp_path / "checkpoints"


def test_checksums_are_written_last_and_verify(tmp_path):
    root = checkpoints(tmp_path, [1])
    d = root / "step-1"
    names = [line.split("  ")[1] for line in (d / SUMS_FILE).read_text().splitlines()]
    assert names == ["model/w.bin", "state.json", "state.safetensors"]
    assert verify_checkpoint(d) is None
    if shutil.which("sha256sum"):  # the standard tool reads the same file
        subprocess.run(["sha256sum", "--quiet", "-c", SUMS_FILE], cwd=d, check=True)


@pytest.mark.parametrize("tear", ["truncate_state", "truncate_model", "delete_sums", "flip_byte"])
def test_torn_newest_checkpoint_falls_back_to_the_previous(tmp_path, warnings_seen, tear):
    root = checkpoints(tmp_path, [1, 2, 3])
    d = root / "step-3"
    if tear == "truncate_state":
        f = d / "state.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif tear == "truncate_model":
        (d / "model" / "w.bin").write_bytes(b"")
    elif tear == "delete_sums":  # e.g. an older layout, or a copy that stopped short
        (d / SUMS_FILE).unlink()
    else:
        f = d / "state.json"
        b = bytearray(f.read_bytes())
        b[-3] ^= 1
        f.write_bytes(bytes(b))
    assert verify_checkpoint(d) is not None
    assert latest_checkpoint(tmp_path) == root / "step-2"
    assert any("step-3" in w and "step-2" in w for w in warnings_seen), warnings_seen
    assert load_state(root / "step-2")["step"] == 2
    # the resumed run saves its next checkpoint: the torn later one goes
    checkpoints(tmp_path, [3])
    assert latest_checkpoint(tmp_path) == root / "step-3" and verify_checkpoint(root / "step-3") is None


def test_no_checkpoint_verifies(tmp_path, warnings_seen):
    root = checkpoints(tmp_path, [1, 2])
    for d in root.iterdir():
        (d / "state.json").write_text("")
    assert latest_checkpoint(tmp_path) is None
    assert any("step-1" in w and "step-2" in w for w in warnings_seen)


def test_a_later_torn_checkpoint_is_removed_at_the_next_save(tmp_path):
    root = checkpoints(tmp_path, [2, 4, 6], keep=2)
    (root / "step-6" / "state.json").write_text("")
    assert latest_checkpoint(tmp_path) == root / "step-4"
    checkpoints(tmp_path, [5], keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-5"]


def test_sums_naming_files_outside_are_refused(tmp_path):
    d = checkpoints(tmp_path, [1]) / "step-1"
    (d / SUMS_FILE).write_text((d / SUMS_FILE).read_text() + "0" * 64 + "  ../../etc/passwd\n")
    assert "outside" in verify_checkpoint(d)
