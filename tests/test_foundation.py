"""CLI dispatch, atomic output directories, manifests, checkpoints and metrics files."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import latest_checkpoint, load_state, rng_state, save_checkpoint, set_rng_state
from ambient_rlhf.cli import COMMANDS, main, split_overrides
from ambient_rlhf.io import atomic_dir, sha256_file, write_manifest
from ambient_rlhf.logging import MetricsWriter, read_jsonl


def test_split_overrides():
    rest, ov = split_overrides(["src/a=b.zst", "--out", "x", "labels.min_score_ratio=3", "lr=1e-5", "-v"])
    # a path with '/' before '=' is not an identifier, so it stays a positional argument
    assert rest == ["src/a=b.zst", "--out", "x", "-v"]
    assert ov == ["labels.min_score_ratio=3", "lr=1e-5"]


def test_cli_unknown_command(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_cli_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "result"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(out) as tmp:
        (tmp / "ok.txt").write_text("y")
    assert (out / "ok.txt").read_text() == "y"
    with pytest.raises(AmbientError, match="exists"):
        with atomic_dir(out):
            pass


def test_manifest_hashes_inputs(tmp_path):
    f = tmp_path / "in.txt"
    f.write_bytes(b"abc")
    m = write_manifest(tmp_path / "o", "data", {"a": 1}, [f], {"kept": 3})
    # sha256("abc"), from the FIPS 180-2 test vectors
    assert m["inputs"][0]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_file(f) == m["inputs"][0]["sha256"]
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["counts"] == {"kept": 3}


def test_checkpoint_round_trip_restores_rng(tmp_path):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    state = {"step": 3, "rng": rng_state()}
    a = (torch.rand(3), random.random(), np.random.rand())
    save_checkpoint(tmp_path, 3, state)
    save_checkpoint(tmp_path, 5, {"step": 5, "rng": rng_state()})
    save_checkpoint(tmp_path, 7, {"step": 7, "rng": rng_state()}, keep=2)
    assert latest_checkpoint(tmp_path).name == "step-7"
    assert not (tmp_path / "checkpoints" / "step-3").exists()  # only the newest two are kept
    set_rng_state(state["rng"])
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
    assert load_state(latest_checkpoint(tmp_path))["step"] == 7


def test_metrics_writer_truncates_on_resume(tmp_path):
    w = MetricsWriter(tmp_path)
    for s in range(1, 6):
        w.log(s, {"loss": float(s), "nan": float("nan")})
    w.close()
    w2 = MetricsWriter(tmp_path, resume_step=3)
    w2.log(4, {"loss": 40.0})
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] == 40.0 and rows[0]["nan"] is None
