"""End-to-end build on the hand-made dump of conftest.canonical_dump.

Expected counts, derived from the fixture:
  submissions: 7 read; s2 nsfw, s3 immature (1 day old at retrieval), s4 no_retrieved_on,
    s5 deleted_prompt ([removed] body); kept s1, s6, s7.
  comment records: 20 good lines + 3 malformed ones (bad JSON, score "many", no body).
    c14 -> thread_dropped (s2), c16 -> submission_absent (bad), 14 top-level in kept threads,
    4 replies.  Bad: 3 malformed + 1 absent = 4 of 30 records seen (7 + 23).
  responses of s1: c6 deleted_author, c7 deleted_text, c8 bot, c9 op_reply, c10 moderator;
    kept c1 c2 c3 c4 c5 c11 (6); s6 keeps 2, s7 keeps 1 -> too few (min 2).
  replies: r1 "great" and r2 "bad" to c1 -> used; r3 by c1's author -> self_reply;
    r4 replies to r1 -> not_to_kept_response.
  pairs of s1 (see test_data_pairs): 8 by the rule, 5 after the train cap, 5 low_score,
    1 time_rule, 1 tie; s6: 1 candidate, prompt score 5 < 10.
"""

import json
import os

import pandas as pd
import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.config import check_documented, load_config
from ambient_rlhf.data.build import DataConfig, build
from ambient_rlhf.data.schema import PAIR_COLUMNS, RANKING_COLUMNS, RESPONSE_COLUMNS

from data_fixtures import DAY, T0, com, sub, write_ndjson


def cfg(*overrides):
    return load_config(DataConfig, None, ["max_bad_fraction=0.2", "splits.train=1", "splits.valid=0",
                                          "splits.test=0", *overrides])


def test_every_config_field_is_documented():
    assert check_documented(DataConfig) == []


def test_canonical_dump_counts(dump_dir, tmp_path, real_plots):
    out = tmp_path / "out"
    m = build([str(dump_dir)], str(out), cfg())
    c = m["counts"]
    assert c["submissions"] == {"read": 7, "kept": 3, "nsfw": 1, "immature": 1, "no_retrieved_on": 1,
                                "deleted_prompt": 1}
    assert c["comments"] == {"read": 20, "thread_dropped": 1, "submission_absent": 1, "top_level": 14, "reply": 4}
    assert c["responses"] == {"deleted_author": 1, "deleted_text": 1, "bot": 1, "op_reply": 1,
                              "stickied_distinguished": 1, "assembled": 9, "in_too_small_thread": 1, "written": 8}
    assert c["replies"] == {"used": 2, "self_reply": 1, "not_to_kept_response": 1}
    assert c["threads"] == {"assembled": 3, "too_few_responses": 1, "kept": 2}
    assert c["pairs"] == {"candidates": 15, "tied": 1, "kept": 5, "low_prompt_score": 1, "low_score": 5,
                          "time_rule": 1, "cap": 3}
    assert c["pairs_per_split"] == {"train": 5}
    # the community the readers look up (community_name) and not the simulator's output
    assert m["community"] == "AskTest" and m["communities"] == {"AskTest": 3} and m["simulated"] is False
    b = m["bad_records"]
    assert b["total"] == 4 and b["records_seen"] == 30
    assert b["by_reason"] == {"malformed JSON": 1, "field 'score'": 1, "missing field 'body'": 1,
                              "submission absent": 1}
    assert any("AskTest_comments.ndjson:21: malformed JSON" in e for e in b["examples"])

    r = pd.read_parquet(out / "responses.parquet")
    assert set(RESPONSE_COLUMNS) <= set(r.columns)
    s1 = r[r.thread_id == "s1"].set_index("response_id")
    assert s1["rank"].to_dict() == {"c4": 4, "c1": 1, "c2": 3, "c3": 0, "c5": 1, "c11": 5}
    # mean VADER compound of "great" (0.6249) and "bad" (-0.5423)
    assert s1.loc["c1", "reply_sentiment"] == pytest.approx((0.6249 - 0.5423) / 2, abs=1e-4)
    assert s1["reply_sentiment"].isna().sum() == 5
    assert s1.loc["c1", "prompt"] == "Question s1?\n\nBody of s1."
    assert set(r.tier) <= {"good", "ok", "bad"}

    p = pd.read_parquet(out / "pairs.parquet")
    assert set(PAIR_COLUMNS) <= set(p.columns)
    got = sorted(zip(p.chosen_id, p.rejected_id))
    assert got == sorted([("c3", "c4"), ("c3", "c2"), ("c1", "c4"), ("c5", "c4"), ("c5", "c2")])
    assert (p.seconds_difference == p.chosen_created_utc - p.rejected_created_utc).all()
    assert p.score_ratio.tolist() == pytest.approx((p.chosen_score / p.rejected_score).tolist())

    k = pd.read_parquet(out / "rankings.parquet")
    assert set(RANKING_COLUMNS) <= set(k.columns) and len(k) == 2
    row = k[k.thread_id == "s1"].iloc[0]
    assert list(row.adjusted) == sorted(row.adjusted, reverse=True)
    assert (out / "report.md").read_text().startswith("# Data build report")
    assert json.loads((out / "manifest.json").read_text())["config"]["labels"]["time_rule"] is True
    assert sorted(m["files"]) == sorted(["responses.parquet", "pairs.parquet", "rankings.parquet", "report.md",
                                         "score_distribution.png", "responses_per_thread.png", "delay_vs_score.png",
                                         "tier_balance.png", "pairs_by_score_ratio.png"])
    assert all((out / f).stat().st_size > 0 for f in m["files"])


def test_valid_and_test_keep_all_pairs_and_time_rule_off(dump_dir, tmp_path):
    m = build([str(dump_dir)], str(tmp_path / "a"), cfg("splits.train=0", "splits.test=1"))
    assert m["counts"]["pairs_per_split"] == {"test": 8}
    m = build([str(dump_dir)], str(tmp_path / "b"), cfg("splits.train=0", "splits.test=1", "labels.time_rule=false"))
    assert m["counts"]["pairs_per_split"] == {"test": 9}  # + (c1, c2): c1 is earlier
    p = pd.read_parquet(tmp_path / "b" / "pairs.parquet")
    assert (p.seconds_difference < 0).sum() == 1


def test_too_many_bad_records_fail_without_output(dump_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(AmbientError, match=r"4 of 30 records are bad .*max-bad-fraction"):
        build([str(dump_dir)], str(out), load_config(DataConfig))
    assert not out.exists()
    assert [x for x in os.listdir(tmp_path) if x.startswith(".out")] == []  # no temp left behind


def test_zst_dump_with_truncated_comments(tmp_path):
    import zstandard

    d = tmp_path / "z"
    d.mkdir()
    subs = [sub(f"p{i}", created=T0 + i) for i in range(60)]
    coms = [com(f"c{i}_{j}", f"p{i}", 2 + j, 100 + 10 * j + i, f"u{j}", body=f"answer {i} {j} " + "w" * 200)
            for i in range(60) for j in range(4)]
    coms.sort(key=lambda c: c["created_utc"])
    write_ndjson(d / "T_submissions.ndjson.zst", subs, zst=True)
    z = zstandard.ZstdCompressor(level=1, write_content_size=False)
    data = ("\n".join(json.dumps(c) for c in coms) + "\n").encode()
    # two frames; the second is cut short: an error that names the file (rc 0 before)
    f2 = z.compress(data[len(data) // 2:])
    (d / "T_comments.ndjson.zst").write_bytes(z.compress(data[: len(data) // 2]) + f2[: len(f2) // 2])
    with pytest.raises(AmbientError, match="T_comments.ndjson.zst: truncated zstd stream"):
        build([str(d)], str(tmp_path / "out"), cfg())
    # kept on request: all 60 threads are open at the cut (answered within minutes, window
    # 183 days), so every one is dropped and nothing is left to build
    with pytest.raises(AmbientError, match="no thread survived"):
        build([str(d)], str(tmp_path / "out"), cfg("source.keep_damaged=true"))
    # the command line's --keep-damaged is the same key
    from ambient_rlhf.cli.data import cli

    with pytest.raises(AmbientError, match="truncated zstd stream"):
        cli(["build", str(d), "--out", str(tmp_path / "o2")])
    with pytest.raises(AmbientError, match="no thread survived"):
        cli(["build", str(d), "--out", str(tmp_path / "o2"), "--keep-damaged"])


def test_threads_close_after_the_window(tmp_path):
    # 30 threads, 10 days apart, each answered within an hour; window 5 days: at most one
    # thread is open at a time.  A comment 20 days after thread 0 arrives late.
    d = tmp_path / "w"
    d.mkdir()
    subs = [sub(f"q{i}", created=T0 + i * 10 * DAY, retrieved=T0 + 400 * DAY) for i in range(30)]
    coms = [com(f"a{i}_{j}", f"q{i}", 5 + j, i * 10 * DAY + 60 * (j + 1), f"u{j}", retrieved=T0 + 400 * DAY)
            for i in range(30) for j in range(3)]
    coms.insert(7, com("late", "q0", 5, 20 * DAY, "v", retrieved=T0 + 400 * DAY))
    write_ndjson(d / "W_submissions.ndjson", subs)
    write_ndjson(d / "W_comments.ndjson", coms)
    m = build([str(d)], str(tmp_path / "out"), cfg("source.window_days=5"))
    assert m["counts"]["memory"]["peak_open_threads"] == 1
    assert m["counts"]["comments"]["late"] == 1
    assert m["counts"]["threads"]["kept"] == 30
    m = build([str(d)], str(tmp_path / "out2"), cfg("source.window_days=0"))
    assert m["counts"]["memory"]["peak_open_threads"] == 30 and "late" not in m["counts"]["comments"]


def _table(tmp_path, rows, name="t.csv"):
    p = tmp_path / name
    df = pd.DataFrame(rows)
    if name.endswith(".csv"):
        df.to_csv(p, index=False)
    elif name.endswith(".parquet"):
        df.to_parquet(p, index=False)
    else:
        df.to_json(p, orient="records", lines=True)
    return p


def _rows():
    rows = []
    for t in range(3):
        for j, (score, dt) in enumerate([(10, 100), (2, 50), (4, 300)]):
            rows.append(dict(prompt_id=t, prompt=f"q{t}", prompt_score=20, prompt_created_utc=T0,
                             response_id=f"{t}-{j}", response=f"a{t}{j}", response_score=score,
                             response_created_utc=T0 + dt, response_children=json.dumps(["great"] if j == 0 else [])))
    return rows


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl", "t.parquet"])
def test_table_formats_agree(tmp_path, name):
    p = _table(tmp_path, _rows(), name)
    m = build([str(p)], str(tmp_path / "out"), cfg("filters.allow_missing_retrieved_on=true"))
    c = m["counts"]
    assert c["threads"]["kept"] == 3 and c["responses"]["written"] == 9
    # per thread: (10@100 vs 2@50) pair, (4@300 vs 2@50) pair, (10 vs 4) fails the time rule
    assert c["pairs"]["kept"] == 6 and c["pairs"]["time_rule"] == 3
    r = pd.read_parquet(tmp_path / "out" / "responses.parquet")
    assert r.loc[r.response_id == "0-0", "reply_sentiment"].item() == pytest.approx(0.6249, abs=1e-4)


def test_table_column_mapping_and_missing_columns(tmp_path):
    rows = [{("question" if k == "prompt" else k): v for k, v in r.items()} for r in _rows()]
    p = _table(tmp_path, rows)
    with pytest.raises(AmbientError, match=r"missing columns prompt \(column 'prompt'\).*source.columns"):
        build([str(p)], str(tmp_path / "o1"), cfg("filters.allow_missing_retrieved_on=true"))
    m = build([str(p)], str(tmp_path / "o2"), cfg("filters.allow_missing_retrieved_on=true",
                                                   "source.columns.prompt=question"))
    assert m["counts"]["threads"]["kept"] == 3


def test_table_rows_not_grouped_are_bad(tmp_path):
    rows = _rows()
    rows.append(dict(rows[0], response_id="0-9"))  # thread 0 again, after thread 2
    p = _table(tmp_path, rows)
    m = build([str(p)], str(tmp_path / "out"), cfg("filters.allow_missing_retrieved_on=true"))
    assert m["bad_records"]["by_reason"] == {"rows not grouped by prompt_id": 1}


def test_table_without_retrieval_time_needs_permission(tmp_path):
    p = _table(tmp_path, _rows())
    with pytest.raises(AmbientError, match="no thread survived.*allow_missing_retrieved_on=true"):
        build([str(p)], str(tmp_path / "out"), cfg())


def test_shp_file(tmp_path):
    rows = []
    # post p1: A (score 10 @ 200) preferred to B (score 3 @ 100); ratio 3.33, later: passes
    rows.append(dict(post_id="p1", domain="askx", history="Q?", c_root_id_A="a", c_root_id_B="b",
                     created_at_utc_A=200, created_at_utc_B=100, score_A=10, score_B=3, human_ref_A="A",
                     human_ref_B="B", labels=1, seconds_difference=100, score_ratio=10 / 3))
    # same post: C (12 @ 300) vs A, labels=0 -> A preferred... but 10 < 12: breaks our rule
    rows.append(dict(post_id="p1", domain="askx", history="Q?", c_root_id_A="c", c_root_id_B="a",
                     created_at_utc_A=300, created_at_utc_B=200, score_A=12, score_B=10, human_ref_A="C",
                     human_ref_B="A", labels=0, seconds_difference=100, score_ratio=1.2))
    p = tmp_path / "askx_train.json"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    m = build([str(p)], str(tmp_path / "out"), cfg("filters.allow_missing_retrieved_on=true"))
    c = m["counts"]
    assert c["responses"]["written"] == 3 and c["pairs"]["kept"] == 1 and c["pairs"]["given_but_break_rule"] == 1
    pr = pd.read_parquet(tmp_path / "out" / "pairs.parquet")
    assert pr[["chosen", "rejected"]].values.tolist() == [["A", "B"]]
    assert pd.read_parquet(tmp_path / "out" / "responses.parquet").prompt_score.isna().all()
