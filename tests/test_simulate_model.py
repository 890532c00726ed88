"""``ambient data simulate`` through the CLI: answers from a real (tiny-random) model,
and the dump going through the ordinary data stage (``ambient data build SIMDIR``)."""

from __future__ import annotations

import json

import pandas as pd

from ambient_rlhf.cli import main
from ambient_rlhf.data import simulate as sim


def test_simulate_with_a_model_is_seeded(tmp_path):
    args = ["data", "simulate", "--threads", "3", "--responses", "2", "--model", "tiny-random", "max_new_tokens=6"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    df = sim.load_utility(tmp_path / "a")
    assert len(df) == 6 and (df["response"].str.len() > 0).all()
    # same seed, same answers and votes
    for name in ("AmbientSim_comments.ndjson", "AmbientSim_submissions.ndjson"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["config"]["model"] == "tiny-random" and m["config"]["max_new_tokens"] == 6


def test_simulated_dump_builds_with_the_data_stage(tmp_path):
    simdir = tmp_path / "sim"
    assert main(["data", "simulate", "--out", str(simdir), "--threads", "40", "--responses", "3", "--model", "template"]) == 0
    assert main(["data", "build", str(simdir), "--out", str(tmp_path / "data")]) == 0
    resp = pd.read_parquet(tmp_path / "data" / "responses.parquet")
    truth = sim.load_utility(simdir)
    assert len(resp) == len(truth) == 120  # every answer kept: mature, scored, not deleted
    # the data stage's response ids are the dump's comment ids: the truth table joins
    joined = resp.merge(truth[["response_id", "utility", "response"]], on="response_id", suffixes=("", "_truth"))
    assert len(joined) == 120 and (joined["response"] == joined["response_truth"]).all()
    # and the prompt the data stage builds gives the same utility as the simulator's
    row = joined.iloc[0]
    assert sim.true_utility(row["prompt"], row["response"]) == row["utility"]
