"""Resume after kill -9 gives the run an uninterrupted one would have; two processes work.

Both go through the command line (``ambient rl``) in subprocesses, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from ambient_rlhf.checkpoint import load_state
from ambient_rlhf.logging import read_jsonl

ARGS = ["--algo", "ppo", "max_steps=4", "ppo_epochs=2", "save_steps=2", "batch_size=4", "num_minibatches=2", "max_response_tokens=8",
        "missing_eos_score=null", "reward=token-count:0-4095", "learning_rate=1e-3", "lora.enabled=false"]


def _cmd(out, data, model, *extra):
    return [sys.executable, "-m", "ambient_rlhf.cli", "rl", "--policy", model, "--data", str(data), "--out", str(out),
            *ARGS, *extra]


def _env():
    env = dict(os.environ, AMBIENT_PROGRESS="0", PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _comparable(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from helpers import make_data_dir

    return make_data_dir(tmp_path_factory.mktemp("rlres") / "data")


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, data_dir, tiny_model_path):
    env = _env()
    full, part = tmp_path / "full", tmp_path / "part"
    subprocess.run(_cmd(full, data_dir, tiny_model_path), env=env, check=True, capture_output=True)

    # the same run, killed with SIGKILL once it has logged step 3 (the step-2 checkpoint exists)
    proc = subprocess.Popen(_cmd(part, data_dir, tiny_model_path), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(r["step"] >= 3 for r in read_jsonl(part / "metrics.jsonl")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (part / "manifest.json").exists()
    assert (part / "checkpoints" / "step-2" / "state.json").is_file()

    r = subprocess.run(_cmd(part, data_dir, tiny_model_path, "--resume"), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    assert _comparable(a) == _comparable(b)  # exact: same floats, step by step
    # and the same final weights
    from safetensors.torch import load_file

    wa, wb = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # samples.jsonl holds each logged step once
    steps = [s["step"] for s in read_jsonl(part / "samples.jsonl")]
    assert steps == [s["step"] for s in read_jsonl(full / "samples.jsonl")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Two processes against one: greedy sampling (top_k=1) makes the responses independent of
# each process's RNG, and with no whitening every per-sample quantity is independent of
# which process holds the sample.  Each process holds 1 prompt, and every response is cut
# at the same length (checked: no EOS), so the average over processes of per-process token
# means is the global token mean, and DDP's averaged gradient is the single process's.
DETERMINISTIC = ["--algo", "ppo", "max_steps=2", "batch_size=2", "ppo_epochs=2", "max_response_tokens=6", "top_k=1",
                 "whiten_rewards=false", "whiten_advantages=false", "missing_eos_score=null",
                 "reward=token-count:0-4095", "learning_rate=1e-3", "save_steps=1"]


@pytest.mark.slow
def test_two_processes(tmp_path, data_dir, tiny_model_path):
    """``torchrun --nproc_per_node 2`` (gloo on CPU) runs the same code: each process takes
    half the prompts, gradients are averaged, rank 0 writes -- and the metrics are those of
    the same run in one process."""
    out, single = tmp_path / "ddp", tmp_path / "single"
    cli = ["-m", "ambient_rlhf.cli", "rl", "--policy", tiny_model_path, "--data", str(data_dir)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), *cli, "--out", str(out), *DETERMINISTIC]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, *cli, "--out", str(single), *DETERMINISTIC], env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"]["processes"] == 2
    rows = read_jsonl(out / "metrics.jsonl")
    assert [x["step"] for x in rows] == [1, 2]  # one line per step, from rank 0 only
    state = load_state(out / "checkpoints" / "step-1")
    assert len(state["rng"]) == 2  # one RNG state per process
    assert not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)
    # the same metrics as one process (float sums in another order: ~1e-7 relative seen, 1e-5 allowed).
    # explained_variance is a ratio of variances, which a mean over processes does not
    # reproduce; it is left out.
    one = read_jsonl(single / "metrics.jsonl")
    assert all(x["gen/eos_rate"] == 0.0 and x["gen/length"] == 6.0 for x in rows + one)
    assert rows[1]["objective/kl"] > 1e-4  # step 2 follows a real update, so it tests the gradients
    for a, b in zip(_comparable(rows), _comparable(one)):
        for key in a.keys() - {"ppo/explained_variance"}:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), (a["step"], key, a[key], b[key])
