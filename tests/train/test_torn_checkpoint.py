"""A torn newest checkpoint: resume falls back to the previous complete one and the run
still ends exactly where an uninterrupted one does."""

from __future__ import annotations

import shutil

from helpers import make_data_dir
from safetensors.torch import load_file

from ambient_rlhf.config import load_config
from ambient_rlhf.logging import read_jsonl
from ambient_rlhf.train import reward as R


def test_rm_resume_skips_a_torn_checkpoint(tmp_path, warnings_seen):
    data = make_data_dir(tmp_path / "data", n_threads=24, k=4)

    def cfg(out, *more):
        return load_config(R.RewardConfig, None, [f"data={data}", "model=tiny-random", f"out={out}", "eval_split=",
                                                  "eval_steps=0", "max_steps=6", "save_steps=2", "learning_rate=3e-3", *more])

    full, part = tmp_path / "full", tmp_path / "part"
    R.train_reward(cfg(full))
    shutil.copytree(full, part)
    ckpts = part / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-4", "step-6"]  # keep=2
    # the run was "killed" after its step-6 checkpoint, whose biggest file never fully
    # reached the disk: only the checkpoints and the metrics survive
    for p in part.iterdir():
        if p.is_file() and p.name not in ("metrics.jsonl", "stage.json"):  # (stage.json: written at the start)
            p.unlink()
    biggest = max((f for f in (ckpts / "step-6").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])

    R.train_reward(cfg(part, "resume=true"))
    seen = warnings_seen
    assert any("step-6" in w and "does not match its checksum" in w and "step-4" in w for w in seen), seen
    assert any("resuming from" in w and "step 4 of 6" in w for w in seen), seen  # it really started at step 4
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(part / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    assert [r["rm/loss"] for r in a] == [r["rm/loss"] for r in b]  # exact: steps 5 and 6 replayed alike
    ha, hb = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all((ha[k] == hb[k]).all() for k in ha)
