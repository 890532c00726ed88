"""``ambient run`` end to end on tiny-random with a tiny simulated community: every
stage runs for real (no stand-ins).  The first run is interrupted (Ctrl-C) right after
SFT's first checkpoint; the same command then resumes SFT from it and finishes.  A
third run skips everything, and a changed RL setting re-runs exactly RL and what
reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ambient_rlhf.cli import main
from ambient_rlhf.run import KEY_FIELD

TINY = [
    "model=tiny-random", "simulate.model=template", "simulate.threads=30", "simulate.responses=4",
    "data.splits={train: 0.5, valid: 0.2, test: 0.3}", "data.labels.min_prompt_score=2",
    "data.labels.min_score_ratio=1.5",
    "sft.steps=2", "sft.batch_size=2", "sft.grad_accum=1", "sft.checkpoint_every=1", "sft.sample_prompts=0",
    "sft.log_every=1",
    "rm.epochs=1", "rm.train_layers=1",
    "rl.steps=2", "rl.batch_size=2", "rl.rloo_k=2", "rl.response_length=8", "rl.save_every=1",
    "eval.n_prompts=4", "eval.max_new_tokens=8", "eval.bootstrap_resamples=100",
]
ALL = ["simulate", "data", "sft", "sft-tier", "rm-proxy", "rm-gold", "truth", "rl", "eval", "eval-goal", "report"]


def _stages(run: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import ambient_rlhf.train.sft as sft

    run = tmp_path_factory.mktemp("e2e") / "run"
    real_save = sft.save_checkpoint

    def save_then_ctrl_c(*args, **kw):  # the user presses Ctrl-C just after a checkpoint
        real_save(*args, **kw)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sft, "save_checkpoint", save_then_ctrl_c)
        assert main(["run", f"out={run}", *TINY]) == 130  # the CLI's exit status for an interrupt
    first = _stages(run)
    assert first["sft"] == "interrupted" and first["rl"] == "pending" and first["data"] == "ran"
    assert (run / "sft" / "checkpoints" / "step-1" / "state.json").is_file()
    assert main(["run", f"out={run}", *TINY]) == 0
    return run


def test_interrupted_run_resumes_and_finishes(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    assert m["stage"] == "run" and m["status"] == "finished"
    assert [s["name"] for s in m["stages"]] == ALL
    by_name = {s["name"]: s for s in m["stages"]}
    assert by_name["simulate"]["status"] == by_name["data"]["status"] == "skipped"
    assert by_name["sft"]["status"] == "ran" and by_name["sft"]["resumed"] is True
    assert all(s["status"] == "ran" and not s["resumed"] for s in m["stages"][3:])
    # the resumed SFT logged both steps once (the interrupted run's step 1, then step 2)
    steps = [r["step"] for r in map(json.loads, (run_dir / "sft" / "metrics.jsonl").read_text().splitlines())
             if "train/loss" in r]
    assert steps == [1, 2]


def test_every_stage_wrote_its_directory(run_dir):
    m = json.loads((run_dir / "manifest.json").read_text())
    for name in ALL:
        stage_manifest = json.loads((run_dir / name / "manifest.json").read_text())
        assert stage_manifest[KEY_FIELD] == next(s["key"] for s in m["stages"] if s["name"] == name)
    # wiring: proxy and gold on the two halves; RL against the proxy; eval judged by gold
    rm_cfg = {h: json.loads((run_dir / f"rm-{h}" / "manifest.json").read_text())["config"] for h in ("proxy", "gold")}
    assert rm_cfg["proxy"]["train_half"] == "a" and rm_cfg["gold"]["train_half"] == "b"
    assert rm_cfg["gold"]["seed"] == rm_cfg["proxy"]["seed"] + 1  # an independent initialisation
    ev = json.loads((run_dir / "eval" / "manifest.json").read_text())["config"]
    assert ev["judge"].endswith("rm-gold") and ev["proxy"].endswith("rm-proxy") and ev["policy"].endswith("rl")
    goal = json.loads((run_dir / "eval-goal" / "manifest.json").read_text())["config"]
    assert goal["goal"] == "good" and goal["policy"].endswith("sft-tier")
    assert (run_dir / "simulate" / "truth" / "utility.parquet").is_file()
    # the simulated community's hidden utility: recovery by labels and reward models
    truth = json.loads((run_dir / "truth" / "eval.json").read_text())
    assert set(truth["reward_models"]) == {"rm-proxy", "rm-gold"}
    assert -1 <= truth["labels"]["all"]["adjusted"]["spearman"] <= 1
    assert 0 <= truth["reward_models"]["rm-gold"]["pair_accuracy"] <= 1
    assert 0 <= truth["baselines"]["length"]["pair_accuracy"] <= 1
    c = truth["comparisons"]["rm-proxy"]["vs_length"]
    assert c["ci_low"] <= c["difference"] <= c["ci_high"]
    assert (run_dir / "report" / "report.html").is_file()


def test_rerun_skips_and_a_change_reruns_downstream(run_dir):
    assert main(["run", f"out={run_dir}", *TINY]) == 0
    assert set(_stages(run_dir).values()) == {"skipped"}
    # RL changed: rl, the evaluation that reads it and the report re-run; eval-goal does not read rl
    assert main(["run", f"out={run_dir}", *TINY, "rl.steps=3"]) == 0
    ran = {k for k, v in _stages(run_dir).items() if v == "ran"}
    assert ran == {"rl", "eval", "report"}
