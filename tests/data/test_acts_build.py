"""``ambient data acts`` end to end on a small dump written here: trees with malformed parts,
acts, feedback by role, act_pairs.parquet, the manifest and report sections, the CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from data_fixtures import com, sub, write_ndjson

from ambient_rlhf.cli import main

ACTS_YAML = """\
acts:
  advice: {query: "should consider advisor", min_score: 0.1}
  correction: {query: "not true misconception", min_score: 0.1}
only: [answer, advice, correction]
"""


def acts_dump(d):
    subs = [sub("s1", author="op1"), sub("s2", author="op2")]
    coms = [
        com("a1", "s1", 12, 100, "alice", body="You should talk to your advisor and consider a different lab."),
        com("a2", "s1", 3, 200, "carol", body="Actually that is not true, it is a common misconception."),
        com("a3", "s1", 5, 300, "dave", body="Funding decides it."),
        com("r1", "s1", 2, 400, "op1", body="Thanks, that solved it!", parent="t1_a1"),
        com("r2", "s1", 1, 500, "bob", body="I disagree, bad idea.", parent="t1_a1"),
        com("r3", "s1", 1, 600, "op1", body="That's wrong, it is in the handbook.", parent="t1_a2"),
        com("r4", "s1", 1, 650, "[deleted]", body="Exactly right", parent="t1_a2"),
        com("r5", "s1", 1, 700, "dave", body="Edit: I forgot the deadline.", parent="t1_a3"),
        com("r6", "s1", 1, 705, "AutoModerator", body="Thanks for posting!", parent="t1_a3"),  # a bot: no feedback
        com("r1", "s1", 2, 710, "op1", body="Thanks, that solved it!", parent="t1_a1"),  # duplicate id
        com("m1", "s1", 1, 800, "eve", body="orphan", parent="t1_ghost"),  # missing parent
        com("m2", "s1", 1, 810, "eve", body="orphan child", parent="t1_m1"),
        com("y1", "s1", 1, 820, "fay", body="loop one", parent="t1_y2"),  # cycle
        com("y2", "s1", 1, 830, "fay", body="loop two", parent="t1_y1"),
        com("b1", "s2", 4, 100, "gus", body="Short answer."),
        com("b2", "s2", 4, 200, "hal", body="Another answer."),
    ]
    write_ndjson(d / "AskTest_submissions.ndjson", subs)
    write_ndjson(d / "AskTest_comments.ndjson", coms)


@pytest.fixture
def built(tmp_path):
    dump = tmp_path / "dump"
    dump.mkdir()
    acts_dump(dump)
    out = tmp_path / "data"
    assert main(["data", "build", str(dump), "--out", str(out), "labels.reply_sentiment=false"]) == 0
    cfg = tmp_path / "acts.yaml"
    cfg.write_text(ACTS_YAML)
    return out, cfg


def test_acts_end_to_end(built, capsys):
    out, cfg = built
    assert main(["data", "acts", str(out), "--config", str(cfg)]) == 0
    assert "acts.parquet (7 acts on 5 comments in 2 threads)" in capsys.readouterr().out
    a = pd.read_parquet(out / "acts.parquet")
    # answer: every top-level reply to a question (a1 a2 a3 b1 b2); advice: a1 (should, consider,
    # advisor); correction: a2 (not, true, misconception) -- r3 ("That's wrong") holds no cue word
    assert sorted(zip(a["act"], a["comment_id"])) == [
        ("advice", "a1"), ("answer", "a1"), ("answer", "a2"), ("answer", "a3"), ("answer", "b1"), ("answer", "b2"),
        ("correction", "a2")]
    row = a[(a.act == "advice")].iloc[0]
    # replies of a1: op1 (asker, gratitude, weight 3), bob (other, disagreement, weight 1)
    assert [(r["id"], r["role"], r["label"]) for r in row["replies"]] == [("r1", "asker", "gratitude"),
                                                                           ("r2", "other", "disagreement")]
    assert row["feedback"] == "gratitude" and row["feedback_role"] == "asker"
    assert row["feedback_score"] == pytest.approx((3 * 1 + 1 * -1) / 4)
    assert row["delay"] == 300  # r1 at 400 s, a1 at 100 s
    assert row["context"] == "Question s1?\n\nBody of s1." and row["depth"] == 0 and row["score"] == 12
    assert row["act_rank"] == 1  # the only advice
    a2 = a[(a.comment_id == "a2")].iloc[0]
    # op1 disagreement (3 * -1), deleted author agreement (0.5 * 0.5): (-3 + .25) / 3.5
    assert a2["feedback"] == "disagreement" and a2["feedback_score"] == pytest.approx(-2.75 / 3.5)
    a3 = a[(a.comment_id == "a3")].iloc[0]
    assert pd.isna(a3["feedback"]) and a3["num_replies"] == 1  # only its author answered (weight 0)
    assert set(a["split"]) <= {"train", "valid", "test"}

    p = pd.read_parquet(out / "act_pairs.parquet")
    assert list(zip(p["chosen_id"], p["rejected_id"])) == [("a1", "a2")]  # one pair, though a2 is two acts
    assert p["chosen"][0].startswith("You should") and p["prompt"][0] == "Question s1?\n\nBody of s1."
    assert p["seconds_difference"][0] == -100 and p["score_ratio"][0] == pytest.approx(4.0)

    m = json.loads((out / "manifest.json").read_text())["acts"]
    t = m["counts"]["trees"]
    assert (t["missing_parent"], t["cycle"], t["duplicate_id"], t["deleted_author"]) == (2, 2, 1, 1)
    assert m["acts"] == 7 and m["threads_with_acts"] == 2 and m["pairs_upvote_agreement"] == 1.0
    assert m["feedback_mix"]["answer"] == {"gratitude": 1, "disagreement": 1, "none": 3}
    report = (out / "report.md").read_text()
    assert report.count("## Acts and follow-up feedback") == 1 and "| advice | 1 |" in report

    # a second run needs --overwrite, and replaces (not appends) the report section
    capsys.readouterr()
    assert main(["data", "acts", str(out), "--config", str(cfg)]) == 2
    assert "acts.parquet: exists; pass --overwrite" in capsys.readouterr().err
    assert main(["data", "acts", str(out), "--config", str(cfg), "--overwrite"]) == 0
    assert (out / "report.md").read_text().count("## Acts and follow-up feedback") == 1


def test_acts_need_a_reddit_dump(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    rows = ["prompt_id,prompt,prompt_score,prompt_created_utc,response_id,response,response_score,response_created_utc"]
    rows += [f"p1,Q?,20,1600000000,r{i},answer {i},{i + 2},{1600000000 + i}" for i in range(3)]
    csv.write_text("\n".join(rows) + "\n")
    out = tmp_path / "data"
    assert main(["data", "build", str(csv), "--out", str(out), "filters.allow_missing_retrieved_on=true"]) == 0
    capsys.readouterr()
    assert main(["data", "acts", str(out)]) == 2
    assert "acts need nested comments, i.e. a Reddit dump input; this directory was built from ['table']" \
        in capsys.readouterr().err


def test_acts_config_errors(tmp_path, capsys):
    assert main(["data", "acts", str(tmp_path), "only=nope"]) == 2
    assert "config key 'only': unknown acts ['nope']" in capsys.readouterr().err
    assert main(["data", "acts", str(tmp_path), "acts.summary.min_score=-2"]) == 2
    assert "config key 'acts.summary.min_score': expected a number >= 0, got -2" in capsys.readouterr().err
    assert main(["data", "acts", str(tmp_path)]) == 2
    assert f"{tmp_path / 'manifest.json'}: missing" in capsys.readouterr().err


def test_rm_trains_on_act_pairs(built):
    """``ambient rm pairs=acts`` reads act_pairs.parquet: the prompt is the act's context."""
    from ambient_rlhf import AmbientError
    from ambient_rlhf.train.reward.config import RewardConfig, _validate
    from ambient_rlhf.train.reward.units import load_units

    out, cfg = built
    assert main(["data", "acts", str(out), "--config", str(cfg)]) == 0
    split = pd.read_parquet(out / "act_pairs.parquet")["split"][0]
    units = load_units(RewardConfig(data=[str(out)], pairs="acts"), split)
    assert [u.texts for u in units] == [[
        ("Question s1?\n\nBody of s1.", "You should talk to your advisor and consider a different lab."),
        ("Question s1?\n\nBody of s1.", "Actually that is not true, it is a common misconception.")]]
    with pytest.raises(AmbientError, match="act pairs"):
        _validate(RewardConfig(data=[str(out)], out="x", pairs="acts", covariates=["delay"]))


def test_rerank_fills_the_top_hits(built, tiny_model_path):
    """``rerank=true``: the embedding cosine of each act's top ``rerank_top`` lexical hits."""
    from ambient_rlhf.acts import run_acts
    from ambient_rlhf.config import load_config
    from ambient_rlhf.data.acts.config import ActsConfig

    out, cfg = built
    c = load_config(ActsConfig, cfg, ["rerank=true", f"rerank_model={tiny_model_path}", "rerank_top=2"])
    run_acts(out, c)
    a = pd.read_parquet(out / "acts.parquet")
    filled = a.groupby("act")["rerank_score"].apply(lambda s: int(s.notna().sum())).to_dict()
    assert filled == {"advice": 1, "answer": 2, "correction": 1}  # at most rerank_top per act
    assert a["rerank_score"].dropna().between(-1.0001, 1.0001).all()
    # act_rank: the re-scored hits first, by cosine; then the rest by BM25 (ties by id)
    for act, g in a.groupby("act"):
        g = g.sort_values("act_rank")
        assert list(g["act_rank"]) == list(range(1, len(g) + 1))
        top = g[g["rerank_score"].notna()]
        assert list(top["rerank_score"]) == sorted(top["rerank_score"], reverse=True)
        assert list(g["rerank_score"].notna()) == sorted(g["rerank_score"].notna(), reverse=True)
