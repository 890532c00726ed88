"""``ambient run rounds=2`` end to end on tiny-random with a tiny simulated community:
round 2 collects the simulated readers' votes on the round-1 policy's answers, retrains
the proxy on the mixed data, runs RL from the round-1 policy with KL to sft/, and is
evaluated.  A second run directory holds the same round 1 (copied) and runs round 2 in a
subprocess killed with SIGKILL inside rl-2; the same command then resumes it, and every
number of round 2 equals the uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ambient_rlhf.cli import main
from ambient_rlhf.logging import read_jsonl

TINY = [
    "model=tiny-random", "simulate.model=template", "simulate.threads=30", "simulate.responses=4",
    "data.splits={train: 0.5, valid: 0.2, test: 0.3}", "data.labels.min_prompt_score=2",
    "data.labels.min_score_ratio=1.5", "goal_model=false",
    "sft.max_steps=2", "sft.per_device_train_batch_size=2", "sft.gradient_accumulation_steps=1", "sft.sample_prompts=0",
    "rm.num_train_epochs=1", "rm.train_layers=1",
    "rl.max_steps=4", "rl.batch_size=2", "rl.rloo_k=2", "rl.max_response_tokens=8", "rl.save_steps=2",
    "rl.missing_eos_score=null",
    "eval.n_prompts=4", "eval.max_new_tokens=8", "eval.bootstrap_resamples=100",
    "rounds=2", "feedback.prompts=6", "feedback.policy_answers=2", "feedback.human_answers=2",
    "feedback.max_new_tokens=8",
]
ROUND_2 = ["feedback-2", "mix-2", "rm-proxy-2", "rl-2", "eval-2"]


def _stages(run: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("rounds") / "full"
    assert main(["run", f"out={run}", *TINY]) == 0
    return run


def _cfg(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["config"]


@pytest.mark.slow
def test_round_two_is_wired_and_counted(full):
    names = list(_stages(full))
    assert names[names.index("eval") + 1:] == [*ROUND_2, "report"]
    assert set(_stages(full).values()) == {"ran"}
    rl2 = _cfg(full, "rl-2")  # from the round-1 policy, KL to sft/, against the new proxy
    assert (rl2["policy"], rl2["reference"], rl2["reward"]) == (str(full / "rl"), str(full / "sft"),
                                                              str(full / "rm-proxy-2"))
    # the KL is to sft/: 0 at round 1's first step (policy = reference), not at round 2's
    kl1, kl2 = (read_jsonl(full / name / "metrics.jsonl")[0]["objective/kl"] for name in ("rl", "rl-2"))
    assert kl1 == 0.0 and kl2 != 0.0
    rm2 = _cfg(full, "rm-proxy-2")
    assert rm2["data"] == [str(full / "mix-2")] and rm2["train_half"] == "all"
    # the feedback: 6 fresh threads of 2 human + 2 policy answers, voted on and built
    fb = json.loads((full / "feedback-2" / "feedback.json").read_text())
    answers = pd.read_parquet(full / "feedback-2" / "answers.parquet")
    assert len(answers) == 24 and (answers["source"] == "policy").sum() == 12
    assert fb["counts"]["threads"] == 6 and fb["source"] == "simulated"
    from ambient_rlhf.data.splits import half_of

    assert {half_of(t) for t in answers["original_thread"]} == {"a"}  # the proxy's half: never the judge's
    rankings = pd.read_parquet(full / "feedback-2" / "data" / "rankings.parquet")
    assert fb["counts"]["ranked_comparisons"] == sum(len(r) * (len(r) - 1) // 2 for r in rankings["responses"])
    # every voted answer obeys score = 1 + up - down (the readers' rule), and the
    # policy's answers are the rl/ policy's (tiny-random: 8 new tokens at most)
    votes = pd.read_parquet(full / "feedback-2" / "dump" / "truth" / "utility.parquet")
    assert (votes["score"] == 1 + votes["up"] - votes["down"]).all()
    # the mixed data: the run's data with every feedback thread in train (weight 1)
    mix = pd.read_parquet(full / "mix-2" / "rankings.parquet")
    fresh = mix[mix["thread_id"].str.startswith("f2z")]
    assert len(fresh) == len(rankings) and set(fresh["split"]) == {"train"}
    # the judge metric on the policy's samples, from the proxy the policy optimised
    assert fb["proxy"]["model"] == str(full / "rm-proxy") and fb["proxy"]["spearman_policy"]["n"] == 12
    ev2 = json.loads((full / "eval-2" / "eval.json").read_text())
    assert set(ev2["true_utility"]["policy_samples"]) == {"judge", "proxy"}
    html = (full / "report" / "report.html").read_text()
    assert "Rounds" in html and "eval-2" in html


def _numbers(run: Path) -> dict:
    """Round 2's results without paths and timings."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("seconds", "model", "policy", "reference", "judge",
                                                                  "proxy", "data", "created", "versions")}
        return [strip(v) for v in x] if isinstance(x, list) else x
    ev = json.loads((run / "eval-2" / "eval.json").read_text())
    fb = json.loads((run / "feedback-2" / "feedback.json").read_text())
    rl = [{k: v for k, v in r.items() if not k.startswith("time")} for r in read_jsonl(run / "rl-2" / "metrics.jsonl")]
    return {"eval": strip(ev), "feedback": strip(fb), "rl": rl}


@pytest.mark.slow
def test_round_resumes_after_kill_9_with_the_same_result(full, tmp_path):
    from safetensors.torch import load_file

    part = tmp_path / "part"
    # round 1 as it is (every stage directory with its manifest), round 2 and the run's manifest left out
    top = {*ROUND_2, "report", "manifest.json"}
    shutil.copytree(full, part, ignore=lambda d, names: [n for n in names if Path(d) == full and n in top])
    env = dict(os.environ, AMBIENT_PROGRESS="0", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "ambient_rlhf.cli", "run", f"out={part}", *TINY]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once rl-2 has logged step 3
        if any(r.get("step", 0) >= 3 for r in read_jsonl(part / "rl-2" / "metrics.jsonl")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    first = _stages(part)
    assert first["rl"] == "skipped" and first["feedback-2"] == "ran" and first["rl-2"] == "running"
    assert (part / "rl-2" / "checkpoints" / "step-2" / "state.json").is_file()

    assert main(["run", f"out={part}", *TINY]) == 0
    m = {s["name"]: s for s in json.loads((part / "manifest.json").read_text())["stages"]}
    assert m["feedback-2"]["status"] == "skipped" and m["rl-2"]["status"] == "ran" and m["rl-2"]["resumed"] is True
    assert _numbers(part) == _numbers(full)
    wa, wb = load_file(full / "rl-2" / "model.safetensors"), load_file(part / "rl-2" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)
