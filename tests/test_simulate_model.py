"""``ambient data simulate`` through the CLI: answers from a real (tiny-random) model,
and the dump going through the ordinary data stage (``ambient data build SIMDIR``)."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from ambient_rlhf.cli import main
from ambient_rlhf.data import simulate as sim


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def test_simulate_with_a_model_is_seeded_and_reads_its_answers_back(tmp_path):
    cache = tmp_path / "answers"
    args = ["data", "simulate", "--threads", "3", "--responses", "2", "--model", "tiny-random", "max_new_tokens=6",
            f"answer_cache={cache}"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert _manifest(tmp_path / "a")["answers_from"] == "sampled" and len(list(cache.iterdir())) == 1
    # sampled again (not read back): same seed, same answers and votes
    assert main([*args, "reuse_answers=false", "--out", str(tmp_path / "b")]) == 0
    # read back from the store: the same bytes without sampling
    assert main([*args, "--out", str(tmp_path / "c")]) == 0
    df = sim.load_utility(tmp_path / "a")
    assert len(df) == 6 and (df["response"].str.len() > 0).all()
    for name in ("AmbientSim_comments.ndjson", "AmbientSim_submissions.ndjson"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "c" / name).read_bytes()
    m = _manifest(tmp_path / "a")
    assert m["config"]["model"] == "tiny-random" and m["config"]["max_new_tokens"] == 6
    assert _manifest(tmp_path / "b")["answers_from"] == "sampled"
    assert _manifest(tmp_path / "c")["answers_from"] == "cache"
    assert _manifest(tmp_path / "c")["answers_key"] == m["answers_key"]
    # another seed is another key: sampled, and stored beside the first
    assert main([*args, "--seed", "1", "--out", str(tmp_path / "d")]) == 0
    assert _manifest(tmp_path / "d")["answers_from"] == "sampled" and len(list(cache.iterdir())) == 2


def test_a_damaged_answer_store_is_said_and_sampled_again(tmp_path, warnings_seen):
    cache = tmp_path / "answers"
    args = ["data", "simulate", "--threads", "2", "--responses", "2", "--model", "tiny-random", "max_new_tokens=4",
            f"answer_cache={cache}"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    (stored,) = cache.iterdir()
    stored.write_bytes(stored.read_bytes()[:20])  # cut short
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert _manifest(tmp_path / "b")["answers_from"] == "sampled"
    assert any(str(stored) in w and "unreadable" in w and "sampled again" in w for w in warnings_seen), warnings_seen
    assert (tmp_path / "a" / "AmbientSim_comments.ndjson").read_bytes() == \
        (tmp_path / "b" / "AmbientSim_comments.ndjson").read_bytes()


@pytest.mark.slow
def test_the_packaged_demo_answers_are_what_the_demo_samples(default_model_path):
    """``ambient run``'s simulate stage reads the package's 800 answers instead of sampling
    them.  They must be the demo's: the key of the demo's settings (RunConfig defaults,
    i.e. presets/demo.yaml), the default model and the tokens it is fed is the packaged
    key -- a change of any makes the package stale, and this test says how to remake it.
    Then the first generation batch (the 32 shortest prompts, as ``generate`` orders them)
    is sampled here and must equal the packaged answers word for word (on another stack
    than the package's, a mismatch is float rounding, which the message says)."""
    from ambient_rlhf.data.simulate import generation_prompts
    from ambient_rlhf.models.tokenize import encode_prompt
    from ambient_rlhf.run_config import RunConfig
    from ambient_rlhf.simulate import PACKAGED_ANSWERS, answers_key
    from ambient_rlhf.train.generate import generate, load_for_generation

    cfg = RunConfig().simulate
    prompts = generation_prompts(cfg)
    key, parts = answers_key(default_model_path, prompts, cfg)
    packaged = json.loads(gzip.decompress(PACKAGED_ANSWERS.read_bytes()))
    remake = ("remake it: `ambient data simulate --out /tmp/s --threads T --responses K --model default "
              "max_new_tokens=N batch_size=B answer_cache=/tmp/a` with the demo's settings, then copy the file in "
              f"/tmp/a to {PACKAGED_ANSWERS}")
    for name in ("model", "prompt_ids", "max_new_tokens", "temperature", "batch_size", "seed"):
        assert packaged["parts"][name] == parts[name], f"the packaged demo answers are stale ({name}); {remake}"
    assert packaged["key"] == key
    assert len(packaged["answers"]) == len(prompts) == cfg.threads * cfg.responses
    model, tok = load_for_generation(default_model_path)
    lengths = [len(encode_prompt(tok, p, 256, "auto", None)[0]) for p in prompts]
    first = sorted(range(len(prompts)), key=lambda i: lengths[i])[:cfg.batch_size]
    got = generate((model, tok), [prompts[i] for i in first], max_new_tokens=cfg.max_new_tokens,
                   temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed)
    same_stack = packaged["parts"]["stack"] == parts["stack"]
    assert got == [packaged["answers"][i] for i in first], (
        "sampling here differs from the package" + ("" if same_stack else
        f" (sampled with {packaged['parts']['stack']}, here {parts['stack']}: float rounding; {remake})"))


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
