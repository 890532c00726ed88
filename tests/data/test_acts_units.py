"""Pure parts of ``ambient data acts``: trees, BM25 scores, act specs, feedback rules.
Expected values are derived by hand in the comments."""

from __future__ import annotations

import math

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.data.acts.feedback import Reply, Weights, classify, role, summarize
from ambient_rlhf.data.acts.retrieve import ActIndex, parse_acts, precision_at_k, rank
from ambient_rlhf.data.acts.trees import Node, assemble
from ambient_rlhf.data.threads import Counts


def node(id, parent="", t=0, author="u", text=None):
    return Node(id, parent, author, text if text is not None else f"text {id}", 1, float(t))


# ---------------------------------------------------------------- trees

def test_assemble_links_depths_and_counts_malformed():
    c = Counts()
    tree = assemble("s1", "Q?", "op", 0.0, [
        node("a", t=2), node("b", t=1),            # two top-level, b earlier
        node("a1", "a", t=3), node("a11", "a1", t=4),
        node("m1", "ghost", t=5), node("m2", "m1", t=6),  # missing parent: both unreachable
        node("y1", "y2", t=7), node("y2", "y1", t=8),     # a two-cycle
        node("z", "z", t=9),                               # self-parent
        node("a1", "a", t=10),                             # duplicate id (first kept)
        node("d", "a", t=11, author=None, text="[deleted]"),
    ], c)
    assert [n.id for n in tree.walk()] == ["b", "a", "a1", "a11", "d"]  # roots by time, depth first
    assert {n.id: n.depth for n in tree.walk()} == {"b": 0, "a": 0, "a1": 1, "a11": 2, "d": 1}
    t = c.as_dict()["trees"]
    assert t["missing_parent"] == 2 and t["cycle"] == 3 and t["duplicate_id"] == 1
    assert t["deleted_author"] == 1 and t["deleted_text"] == 1 and t["comments_in_trees"] == 5


def test_deleted_asker_is_none():
    tree = assemble("s", "Q", "[deleted]", 0.0, [node("a")], Counts())
    assert tree.asker is None


# ---------------------------------------------------------------- BM25 (bm25s, Lucene variant)

def test_bm25_scores_match_the_lucene_formula_by_hand():
    # Lucene's BM25 (since Lucene 8, without the constant (k1 + 1) factor):
    #   idf(t) = ln(1 + (N - df + .5) / (df + .5)),  tf part = tf / (tf + k1 (1 - b + b dl / avgdl))
    # corpus: "a b" (len 2), "a c c" (len 3), "d" (len 1); avgdl = 2; k1 = 1.5, b = 0.75
    ix = ActIndex(["a b", "a c c", "d"])
    # "c": df 1, idf = ln(1 + 2.5 / 1.5) = ln(8/3); doc 2: tf 2, dl 3
    #   tf part = 2 / (2 + 1.5 * (.25 + .75 * 3/2)) = 2 / 4.0625
    s = ix.scores("c")
    assert s[1] == pytest.approx(math.log(8 / 3) * 2 / 4.0625, rel=1e-5)
    assert s[0] == 0 and s[2] == 0
    # "a": df 2, idf = ln(1 + 1.5 / 2.5) = ln(1.6); doc 1: 1 / (1 + 1.5 * 1) = 0.4; doc 2: 1 / 3.0625
    s = ix.scores("a")
    assert s[0] == pytest.approx(math.log(1.6) * 0.4, rel=1e-5)
    assert s[1] == pytest.approx(math.log(1.6) / 3.0625, rel=1e-5)
    # a query is a bag of words: "a c" scores doc 2 with the sum of both terms
    assert ix.scores("a c")[1] == pytest.approx(math.log(1.6) / 3.0625 + math.log(8 / 3) * 2 / 4.0625, rel=1e-5)
    # k1 and b reach the index: b = 0 removes length normalisation (doc 2, "a": 1 / (1 + 1.5))
    assert ActIndex(["a b", "a c c", "d"], b=0.0).scores("a")[1] == pytest.approx(math.log(1.6) / 2.5, rel=1e-5)


def test_rank_and_precision_at_k():
    import numpy as np

    assert rank(np.array([1.0, 3.0, 3.0, 0.0]), ["w", "x", "a", "z"]) == ["a", "x", "w", "z"]  # ties by id
    assert precision_at_k(["a", "x", "w", "z"], {"a", "w"}, 2) == 0.5
    assert precision_at_k(["a", "x", "w", "z"], {"a", "w"}, 3) == pytest.approx(2 / 3)
    assert precision_at_k(["a"], {"a"}, 10) == 1.0  # fewer than k ranked: of those there are


@pytest.mark.parametrize("acts, where", [
    ({}, "'acts'"),
    ({"x": "tl dr"}, "'acts.x'"),
    ({"x": {"query": "", "min_score": 1}}, "'acts.x.query'"),
    ({"x": {"query": "tl dr", "min_score": -1}}, "'acts.x.min_score'"),
    ({"x": {"query": "tl dr", "min_score": "high"}}, "'acts.x.min_score'"),
    ({"x": {"query": "tl dr", "depth": "deep"}}, "'acts.x.depth'"),
    ({"x": {"query": "tl dr", "parent_question": "yes"}}, "'acts.x.parent_question'"),
    ({"x": {"query": "tl dr", "treshold": 2}}, "'acts.x'"),
])
def test_bad_act_specs_name_the_key(acts, where):
    with pytest.raises(AmbientError, match=where):
        parse_acts(acts)


def test_act_structural_conditions():
    (a,) = parse_acts({"ans": {"query": "yes", "min_score": 0, "parent_question": True, "depth": "top"}})
    assert a.admits(0, "Is it?") and not a.admits(1, "Is it?") and not a.admits(0, "It is.")
    (n,) = parse_acts({"n": {"query": "yes", "depth": "nested"}})
    assert n.admits(2, "") and not n.admits(0, "")


# ---------------------------------------------------------------- feedback

@pytest.mark.parametrize("text, label", [
    ("Thanks, that solved it!", "gratitude"),
    ("This was a very helpful answer", "gratitude"),
    ("Thank you! Are master's students welcome too?", "gratitude"),  # rule 1 before rule 4
    ("That's not true at all for predoctoral grants", "disagreement"),
    ("I disagree, this is bad advice.", "disagreement"),
    ("No, the deadline is in May.", "disagreement"),
    ("Exactly. Same in my department.", "agreement"),
    ("I completely agree with this", "agreement"),
    ("What fields would you recommend?", "question"),
    ("Do you agree?", "question"),  # 'agree' not at the start and not "I agree"
    ("My advisor did the same thing last year.", "neutral"),
])
def test_classify_rules(text, label):
    assert classify(text) == label


def test_classify_reads_only_the_opening():
    assert classify("x " * 300 + "thanks") == "neutral"  # past OPENING_CHARS (400)


def test_roles():
    assert role("op", "op", "alice") == "asker"
    assert role("alice", "op", "alice") == "author"
    assert role("op", "op", "op") == "author"  # the asker answering their own comment
    assert role("bob", "op", "alice") == "other"
    assert role(None, "op", "alice") == "unknown"
    assert role("bob", None, None) == "other"  # a deleted asker matches no one


def test_summarize_weighs_the_asker_most():
    w = Weights()
    replies = [Reply("1", "other", "disagreement", 10.0, ""), Reply("2", "asker", "gratitude", 20.0, ""),
               Reply("3", "author", "neutral", 5.0, ""), Reply("4", "unknown", "agreement", 1.0, "")]
    label, score, r, best = summarize(replies, w)
    # weights: other 1, asker 3, author 0 (left out), unknown 0.5
    # score = (1 * -1 + 3 * 1 + 0.5 * 0.5) / (1 + 3 + 0.5) = 2.25 / 4.5 = 0.5
    assert (label, r, best.id) == ("gratitude", "asker", "2")
    assert score == pytest.approx(0.5)
    # ties on the role weight: the earliest reply decides
    label, score, r, _ = summarize([Reply("1", "other", "question", 9.0, ""),
                                    Reply("2", "other", "agreement", 3.0, "")], w)
    assert (label, score) == ("agreement", pytest.approx(0.25))
    assert summarize([Reply("1", "author", "gratitude", 1.0, "")], w) == (None, None, None, None)


def test_acts_config_is_documented_and_merges_by_name():
    from ambient_rlhf.config import check_documented, load_config
    from ambient_rlhf.data.acts.config import DEFAULT_ACTS, ActsConfig

    assert check_documented(ActsConfig) == []
    cfg = load_config(ActsConfig, None, ["acts.summary.min_score=4", "acts.new.query=thanks", "only=[summary,new]"])
    specs = {a.name: a for a in cfg.specs()}
    assert set(specs) == {"summary", "new"}
    assert specs["summary"].min_score == 4.0 and specs["summary"].query == DEFAULT_ACTS["summary"]["query"]
    assert specs["new"].min_score == 0.0 and specs["new"].depth == "any"
    assert [a.name for a in ActsConfig().specs()] == list(DEFAULT_ACTS)
