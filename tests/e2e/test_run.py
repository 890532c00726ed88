"""``ambient run`` end to end on tiny-random with a tiny simulated community: every
stage runs for real (no stand-ins).  The first run is interrupted (Ctrl-C) right after
SFT's first checkpoint; the same command then resumes SFT from it and finishes.  A
third run skips everything, and a changed RL setting re-runs exactly RL and what
reads it.  The numbers are checked against what can be recomputed from the stages'
files (scipy, plain loops), so a broken stage fails here rather than passing a range check."""

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
    "sft.max_steps=2", "sft.per_device_train_batch_size=2", "sft.gradient_accumulation_steps=1", "sft.save_steps=1", "sft.sample_prompts=0",
    "sft.logging_steps=1",
    "rm.num_train_epochs=1", "rm.train_layers=1",
    # 8 tokens end no tiny-random answer: with the default missing_eos_score every sample
    # would score -1, every RLOO advantage be 0 and RL leave the policy as it was
    "rl.max_steps=2", "rl.batch_size=2", "rl.rloo_k=2", "rl.max_response_tokens=8", "rl.save_steps=1",
    "rl.missing_eos_score=null",
    "eval.n_prompts=4", "eval.max_new_tokens=8", "eval.bootstrap_resamples=100",
]
ALL = ["simulate", "data", "sft", "sft-tier", "rm-proxy", "rm-gold", "truth", "rl", "eval", "eval-goal", "eval-steer",
       "report"]


def _stages(run: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import ambient_rlhf.train.sft.loop as sft

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
    # the steering test: one model on both sides, only the goal differs
    steer = json.loads((run_dir / "eval-steer" / "manifest.json").read_text())["config"]
    assert steer["policy"] == steer["reference"] and steer["policy"].endswith("sft-tier")
    assert (steer["goal"], steer["reference_goal"]) == ("good", "bad")
    # the run's sample cache: eval's SFT side read back by eval-goal, eval-goal's goal side
    # by eval-steer -- four distinct sides sampled, six read
    assert goal["sample_cache"] == steer["sample_cache"] == ev["sample_cache"] == str(run_dir / "cache" / "eval-samples")
    assert len(list((run_dir / "cache" / "eval-samples").glob("*.json"))) == 4

    def side(stage, key):
        return [json.loads(x)[key] for x in (run_dir / stage / "samples.jsonl").read_text().splitlines()]

    assert side("eval-goal", "reference") == side("eval", "reference")
    assert side("eval-steer", "policy") == side("eval-goal", "policy")
    st = json.loads((run_dir / "eval-steer" / "eval.json").read_text())
    assert st["steering"]["by"] == "true_utility" and "token_shift" in st
    assert (run_dir / "simulate" / "truth" / "utility.parquet").is_file()
    # the data stage recorded where its data came from (read by the report and eval)
    data = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert data["simulated"] is True and data["community"] == "AmbientSim"


def _thread_spearman(df, col: str) -> float:
    """Mean over threads of Spearman(col, true utility), threads with a constant side
    skipped: written here with scipy, independently of data/simulate.py."""
    from scipy.stats import spearmanr

    vals = [spearmanr(g[col], g["true_utility"]).statistic for _, g in df.groupby("thread_id")
            if g[col].nunique() > 1 and g["true_utility"].nunique() > 1]
    return sum(vals) / len(vals)


def _pair_accuracy(df, col: str) -> float:
    hits = n = 0
    for _, g in df.groupby("thread_id"):
        x, y = list(g[col]), list(g["true_utility"])
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if y[i] != y[j]:
                    n += 1
                    hits += 0.5 if x[i] == x[j] else float((x[i] > x[j]) == (y[i] > y[j]))
    return hits / n


def test_truth_recovery_numbers(run_dir):
    """The simulated community's hidden utility: the labels recover it (votes follow it;
    over simulate seeds 0-5 of this 30-thread community, within-thread Spearman of the raw
    score 0.60-0.71 and pair accuracy 0.77-0.83 on all splits; seed 0: 0.672 and 0.774),
    and the truth stage's numbers are those computed here from its own scores.parquet."""
    import pandas as pd

    truth = json.loads((run_dir / "truth" / "eval.json").read_text())
    labels = truth["labels"]["all"]
    assert labels["n"] == {"threads": 30, "responses": 120} and truth["labels"]["test"]["n"]["threads"] == 8
    for col in ("score", "adjusted"):  # a shuffled or misaligned label column gives ~0 / ~0.5
        assert labels[col]["spearman"] > 0.45 and labels[col]["pair_accuracy"] > 0.65, (col, labels[col])
    held = pd.read_parquet(run_dir / "truth" / "scores.parquet")
    assert len(held) == 32 and held["thread_id"].nunique() == 8
    for name, stats in [*truth["reward_models"].items(), ("length", truth["baselines"]["length"])]:
        assert stats["spearman"] == pytest.approx(_thread_spearman(held, name), abs=1e-9), name
        assert stats["pair_accuracy"] == pytest.approx(_pair_accuracy(held, name), abs=1e-12), name
    assert set(truth["reward_models"]) == {"rm-proxy", "rm-gold"}
    for name in ("rm-proxy", "rm-gold"):
        c = truth["comparisons"][name]["vs_length"]
        assert c["difference"] == pytest.approx(
            truth["reward_models"][name]["spearman"] - truth["baselines"]["length"]["spearman"], abs=1e-9)
        assert c["ci_low"] < c["difference"] < c["ci_high"] and c["threads"] == 8


def test_rl_moved_the_policy_and_eval_counts_it(run_dir):
    from safetensors.torch import load_file

    sft, rl = load_file(run_dir / "sft" / "model.safetensors"), load_file(run_dir / "rl" / "model.safetensors")
    assert set(sft) == set(rl) and any(not (sft[k] == rl[k]).all() for k in sft)  # RL changed the weights
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == ev["n_prompts"] == 4
    # one sample per prompt: the win rate is the mean outcome (ties half), the KL the mean KL
    outcome = [1.0 if r["policy_score"] > r["reference_score"] else 0.5 if r["policy_score"] == r["reference_score"]
               else 0.0 for r in rows]
    assert ev["win_rate"]["value"] == pytest.approx(sum(outcome) / 4, abs=1e-12)
    assert ev["kl"]["value"] == pytest.approx(sum(r["kl"] for r in rows) / 4, abs=1e-9)
    assert "difference" in ev["true_utility"]  # a simulated community: the hidden utility is scored


def test_resolved_config_is_the_run_config(run_dir):
    from ambient_rlhf.config import to_dict
    from ambient_rlhf.run import load_run_config

    again = load_run_config(run_dir / "config.resolved.yaml")
    assert to_dict(again) == to_dict(load_run_config(None, [f"out={run_dir}", *TINY]))


def test_report_written(run_dir):
    assert (run_dir / "report" / "report.html").is_file()


def test_rerun_skips_and_a_change_reruns_downstream(run_dir):
    assert main(["run", f"out={run_dir}", *TINY]) == 0
    assert set(_stages(run_dir).values()) == {"skipped"}
    # RL changed: rl, the evaluation that reads it and the report re-run; eval-goal does not read rl
    assert main(["run", f"out={run_dir}", *TINY, "rl.max_steps=3"]) == 0
    ran = {k for k, v in _stages(run_dir).items() if v == "ran"}
    assert ran == {"rl", "eval", "report"}
