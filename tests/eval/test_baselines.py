"""The bag-of-words baseline and the "which part is learned" table of ``rm eval``."""

import json
import math

import numpy as np
import pytest

from ambient_rlhf.eval import reward_eval as E
from ambient_rlhf.eval.baselines import BagOfWordsReward, log_words


def test_log_words_by_hand():
    assert log_words(["", "one", "one two  three"]).tolist() == pytest.approx([0.0, math.log(2), math.log(4)])


def test_bag_of_words_learns_a_word_and_scores_texts_like_a_reward():
    # the preferred answer says "thanks", the other "whatever"; equal lengths, so only
    # the word can explain the preference and its weight must be positive
    rng = np.random.default_rng(0)
    filler = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    chosen, rejected = [], []
    for _ in range(60):
        body = " ".join(rng.choice(filler, 5))
        chosen.append(body + " thanks")
        rejected.append(" ".join(rng.choice(filler, 5)) + " whatever")
    bow = BagOfWordsReward(seed=0).fit(chosen, rejected)
    s = bow.score(["alpha beta thanks", "alpha beta whatever"])
    assert s[0] > s[1]
    # the score is linear: w . [tfidf(text), log(1 + words)]
    x = bow._features(["alpha beta thanks"]).toarray()[0]
    assert s[0] == pytest.approx(float(x @ bow.w))
    assert x[-1] == pytest.approx(math.log(4))


def test_bag_of_words_length_coefficient_follows_a_length_preference():
    # the longer answer always wins and the words are drawn alike: length is all there is
    rng = np.random.default_rng(1)
    words = ["a", "b", "c", "d", "e", "f", "g", "h"]
    chosen = [" ".join(rng.choice(words, rng.integers(8, 14))) for _ in range(80)]
    rejected = [" ".join(rng.choice(words, rng.integers(2, 6))) for _ in range(80)]
    bow = BagOfWordsReward(seed=1).fit(chosen, rejected)
    assert bow.length_coef > 0


def test_which_part_by_hand():
    # texts 0..5; pairs (0,1) (2,3) (4,5) in threads x, x, y
    scores = {"s": {0: 1.0, 1: 0.0, 2: 0.0, 3: 1.0, 4: 2.0, 5: 2.0}}  # right, wrong, tie
    sets = {"all": ([0, 2, 4], [1, 3, 5], ["x", "x", "y"], np.array([0.0, 1.0, 1.0]), [True, True, True]),
            "first two": ([0, 2, 4], [1, 3, 5], ["x", "x", "y"], np.array([0.0, 1.0, 1.0]), [True, True, False])}
    out = E.which_part(scores, sets, np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0]), [0, 1, 2, 3, 4, 5], n_boot=20)
    assert out["sets"]["all"]["n"] == 3
    assert out["sets"]["all"]["s"]["value"] == pytest.approx((1 + 0 + 0.5) / 3)  # a tie counts one half
    assert out["sets"]["all"]["earlier wins"]["value"] == pytest.approx(2 / 3)
    assert out["sets"]["first two"]["s"]["value"] == pytest.approx(0.5)
    assert out["sets"]["first two"]["earlier wins"]["value"] == pytest.approx(0.5)
    # Spearman of (1, 0, 0, 1, 2, 2) with (5, 4, 3, 2, 1, 0): ranks (3.5, 1.5, 1.5, 3.5, 5.5, 5.5)
    # against (6, 5, 4, 3, 2, 1) -> Pearson of the ranks
    a = np.array([3.5, 1.5, 1.5, 3.5, 5.5, 5.5])
    b = np.array([6.0, 5, 4, 3, 2, 1])
    assert out["spearman_length"]["s"] == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_evaluate_reward_has_the_which_part_table(tmp_path):
    from helpers import make_data_dir

    from ambient_rlhf.config import load_config
    from ambient_rlhf.train.reward import RewardConfig, train_reward

    data = make_data_dir(tmp_path / "askfoo", n_threads=36, k=4)
    out = tmp_path / "rm"
    train_reward(load_config(RewardConfig, None, [f"data={data}", "model=tiny-random", f"out={out}", "max_steps=2",
                                                  "eval_split=test", "eval_steps=0", "train_half=a"]))
    ev = json.loads((out / "eval.json").read_text())
    meta = json.loads((out / "reward_config.json").read_text())
    assert meta["train_data"] == [str(data.resolve())] and meta["train_half"] == "a"
    wp = ev["which_part"]
    assert set(wp["sets"]) == {"all", "chosen shorter", "similar length", "no time rule", "dropped by time rule"}
    assert set(wp["sets"]["all"]) == {"n", "reward model", "longer wins", "bag of words", "earlier wins"}
    # every preferred answer in this data carries the MARKER word and no other does, and
    # lengths are drawn alike: a bag of words fitted on half the train threads orders
    # nearly every test pair (the ridge and the length term can flip a pair or two)
    assert ev["baselines"]["bag_of_words"]["value"] > 0.9
    assert wp["sets"]["all"]["bag of words"] == ev["baselines"]["bag_of_words"]
    import pandas as pd

    from ambient_rlhf.data.splits import half_of

    # the delay-only baseline: in this synthetic data the preferred answers are posted first
    test = pd.read_parquet(data / "pairs.parquet").query("split == 'test'")
    assert wp["sets"]["all"]["earlier wins"]["value"] == (test["chosen_created_utc"] < test["rejected_created_utc"]).mean()
    train = pd.read_parquet(data / "pairs.parquet")
    train = train[(train["split"] == "train").to_numpy() & np.array([half_of(t) == "a" for t in train["thread_id"]])]
    assert ev["bag_of_words"]["train_pairs"] == len(train)
    assert "which part is learned" in E.format_summary(ev)


def test_bag_of_words_fits_two_pairs():
    # the smallest data a run can give it: two pairs still yield both orientations
    bow = BagOfWordsReward(seed=3).fit(["good answer here", "fine reply"], ["bad", "poor"])
    assert bow.score(["good answer here"]).shape == (1,)
