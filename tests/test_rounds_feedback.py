"""The feedback stage of ``ambient run rounds=N`` for a real community: a held-out reward
model ranks the policy's and the community's answers (named as such), or explicit labels
are read.  Tiny models; the ranking is checked against the reward model's scores of the
same texts computed here, one by one."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from ambient_rlhf.config import to_dict
from ambient_rlhf.data.feedback import FeedbackConfig
from ambient_rlhf.rounds import run_feedback


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_path):
    from helpers import make_data_dir

    from ambient_rlhf.models.heads import ScalarHeadModel
    from ambient_rlhf.models.load import load_causal_lm, load_tokenizer

    root = tmp_path_factory.mktemp("fbstage")
    torch.manual_seed(0)
    ScalarHeadModel(load_causal_lm(tiny_model_path)).save_pretrained(root / "held-out", load_tokenizer(tiny_model_path))
    return {"root": root, "rm": str(root / "held-out"), "data": str(make_data_dir(root / "data", n_threads=12, k=3)),
            "policy": tiny_model_path}


def _spec(world, fb: FeedbackConfig) -> dict:
    return {"round": 2, "feedback": to_dict(fb), "policy": world["policy"], "data": world["data"], "simulate": "",
            "votes": {}, "data_config": {}, "proxy": world["rm"], "judge": world["rm"], "batch_size": 4,
            "max_prompt_tokens": 64}


def test_held_out_reward_model_ranks_and_is_named(world):
    from ambient_rlhf.eval.policy_eval import load_judge
    from ambient_rlhf.models.reward_inputs import RewardFunction

    out = world["root"] / "feedback-2"
    fb = FeedbackConfig(source="held-out-rm", held_out_rm=world["rm"], prompts=3, policy_answers=2, human_answers=1,
                        max_new_tokens=6)
    run_feedback(_spec(world, fb), False, str(out))
    result = json.loads((out / "feedback.json").read_text())
    assert result["labeller"].startswith("held-out reward model") and world["rm"] in result["labeller"]
    assert result["counts"]["threads"] == 3 and result["counts"]["responses"] == 9
    from ambient_rlhf.data.splits import half_of

    answers = pd.read_parquet(out / "answers.parquet")
    assert {half_of(t) for t in answers["thread_id"]} == {"a"}  # questions of the proxy's half only
    resp = pd.read_parquet(out / "data" / "responses.parquet")
    assert list(resp["source"]).count("policy") == 6 and set(resp["labeller"]) == {result["labeller"]}
    # the ranking follows the held-out model's score of each answer, scored alone here
    rm, _ = load_judge(world["rm"])
    fn = RewardFunction(rm, batch_size=1)
    from ambient_rlhf.data.tables import community_name

    com = community_name(world["data"])
    for _, g in resp.groupby("thread_id"):
        direct = [float(fn.texts([p], [r], [com])[0]) for p, r in zip(g["prompt"], g["response"])]
        assert list(g["score"]) == pytest.approx(direct, abs=1e-4)
        assert list(g["rank"]) == list(pd.Series(direct).rank(ascending=False, method="first").astype(int))
    pairs = pd.read_parquet(out / "data" / "pairs.parquet")
    assert (pairs["chosen_score"] > pairs["rejected_score"]).all() and set(pairs["split"]) == {"train"}


def test_labels_source_reads_the_file(world):
    labels = world["root"] / "labels.parquet"
    pd.DataFrame({"thread_id": ["a", "b"], "prompt": ["q1", "q2"], "chosen": ["x", "y"],
                  "rejected": ["w", "z"]}).to_parquet(labels)
    out = world["root"] / "feedback-labels"
    run_feedback(_spec(world, FeedbackConfig(source="labels", labels=str(labels))), False, str(out))
    result = json.loads((out / "feedback.json").read_text())
    assert result["counts"]["labels_kept"] == 2 and str(labels) in result["labeller"]
    assert len(pd.read_parquet(out / "data" / "rankings.parquet")) == 2
