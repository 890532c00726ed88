"""benchmarks/all.py and the result line every benchmark prints (bench_env.result)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.append(str(BENCH))  # appended: the benchmarks' module names must not shadow anything

import bench_env  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_all", BENCH / "all.py")
bench_all = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_all)

SHARED_AA = Path(__file__).resolve().parents[2] / "shared" / "data" / "reddit-askacademia"


def test_result_line_ratio_and_target_direction(capsys):
    # throughput: 150 vs 100 tokens/s is 1.5x, which meets ">= 1.2" and misses ">= 2"
    r = bench_env.result("x", ours=150.0, peer=100.0, unit="tokens/s", higher_is_better=True, target=1.2)
    assert r["ratio"] == pytest.approx(1.5) and r["met"]
    assert not bench_env.result("x", ours=150.0, peer=100.0, unit="tokens/s", higher_is_better=True, target=2.0)["met"]
    # seconds: 12 s against 30 s is 0.4x, which meets "<= 0.5"; 20 s against 30 s (0.67x) does not
    assert bench_env.result("y", ours=12.0, peer=30.0, unit="s", higher_is_better=False, target=0.5)["met"]
    assert not bench_env.result("y", ours=20.0, peer=30.0, unit="s", higher_is_better=False, target=0.5)["met"]
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(bench_env.RESULT_PREFIX)]
    assert len(lines) == 4
    first = json.loads(lines[0][len(bench_env.RESULT_PREFIX):])
    assert first["name"] == "x" and first["environment"]["cores"] >= 1
    assert "torch" in first["environment"]["versions"]


def test_describe_names_machine_threads_and_versions():
    line = bench_env.describe(threads=3)
    assert line.startswith("machine: ") and "threads 3" in line and "torch " in line and "transformers " in line


def test_table_marks_failures_and_directions():
    rows = [{"name": "sft", "unit": "tokens/s", "ours": 300.0, "peer": 200.0, "peer_name": "TRL", "ratio": 1.5,
             "target": 1.2, "higher_is_better": True, "met": True, "minutes": 2.0},
            {"name": "rl-ppo", "unit": "s/iteration", "ours": 8.0, "peer": 10.0, "peer_name": "TRL 1.12", "ratio": 0.8,
             "target": 0.5, "higher_is_better": False, "met": False, "minutes": 3.0},
            {"name": "dpo", "failed": True, "minutes": 0.5}]
    t = bench_all.table(rows).splitlines()
    assert "| sft | tokens/s | 300 | 200 (TRL) | 1.50x | >= 1.2x | yes | 2.0 |" == t[2]
    assert "| rl-ppo | s/iteration | 8 | 10 (TRL 1.12) | 0.80x | <= 0.5x | no | 3.0 |" == t[3]
    assert "**failed**" in t[4]


def test_unknown_benchmark_name_is_refused():
    r = subprocess.run([sys.executable, str(BENCH / "all.py"), "--only", "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown benchmark" in r.stderr and "sentiment" in r.stderr


@pytest.mark.skipif(not SHARED_AA.is_dir(), reason="needs ../shared/data")
def test_all_runs_one_benchmark_end_to_end(tmp_path):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(BENCH / "all.py"), "--quick", "--only", "sentiment", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [x["name"] for x in rows] == ["sentiment"]
    row = rows[0]
    # the same float as vaderSentiment on every reply, and a ratio that is ours / peer in replies/s
    assert row["same_float"] == row["texts"] > 10_000
    assert row["ratio"] == pytest.approx(row["ours"] / row["peer"])
    assert "| sentiment | replies/s (CPU) |" in r.stdout and "machine: " in r.stdout


def test_recipe_benchmark_times_the_presets_own_reward_settings(tmp_path):
    # benchmarks/recipe.py runs what `ambient run PRESET` would give its reward models (the
    # values below are read off the preset YAMLs by hand), on all threads, without a test eval
    spec = importlib.util.spec_from_file_location("bench_recipe", BENCH / "recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    cfg, model = recipe.recipe("reddit-gemma", tmp_path / "fc")
    assert model == "gemma3-270m" and cfg["model"] == "gemma3-270m"
    assert cfg["head_fit"] == "lbfgs" and cfg["weight_decay_grid"] == [0.03, 0.1, 0.3, 1.0]
    assert cfg["max_train_units"] == 0 and cfg["pairs"] == "all" and cfg["covariates"] == ["delay", "order", "length"]
    assert (cfg["pooling"], cfg["backbone_layers"], cfg["train_layers"]) == ("mean", 12, 0)
    assert cfg["train_half"] == "all" and cfg["eval_split"] == "" and cfg["feature_cache"] == str(tmp_path / "fc")
    assert "data" not in cfg and "out" not in cfg
    cfg, model = recipe.recipe("askacademia", tmp_path / "fc")
    assert model == "default" and cfg["weight_decay"] == 10.0 and cfg["head_fit"] == "adamw"
    assert cfg["max_prompt_tokens"] == cfg["max_response_tokens"] == 64


def test_judges_benchmark_scores_jointly_and_equals_each_model_alone(tmp_path):
    # two reward models made from the tiny model with their top layer moved: one shared layer
    # of two, the joint rewards equal each model's own bit for bit and the peer's (transformers)
    from helpers import make_data_dir

    data = make_data_dir(tmp_path / "askfoo", n_threads=12, k=3)
    r = subprocess.run([sys.executable, str(BENCH / "judges.py"), "--data", str(data), "--model", "tiny-random",
                        "--top", "1", "--texts", "12", "--repeats", "1", "--split", ""],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    report = json.loads(r.stdout[r.stdout.index("{"): r.stdout.index("\n}") + 2])
    assert report["model_layers"] == 2 and report["shared_layers"] == 1 and report["texts"] == 12
    assert report["ours_equals_each_alone_bit_for_bit"] and report["max_abs_reward_diff_vs_peer"] < 1e-3
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(bench_env.RESULT_PREFIX))
    res = json.loads(line[len(bench_env.RESULT_PREFIX):])
    assert res["name"] == "judges" and res["unit"] == "texts/s" and res["ratio"] == pytest.approx(res["ours"] / res["peer"])
