"""The simulated community: hidden utility, vote model with confounds, the dump format.

Everything here uses the model-free template responder (no LM), so it runs in seconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.config import check_documented, load_config
from ambient_rlhf.data import simulate as sim
from ambient_rlhf.data.simulate import SimulateConfig, VoteConfig

PROMPT = "How do I keep my sourdough starter alive?\n\nIt goes flat."


def test_content_words_by_hand():
    # "How do I" (short/stop), "keep" (4 letters, kept), "sourdough", "starters" -> "starter"
    # (plural s removed, > 4 letters), "alive", "Glass" stays (ss), "jars" stays (only 4
    # letters), "don't"/"it's" are stopwords.
    assert sim.content_words("How do I keep my sourdough starters alive? Glass jars, don't it's") == [
        "keep", "sourdough", "starter", "alive", "glass", "jars"]


def test_true_utility_neutral_text_by_hand():
    # prompt content words: keep sourdough starter alive goes flat
    # response "Feed the starter flour daily." : 5 words; content feed starter flour daily
    # relevance = |{starter}| / 4 = 0.25; VADER compound 0 (no lexicon word);
    # length = exp(-ln(5/40)^2 / (2*0.25)) = exp(-2.0794^2 * 2) = exp(-8.6481) = 1.7557e-4
    # repetition = 1 - 4/4 = 0  ->  utility = 0.25 + 0.5 * 1.7557e-4 = 0.2500878
    c = sim.utility_components(PROMPT, "Feed the starter flour daily.")
    assert c["relevance"] == 0.25 and c["sentiment"] == 0.0 and c["repetition"] == 0.0
    assert c["length"] == pytest.approx(1.7557e-4, rel=1e-3)
    assert sim.true_utility(PROMPT, "Feed the starter flour daily.") == pytest.approx(0.2500878, abs=1e-6)


def test_true_utility_sentiment_length_repetition_by_hand():
    # "Good luck!" adds VADER valences good=1.9 and luck=2.0 plus 0.292 for one "!":
    # x = 4.192, compound = x / sqrt(x^2 + 15) = 4.192 / 5.7070 = 0.7345 (4 d.p. in VADER).
    # 7 words: length = exp(-ln(7/40)^2 * 2) = exp(-1.7430^2 * 2) = exp(-6.0761) = 2.2958e-3
    # relevance 0.25 again, content words feed starter flour daily luck (good is a stopword)
    u = sim.true_utility(PROMPT, "Feed the starter flour daily. Good luck!")
    assert u == pytest.approx(0.25 + 0.5 * 0.7345 + 0.5 * 2.2958e-3, abs=1e-4)
    # 40 words -> length exactly 1; "starter" x 40 -> content words 40, distinct 1:
    # repetition = 1 - 1/40 = 0.975; relevance 1/4  ->  0.25 + 0.5 - 0.975 = -0.225
    loop = " ".join(["starter"] * 40)
    assert sim.utility_components(PROMPT, loop)["length"] == 1.0
    assert sim.true_utility(PROMPT, loop) == pytest.approx(-0.225, abs=1e-9)
    # empty answer: every component 0
    assert sim.true_utility(PROMPT, "") == 0.0
    # four shared words saturate relevance: keep sourdough starter alive flat -> min(5, 4)/4 = 1
    assert sim.utility_components(PROMPT, "keep sourdough starter alive flat")["relevance"] == 1.0


def test_expected_score_by_hand():
    vc = VoteConfig()
    # utility = center -> p_like = 0.5; delay = half-life -> exposure 0.5 -> views 200 of 400
    # E[score] = 1 + 200 * (0.15 * 0.5 - 0.03 * 0.5) = 1 + 200 * 0.06 = 13
    e = sim.expected_score([vc.utility_center], [vc.exposure_half_life_hours], 400.0, vc)
    assert e[0] == pytest.approx(13.0, abs=1e-9)
    # utility = center + 1 -> p = sigmoid(4) = 0.982014; at delay 0 views = 400:
    # 1 + 400 * (0.15 * 0.982014 - 0.03 * 0.017986) = 1 + 400 * 0.146763 = 59.705
    e = sim.expected_score([vc.utility_center + 1], [0.0], 400.0, vc)
    assert e[0] == pytest.approx(59.705, abs=1e-2)


def test_thread_votes_sample_mean_and_confound():
    vc = VoteConfig(luck_sigma=0.0)
    rng = np.random.default_rng(0)
    c = vc.utility_center
    util, delay = [c + 0.5, c + 0.5, c], [0.0, 6.0, 0.0]
    draws = np.stack([sim.thread_votes(util, delay, 400.0, vc, rng)["score"] for _ in range(4000)])
    expected = sim.expected_score(util, delay, 400.0, vc)
    # sample means within 4 standard errors of the closed form
    se = draws.std(axis=0) / math.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - expected) < 4 * se)
    # the confound: same utility, posted 6 h later (exposure 1/4) scores far lower ...
    assert draws[:, 1].mean() < 0.4 * draws[:, 0].mean()
    # ... and loses to a worse answer posted first: E = 1 + 400 * 0.06 = 25 for the
    # worse one (utility = center) vs p = sigmoid(2) = 0.880797, views 400 / 4 = 100:
    # 1 + 100 * (0.15 * 0.880797 - 0.03 * 0.119203) = 13.854
    assert expected[2] == pytest.approx(25.0) and expected[1] == pytest.approx(13.854, abs=0.01)
    assert draws[:, 2].mean() > draws[:, 1].mean()


def test_config_documented_and_validated():
    assert check_documented(SimulateConfig) == []
    cfg = load_config(SimulateConfig, None, ["threads=5", "votes.utility_slope=2"])
    assert cfg.threads == 5 and cfg.votes.utility_slope == 2.0
    with pytest.raises(AmbientError, match="responses must be >= 2"):
        load_config(SimulateConfig, None, ["responses=1"])


def test_compose_prompts_distinct_and_seeded():
    a = sim.compose_prompts(50, seed=1)
    assert len({p["title"] for p in a}) == 50
    assert a == sim.compose_prompts(50, seed=1)
    assert a != sim.compose_prompts(50, seed=2)


def _read_ndjson(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "community"
    return sim.simulate(out, SimulateConfig(threads=120, responses=4, seed=3, model="template"))


def test_dump_format(sim_dir):
    subs = _read_ndjson(sim_dir / "AmbientSim_submissions.ndjson")
    comments = _read_ndjson(sim_dir / "AmbientSim_comments.ndjson")
    assert len(subs) == 120
    for key in ("id", "name", "title", "selftext", "author", "subreddit", "created_utc", "score", "num_comments",
                "permalink", "retrieved_on"):
        assert key in subs[0]
    for key in ("id", "name", "author", "body", "created_utc", "score", "link_id", "parent_id", "retrieved_on"):
        assert key in comments[0]
    assert [c["created_utc"] for c in comments] == sorted(c["created_utc"] for c in comments)
    assert [s["created_utc"] for s in subs] == sorted(s["created_utc"] for s in subs)
    by_name = {s["name"]: s for s in subs}
    top = [c for c in comments if c["parent_id"] == c["link_id"]]
    replies = [c for c in comments if c["parent_id"].startswith("t1_")]
    assert len(top) == 120 * 4 and len(replies) == len(comments) - len(top) > 0
    top_names = {c["name"] for c in top}
    assert all(r["parent_id"] in top_names for r in replies)
    for c in top:
        s = by_name[c["link_id"]]
        assert c["created_utc"] > s["created_utc"] and c["author"] != s["author"]
        assert c["retrieved_on"] - s["created_utc"] >= 30 * 86400  # every thread mature
    # num_comments counts answers and replies of the thread
    assert sum(s["num_comments"] for s in subs) == len(comments)


def test_data_built_from_the_simulator_says_so(sim_dir, tmp_path):
    """The data stage records ``simulated`` and ``community`` in its manifest; the readers
    (``is_simulated``, ``community_name``) take them from there."""
    import shutil

    from ambient_rlhf.config import load_config
    from ambient_rlhf.data.build import DataConfig, build
    from ambient_rlhf.eval.policy_eval import is_simulated
    from ambient_rlhf.train.reward import community_name

    cfg = load_config(DataConfig, None, ["labels.min_prompt_score=2"])
    dumps = sorted(str(p) for p in sim_dir.glob("*.ndjson"))
    m = build(dumps, str(tmp_path / "data"), cfg)
    assert m["simulated"] is True and m["community"] == "AmbientSim" and m["communities"] == {"AmbientSim": 120}
    assert is_simulated(tmp_path / "data") and community_name(tmp_path / "data") == "AmbientSim"
    # the same dump copied away from the simulator's manifest is ordinary data
    copy = tmp_path / "copy"
    copy.mkdir()
    for d in dumps:
        shutil.copy(d, copy)
    m = build([str(copy)], str(tmp_path / "data2"), cfg)
    assert m["simulated"] is False and not is_simulated(tmp_path / "data2")


def test_utility_table_matches_dump(sim_dir):
    df = sim.load_utility(sim_dir)
    assert len(df) == 480 and df["response_id"].is_unique
    comments = {c["id"]: c for c in _read_ndjson(sim_dir / "AmbientSim_comments.ndjson")}
    for row in df.sample(20, random_state=0).itertuples():
        assert comments[row.response_id]["body"] == row.response
        assert comments[row.response_id]["score"] == row.score
        assert row.utility == pytest.approx(sim.true_utility(row.prompt, row.response), abs=1e-12)
    m = json.loads((sim_dir / "manifest.json").read_text())
    assert m["stage"] == "simulate" and m["counts"]["responses"] == 480
    assert m["utility_weights"] == sim.UTILITY_WEIGHTS


def test_votes_carry_signal_and_confound(sim_dir):
    """Raw scores follow the utility but also the posting time (what the adjusted rank
    corrects for).  Over seeds 0-4 of this 120-thread community the statistics below
    were 0.66-0.77, -0.43 to -0.56 and -0.67 to -0.73, so each bound leaves a margin."""
    df = sim.load_utility(sim_dir)
    assert sim.within_thread_spearman(df, "score") > 0.5
    # among liked answers (utility above the readers' center) later means fewer points
    liked = df[df["utility"] > VoteConfig().utility_center]
    assert liked["delay_hours"].rank().corr(liked["score"].rank()) < -0.3
    assert sim.within_thread_spearman(df, "views", target="delay_hours") < -0.5
    # utility depends on the hidden style the way it was designed
    by_style = df.groupby("style")["utility"].mean()
    assert by_style["warm"] > by_style["blunt"] and by_style["detailed"] > by_style["brief"]


def test_simulation_is_deterministic(tmp_path, sim_dir):
    again = sim.simulate(tmp_path / "again", SimulateConfig(threads=120, responses=4, seed=3, model="template"))
    for name in ("AmbientSim_submissions.ndjson", "AmbientSim_comments.ndjson"):
        assert (again / name).read_bytes() == (sim_dir / name).read_bytes()
    other = sim.simulate(tmp_path / "other", SimulateConfig(threads=120, responses=4, seed=4, model="template"))
    assert (other / "AmbientSim_comments.ndjson").read_bytes() != (sim_dir / "AmbientSim_comments.ndjson").read_bytes()


def test_model_needs_responder(tmp_path):
    with pytest.raises(AmbientError, match="needs a model responder"):
        sim.simulate(tmp_path / "x", SimulateConfig(threads=2, model="default"))


def test_within_thread_spearman_by_hand():
    # thread a: ranks of x (1,2,3) vs y (1,2,3) -> 1; thread b: x (1,2) vs y (2,1) -> -1;
    # thread c has a constant column and is skipped -> mean(1, -1) = 0
    df = pd.DataFrame({"thread_id": list("aaabbcc"), "x": [1, 2, 3, 5, 6, 1, 1], "y": [10, 20, 30, 2, 1, 4, 5]})
    assert sim.within_thread_spearman(df, "x", target="y") == pytest.approx(0.0, abs=1e-12)
    assert sim.within_thread_spearman(df[df.thread_id == "a"], "x", target="y") == pytest.approx(1.0)


def test_pair_accuracy_by_hand():
    # thread a: y 1<2<3, x orders (1,2) right, (1,3) right, (2,3) tied -> 2.5 of 3;
    # thread b: y equal -> no pair; thread c: y 5>4, x 1<2 -> wrong -> 0 of 1.  2.5 / 4
    df = pd.DataFrame({"thread_id": list("aaabbcc"), "x": [1, 2, 2, 0, 9, 1, 2], "y": [1, 2, 3, 7, 7, 5, 4]})
    assert sim.within_thread_pair_accuracy(df, "x", target="y") == 0.625
    stats = sim.recovery_stats(df, ["x"], target="y")
    assert stats["x"]["pair_accuracy"] == 0.625 and stats["n"] == {"threads": 3, "responses": 7}


def test_compare_recovery_by_hand():
    # thread a: x agrees with y (+1), z reverses it (-1) -> difference 2;
    # thread b: x reverses (-1), z agrees (+1) -> -2; thread c: x agrees (+1), z is
    # constant (undefined, counts 0) -> 1.  Mean (2 - 2 + 1) / 3 = 1/3.
    df = pd.DataFrame({"thread_id": list("aabbcc"), "y": [1, 2, 1, 2, 1, 2],
                       "x": [1, 2, 2, 1, 1, 2], "z": [2, 1, 1, 2, 5, 5]})
    c = sim.compare_recovery(df, "x", "z", target="y", n_boot=500)
    assert c["difference"] == pytest.approx(1 / 3) and c["threads"] == 3
    # resampled means of {2, -2, 1} lie in [-2, 2]; the interval holds the mean
    assert -2 <= c["ci_low"] <= 1 / 3 <= c["ci_high"] <= 2
    same = sim.compare_recovery(df, "x", "x", target="y")
    assert same["difference"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


def test_trim_to_sentence_by_hand():
    assert sim.trim_to_sentence("Water it weekly. Use a pot with holes and") == "Water it weekly."
    assert sim.trim_to_sentence('He said "stop!" then we left and the') == 'He said "stop!"'
    assert sim.trim_to_sentence("Done. Really done!") == "Done. Really done!"  # already finished
    assert sim.trim_to_sentence("no sentence end at all") == "no sentence end at all"
    assert sim.trim_to_sentence("Version 2.5 is out and") == "Version 2.5 is out and"  # '2.5' is no sentence end
    assert sim.trim_to_sentence("Try it. Step 1.5 helps") == "Try it."
