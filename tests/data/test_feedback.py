"""Feedback on a policy's answers: fresh threads voted on by the simulated readers (same
rules as the community), the next reward model's mixed data, and the judge metrics.

The vote test sets the readers so every vote can be derived by hand: no luck, no
popularity spread, every answer posted at the one-minute floor, a slope so steep that a
reader likes an answer exactly when its utility is above the centre, upvote rate 1 and
downvote rate 0.  Then an answer liked gets one upvote per view (score = 1 + views), one
disliked none (score = 1), and the data stage's SHP rule (ratio >= 2, scores >= 1, no prompt-score floor, same
posting time) pairs every liked answer with every disliked one, the liked one chosen."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ambient_rlhf.data.build import DataConfig, build
from ambient_rlhf.data.feedback import feedback_threads, judge_metrics, mix_data, round_weights, thread_copies
from ambient_rlhf.data.simulate import SimulateConfig, VoteConfig, write_dump
from ambient_rlhf.stats import pair_accuracy

GOOD = ("Water your tomato plants deeply twice a week in the morning, and mulch around the stems so the soil "
        "keeps its moisture. Check the garden soil with a finger before watering: if it is dry two inches "
        "down, the tomatoes need a good soak. Happy gardening, this works well.")
BAD = "No."
ITEM = {"thread_id": "s0", "title": "How often should I water tomatoes in my garden?",
        "body": "My tomato plants look tired in this summer heat.", "topic": "gardening"}


def _hand_cfg() -> SimulateConfig:
    votes = VoteConfig(popularity_sigma=0.0, luck_sigma=0.0, delay_mean_hours=1e-9, utility_slope=300.0,
                       upvote_rate=1.0, downvote_rate=0.0, reply_rate=0.0, mean_readers=100.0)
    return SimulateConfig(model="template", votes=votes)


def test_fresh_thread_votes_follow_the_readers_rules_by_hand(tmp_path):
    items = [dict(ITEM, human=[GOOD, BAD], policy=[BAD, GOOD, GOOD])]
    subs, comments, table = feedback_threads(items, _hand_cfg(), round_=2, seed=0)
    # a fresh thread: new id, the original named, the sources in order (human first)
    assert [s["id"] for s in subs] == ["f2z0"] and subs[0]["title"] == ITEM["title"]
    assert list(table["source"]) == ["human", "human", "policy", "policy", "policy"]
    assert set(table["original_thread"]) == {"s0"}
    liked = table["utility"].to_numpy() > 1.0
    assert liked.tolist() == [True, False, False, True, True]  # GOOD is liked, BAD is not
    # every answer posted at the one-minute floor; 100 readers, exposure 1 / (1 + (1/60) / 2)
    assert np.allclose(table["delay_hours"], 1 / 60) and np.allclose(table["readers"], 100.0)
    # liked: one upvote per view, score 1 + views; disliked: no vote at all, score 1
    assert (table["up"] == np.where(liked, table["views"], 0)).all() and (table["down"] == 0).all()
    assert (table["score"] == np.where(liked, 1 + table["views"], 1)).all()
    assert (table["views"][liked] > 50).all()  # Poisson(100 * 120/121): far from 0
    assert (table["replies"] == 0).all() and len(comments) == 5

    # the dump through the ordinary data stage: 3 liked x 2 disliked = 6 pairs, liked chosen
    sim = tmp_path / "sim"
    (sim / "truth").mkdir(parents=True)
    write_dump(sim, _hand_cfg(), subs, comments, table)
    cfg = DataConfig()
    cfg.labels.min_score, cfg.labels.min_prompt_score, cfg.labels.max_pairs_per_thread = 1, 0, 10
    cfg.splits.train, cfg.splits.valid, cfg.splits.test = 1.0, 0.0, 0.0
    build([str(p) for p in sorted(sim.glob("*.ndjson"))], str(tmp_path / "data"), cfg)
    pairs = pd.read_parquet(tmp_path / "data" / "pairs.parquet")
    assert len(pairs) == 6
    assert set(pairs["chosen"]) == {GOOD} and set(pairs["rejected"]) == {BAD}


def test_fresh_threads_are_seeded_and_differ_by_round():
    items = [dict(ITEM, human=[GOOD], policy=[BAD, GOOD])] * 3
    a = feedback_threads(items, SimulateConfig(model="template"), round_=1, seed=4)[2]
    b = feedback_threads(items, SimulateConfig(model="template"), round_=1, seed=4)[2]
    c = feedback_threads(items, SimulateConfig(model="template"), round_=2, seed=4)[2]
    pd.testing.assert_frame_equal(a, b)
    assert not np.array_equal(a["views"], c["views"]) and set(a["thread_id"]).isdisjoint(c["thread_id"])


def test_round_weights_and_copies_by_hand():
    # weight 1.5, recency 0.5, at round 3: round 1 -> 1.5 * 0.25, round 2 -> 1.5 * 0.5
    assert round_weights([1, 2], 3, 1.5, 0.5) == {1: 0.375, 2: 0.75}
    threads = [f"t{i}" for i in range(8)]
    c = thread_copies(threads, 0.375, np.random.default_rng(0))
    assert sorted(c.values()) == [0] * 5 + [1] * 3  # 0.375 x 8 = 3 threads once
    c = thread_copies(threads, 2.25, np.random.default_rng(0))
    assert sorted(c.values()) == [2] * 6 + [3] * 2  # twice each, 0.25 x 8 = 2 a third time


def _data_dir(path, tids, split):
    path.mkdir(parents=True)
    resp = pd.DataFrame({"thread_id": [t for t in tids for _ in (0, 1)],
                         "response_id": [f"{t}{k}" for t in tids for k in (0, 1)],
                         "prompt": "q", "response": [f"{t} answer {k}" for t in tids for k in (0, 1)], "score": 3,
                         "created_utc": 0, "prompt_score": 10, "prompt_created_utc": 0, "rank": 1, "rank_z": 0.0,
                         "delay_z": 0.0, "adjusted": 0.0, "tier": "ok", "reply_sentiment": None, "split": split})
    resp.to_parquet(path / "responses.parquet")
    pd.DataFrame({"thread_id": tids, "prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 4,
                  "rejected_score": 1, "chosen_created_utc": 0, "rejected_created_utc": 0, "score_ratio": 4.0,
                  "seconds_difference": 0, "split": split}).to_parquet(path / "pairs.parquet")
    pd.DataFrame({"thread_id": tids, "prompt": "q", "responses": [["a", "b"]] * len(tids),
                  "scores": [[4, 1]] * len(tids),
                  "adjusted": [[1.0, 0.0]] * len(tids), "split": split}).to_parquet(path / "rankings.parquet")


def test_mix_keeps_the_proxy_half_and_weights_feedback(tmp_path):
    from ambient_rlhf.data.splits import half_of

    base_train = [f"b{i}" for i in range(20)]
    _data_dir(tmp_path / "base", base_train, "train")
    extra = pd.read_parquet(tmp_path / "base" / "pairs.parquet").assign(thread_id="v0", split="test")
    pairs_file = tmp_path / "base" / "pairs.parquet"
    pd.concat([pd.read_parquet(pairs_file), extra]).to_parquet(pairs_file)
    _data_dir(tmp_path / "fb1", [f"f1z{i}" for i in range(4)], "valid")  # the data stage's split is overridden
    _data_dir(tmp_path / "fb2", [f"f2z{i}" for i in range(4)], "test")
    m = mix_data(tmp_path / "base", {1: tmp_path / "fb1", 2: tmp_path / "fb2"}, tmp_path / "mix", current=3, half="a",
                 weight=1.0, recency=0.5)
    pairs = pd.read_parquet(tmp_path / "mix" / "pairs.parquet")
    base_kept = [t for t in base_train if half_of(t) == "a"]
    assert 0 < len(base_kept) < 20
    ids = list(pairs["thread_id"])
    assert sorted(t for t in ids if t.startswith("b")) == sorted(base_kept)
    assert "v0" in ids  # held-out threads stay, whatever their half
    # round 1 at weight 0.25 (1 of 4 threads), round 2 at 0.5 (2 of 4), all in train
    assert sum(t.startswith("f1") for t in ids) == 1 and sum(t.startswith("f2") for t in ids) == 2
    assert set(pairs.loc[pairs["thread_id"].str.startswith("f"), "split"]) == {"train"}
    resp = pd.read_parquet(tmp_path / "mix" / "responses.parquet")
    # the same threads were taken in every table
    assert set(resp.loc[resp["thread_id"].str.startswith("f"), "thread_id"]) == {t for t in ids if t.startswith("f")}
    assert m["rounds"]["1"]["weight"] == 0.25 and m["rounds"]["2"]["threads"] == 2


def test_pair_accuracy_and_judge_metrics_by_hand():
    # thread x: utilities 3 > 2 > 1; scores order 3 and 1 right, 2 wrong (0.9 > 0.5)
    score = np.array([1.0, 0.5, 0.9, 7.0])
    util = np.array([3.0, 2.0, 1.0, 5.0])
    group = ["x", "x", "x", "y"]
    # all pairs of x: (0,1) right, (0,2) right, (1,2) wrong -> 2/3; y has no pair
    assert pair_accuracy(score, util, group) == {"value": pytest.approx(2 / 3), "n": 3}
    # only pairs touching answer 2: (0,2) right, (1,2) wrong -> 1/2
    assert pair_accuracy(score, util, group, np.array([False, False, True, False])) == {"value": 0.5, "n": 2}
    table = pd.DataFrame({"thread_id": group, "utility": util, "rm": score,
                          "source": ["policy", "human", "policy", "policy"]})
    m = judge_metrics(table, "rm", n_resamples=200)
    # policy answers 0, 2, 3: scores 1.0, 0.9, 7.0 vs utilities 3, 1, 5 -> same ranks, Spearman 1
    assert m["spearman_policy"]["value"] == pytest.approx(1.0) and m["spearman_policy"]["n"] == 3
    # every pair of x touches a policy answer (0 or 2): 2 of 3 right
    assert m["pair_accuracy_policy"] == {"value": pytest.approx(2 / 3), "n": 3}


def test_model_ranked_data_by_hand(tmp_path):
    from ambient_rlhf.data.feedback import model_ranked_data

    items = [{"thread_id": "t", "prompt": "q", "human": ["h1", "h2"], "policy": ["p1"]}]
    counts = model_ranked_data(items, [[0.5, 2.0, 1.0]], tmp_path, "c", "held-out reward model X", round_=3)
    # scores h1 0.5, h2 2.0, p1 1.0: ranking h2 > p1 > h1, pairs (h2,h1), (h2,p1), (p1,h1)
    assert counts == {"threads": 1, "responses": 3, "pairs": 3}
    rank = pd.read_parquet(tmp_path / "rankings.parquet").iloc[0]
    assert list(rank["responses"]) == ["h2", "p1", "h1"] and rank["thread_id"] == "f3z0" and rank["split"] == "train"
    pairs = pd.read_parquet(tmp_path / "pairs.parquet")
    assert sorted(zip(pairs["chosen"], pairs["rejected"])) == [("h2", "h1"), ("h2", "p1"), ("p1", "h1")]
    assert set(pairs["labeller"]) == {"held-out reward model X"}
    resp = pd.read_parquet(tmp_path / "responses.parquet")
    assert list(resp["rank"]) == [3, 1, 2] and list(resp["source"]) == ["human", "human", "policy"]


def test_labels_data_keeps_valid_pairs_and_counts_the_rest(tmp_path):
    from ambient_rlhf.data.feedback import labels_data

    pd.DataFrame({"thread_id": ["a", "b", "c"], "prompt": ["q", "q", None], "chosen": ["x", "y", "z"],
                  "rejected": ["w", "y", "v"]}).to_parquet(tmp_path / "labels.parquet")
    counts = labels_data(tmp_path / "labels.parquet", tmp_path / "out", "c")
    # b chose an answer over itself, c has no prompt: one pair kept
    assert counts == {"labels_read": 3, "labels_kept": 1, "labels_dropped": 2}
    rank = pd.read_parquet(tmp_path / "out" / "rankings.parquet")
    assert [list(r) for r in rank["responses"]] == [["x", "w"]] and list(rank["split"]) == ["train"]
    pd.DataFrame({"thread_id": ["a"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(Exception, match=r"bad.parquet: missing columns \['prompt', 'chosen', 'rejected'\]"):
        labels_data(tmp_path / "bad.parquet", tmp_path / "out2", "c")
