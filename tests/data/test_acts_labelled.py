"""Precision of act retrieval and of the feedback rules against the hand-labelled samples in
tests/data/acts (README.md there says how they were drawn and labelled)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.data.acts.config import ActsConfig
from ambient_rlhf.data.acts.evaluate import (corpus_precision, feedback_precision, read_jsonl, sample_precision,
                                             threshold_precision)
from ambient_rlhf.data.acts.feedback import CLASSES

HERE = Path(__file__).parent / "acts"
ACTS = ("comment_id", "depth", "parent", "comment", "acts")
NAMES = ("answer", "explanation", "summary", "advice", "correction")


@pytest.fixture(scope="module")
def acts_rows():
    return read_jsonl(HERE / "acts_labelled.jsonl", ACTS)


@pytest.fixture(scope="module")
def feedback_rows():
    return read_jsonl(HERE / "feedback_labelled.jsonl", ("reply", "role", "label"))


def test_samples_are_whole(acts_rows, feedback_rows):
    assert len(acts_rows) >= 100 and len({r["comment_id"] for r in acts_rows}) == len(acts_rows)
    assert all(set(r["acts"]) <= set(NAMES) for r in acts_rows)
    assert len(feedback_rows) >= 100 and all(r["label"] in CLASSES for r in feedback_rows)


def test_feedback_precision_by_hand():
    rows = [{"reply": "Thanks!", "label": "gratitude"}, {"reply": "Thanks, but no.", "label": "disagreement"},
            {"reply": "Why?", "label": "disagreement"}, {"reply": "ok", "label": "neutral"}]
    # predicted: gratitude, gratitude, question, neutral -> gratitude 1 of 2, question 0 of 1, neutral 1 of 1
    r = feedback_precision(rows)
    assert r["per_class"]["gratitude"] == {"predicted": 2, "labelled": 1, "precision": 0.5, "recall": 1.0}
    assert r["per_class"]["question"]["precision"] == 0.0 and r["per_class"]["neutral"]["precision"] == 1.0
    assert r["per_class"]["agreement"] == {"predicted": 0, "labelled": 0, "precision": None, "recall": None}
    assert r["per_class"]["disagreement"]["recall"] == 0.0 and r["accuracy"] == 0.5
    assert r["errors"] == {"disagreement->gratitude": 1, "disagreement->question": 1}
    with pytest.raises(AmbientError, match="one of"):
        feedback_precision([{"reply": "x", "label": "thanks"}])


def test_feedback_rules_beat_chance_on_the_sample(feedback_rows):
    """Each class the rules predict is right more often than the class's share of the sample;
    gratitude, the class the asker's weight rests on, at least 9 times in 10."""
    r = feedback_precision(feedback_rows)
    n = len(feedback_rows)
    for c, v in r["per_class"].items():
        if v["predicted"]:
            assert v["precision"] > v["labelled"] / n, (c, v)
    assert r["per_class"]["gratitude"]["precision"] >= 0.9


def test_act_ranking_beats_chance_on_the_sample(acts_rows):
    """BM25 over the sample's own comments: the first 5 of each act hold more of it than its base rate."""
    res = sample_precision(acts_rows, ActsConfig().specs(), ks=(5, 10))
    assert set(res) == set(NAMES)
    for name, v in res.items():
        assert v["p@5"] > v["base_rate"], (name, v)


def test_corpus_precision_by_hand():
    rows = [{"comment_id": "a", "acts": ["summary"]}, {"comment_id": "b", "acts": []},
            {"comment_id": "c", "acts": ["summary", "advice"]}]
    df = pd.DataFrame({"act": ["summary"] * 4 + ["advice"], "act_score": [3.0, 2.0, 2.0, 1.0, 5.0],
                       "comment_id": ["a", "c", "b", "zz", "c"]})
    # summary top 3 by score, ties by id: a (3.0), b (2.0), c (2.0) -> 2 of 3 labelled summary
    r = corpus_precision(df, rows, ["summary", "advice"], k=3)
    assert r["summary"] == {"k": 3, "labelled": 3, "p@k": pytest.approx(0.667, abs=1e-3)}
    assert r["advice"] == {"k": 1, "labelled": 1, "p@k": 1.0}
    # with act_rank (a re-ranker's order) the ranking is act_rank's, not the scores'
    ranked = df.assign(act_rank=[3, 1, 2, 4, 1])  # summary: c, b, a, zz
    assert corpus_precision(ranked, rows, ["summary"], k=2)["summary"]["p@k"] == 0.5  # c yes, b no
    # k=4 reaches "zz", which nobody labelled: counted, not guessed
    assert corpus_precision(df, rows, ["summary"], k=4)["summary"] == {"k": 4, "labelled": 3, "p@k": pytest.approx(0.667, abs=1e-3)}


def test_threshold_precision_by_hand():
    rows = [{"comment_id": "a", "acts": ["advice"], "drawn": "random"},
            {"comment_id": "b", "acts": [], "drawn": "random"},
            {"comment_id": "c", "acts": ["advice"], "drawn": "random"},
            {"comment_id": "d", "acts": ["advice"], "drawn": "top10"}]  # not random: left out
    df = pd.DataFrame({"act": ["advice", "advice", "advice"], "act_score": [1.0, 1.0, 1.0],
                       "comment_id": ["a", "b", "d"]})
    # random a, b, c; marked a, b; labelled a, c -> precision 1/2, recall 1/2
    r = threshold_precision(df, rows, ["advice", "summary"])
    assert r["advice"] == {"n": 3, "marked": 2, "labelled": 2, "precision": 0.5, "recall": 0.5}
    assert r["summary"] == {"n": 3, "marked": 0, "labelled": 0, "precision": None, "recall": None}


def test_bad_labelled_file(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"reply": "a", "role": "asker", "label": "neutral"}\n{"reply": "b"}\n')
    with pytest.raises(AmbientError, match=r"x.jsonl:2: missing field 'role'"):
        read_jsonl(p, ("reply", "role", "label"))
    p.write_text("{oops\n")
    with pytest.raises(AmbientError, match=r"x.jsonl:1: invalid JSON"):
        read_jsonl(p, ("reply",))


def test_eval_labels_cli(capsys, tmp_path):
    import json

    from ambient_rlhf.cli import main

    files = [str(HERE / "acts_labelled.jsonl"), str(HERE / "feedback_labelled.jsonl")]
    assert main(["data", "acts", "--eval-labels", *files]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"acts_sample", "feedback"} and out["feedback"]["n"] == 100
    assert set(out["acts_sample"]) == set(NAMES) and "p@10" in out["acts_sample"]["advice"]
    # with a data directory that has no acts.parquet: a clear error
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["data", "acts", str(tmp_path), "--eval-labels", *files]) == 2
    assert "acts.parquet: missing; run `ambient data acts" in capsys.readouterr().err
