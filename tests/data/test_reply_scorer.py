"""Reply sentiment scored in a second process (data/reply_scorer.py).

Expected scores come from ``vaderSentiment`` itself (the reference the port copies), and
whole builds are compared against the same build scored in the reading process; the worker
is a real subprocess, killed for real where a test needs it to die.
"""

from __future__ import annotations

import io
import json
import math

import pandas as pd
import pytest
import zstandard
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from ambient_rlhf import AmbientError
from ambient_rlhf.config import load_config
from ambient_rlhf.data import reply_scorer
from ambient_rlhf.data.build import DataConfig, build
from ambient_rlhf.data.reply_scorer import ReplyScorer, read_scores, read_texts, write_scores, write_texts


@pytest.fixture(scope="module")
def replies(shared_data) -> list[str]:
    """The first 300 reply bodies (comments that answer a comment) of the real AskAcademia dump."""
    out = []
    p = shared_data / "reddit-askacademia" / "AskAcademia_comments.ndjson.zst"
    with open(p, "rb") as fh:
        for line in io.TextIOWrapper(zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh),
                                     encoding="utf-8"):
            o = json.loads(line)
            if str(o.get("parent_id", "")).startswith("t1_") and o.get("body"):
                out.append(o["body"])
                if len(out) == 300:
                    break
    assert len(out) == 300
    return out


@pytest.fixture(scope="module")
def reference():
    sia = SentimentIntensityAnalyzer()
    return lambda text: sia.polarity_scores(text)["compound"]


def test_frames_round_trip_texts_and_doubles_exactly():
    texts = ["", "plain", "ünïcödé 🙂 emoji", "lone surrogate \ud83d from a JSON escape", "x" * 70000]
    scores = [0.0, -0.0, 0.1 + 0.2, -1.0, 5e-324, 0.9999]
    buf = io.BytesIO()
    write_texts(buf, texts)
    write_texts(buf, [])
    write_texts(buf, None)
    write_scores(buf, scores)
    buf.seek(0)
    assert read_texts(buf) == texts
    assert read_texts(buf) == []
    assert read_texts(buf) is None
    got = read_scores(buf)
    assert [math.copysign(1, x) for x in got] == [1, -1, 1, -1, 1, 1]  # -0.0 kept
    assert got == scores
    with pytest.raises(EOFError):
        read_scores(buf)


def test_scores_from_the_worker_equal_vader_sentiment(replies, reference):
    want = [reference(t) for t in replies]
    with ReplyScorer(process=True, batch=32) as s:
        tickets = [s.add(t) for t in replies]
        assert s.mode == "process"
        got = [s.take(t) for t in tickets]
        assert s._results == {}  # every batch forgotten once all its tickets are taken
    assert got == want


def test_partial_batches_keep_tickets_straight(replies, reference):
    """take() on a ticket still in the unsent batch sends that batch early; tickets issued
    afterwards still map to their own texts (the inline scorer too)."""
    for process in (True, False):
        with ReplyScorer(process=process, batch=16) as s:
            t_first = [s.add(t) for t in replies[:40]]  # 2 full batches + 8 unsent
            assert not s.ready(t_first[-1])  # unsent: not ready, and asking does not wait
            assert s.take(t_first[-1]) == reference(replies[39])  # forces the partial batch
            t_rest = [s.add(t) for t in replies[40:100]]
            got = [s.take(t) for t in t_first[:-1] + t_rest]
        assert got == [reference(t) for t in replies[:39] + replies[40:100]], process


def test_ready_never_waits_and_drop_frees_memory(replies, reference):
    with ReplyScorer(process=True, batch=10) as s:
        tickets = [s.add(t) for t in replies[:100]]
        # dropped before their scores are back and after: neither waits, both are forgotten
        s.drop(tickets[:35])
        s.take(tickets[99])  # sends the last batch and waits for everything before it
        assert all(s.ready(t) for t in tickets)
        s.drop(tickets[35:50])
        got = [s.take(t) for t in tickets[50:99]]
        assert s._results == {} and s._dropped == {}
    assert got == [reference(t) for t in replies[50:99]]


def test_a_dead_worker_is_a_clear_error_not_a_hang(replies):
    s = ReplyScorer(process=True, batch=8)
    try:
        tickets = [s.add(t) for t in replies[:8]]  # one full batch: the worker starts
        s._proc.kill()
        s._proc.wait()
        with pytest.raises(AmbientError, match=r"scoring process ended early .*labels.sentiment_process=false"):
            for t in tickets + [s.add(t) for t in replies[8:40]]:
                s.take(t)
    finally:
        s.close()
    assert s._proc is None


def test_small_inputs_never_start_a_process(replies, reference):
    with ReplyScorer(process=True, batch=512) as s:
        tickets = [s.add(t) for t in replies[:20]]
        got = [s.take(t) for t in tickets]
        assert s.mode == "inline" and s._proc is None
    assert got == [reference(t) for t in replies[:20]]


def _build(src, out, overrides):
    build([str(src)], str(out), load_config(DataConfig, overrides=overrides))
    return pd.read_parquet(out / "responses.parquet")


@pytest.mark.parametrize("keep_damaged", [False, True])
def test_a_build_scored_beside_the_reader_is_the_same_build(shared_data, tmp_path, monkeypatch, keep_damaged):
    """The real dump, whole and (kept damaged) cut in half so that threads with replies in
    flight are dropped: the responses table, reply sentiment included, is the same byte for
    byte as scoring each reply in the reading process; small batches make the worker run
    behind the reader for most of the stream."""
    src = shared_data / "reddit-askacademia"
    if keep_damaged:
        d = tmp_path / "cut"
        d.mkdir()
        (d / "AskAcademia_submissions.ndjson.zst").write_bytes((src / "AskAcademia_submissions.ndjson.zst").read_bytes())
        z = (src / "AskAcademia_comments.ndjson.zst").read_bytes()
        (d / "AskAcademia_comments.ndjson.zst").write_bytes(z[: len(z) // 2])
        src = d
    base = ["source.keep_damaged=true"] if keep_damaged else []
    modes = []
    real_start = ReplyScorer._start

    def start(self):
        real_start(self)
        modes.append(self.mode)

    monkeypatch.setattr(ReplyScorer, "_start", start)  # records the mode; the worker is real
    monkeypatch.setattr(reply_scorer, "BATCH", 64)
    a = _build(src, tmp_path / "proc", base)
    b = _build(src, tmp_path / "inline", base + ["labels.sentiment_process=false"])
    assert modes == ["process"]
    assert a.reply_sentiment.notna().sum() > 1000
    if not keep_damaged:  # independently of the reader: responses whose every direct reply was used
        _check_against_vader_sentiment(a, shared_data / "reddit-askacademia")
    assert (tmp_path / "proc" / "responses.parquet").read_bytes() == (tmp_path / "inline" / "responses.parquet").read_bytes()
    assert a.equals(b)


def _check_against_vader_sentiment(resp: pd.DataFrame, dump) -> None:
    """For responses with n used replies and exactly n direct replies in the raw dump, the
    column must be the mean of ``vaderSentiment``'s compound over those replies."""
    sia = SentimentIntensityAnalyzer()
    direct: dict[str, list[str]] = {}
    with open(dump / "AskAcademia_comments.ndjson.zst", "rb") as fh:
        for line in io.TextIOWrapper(zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh),
                                     encoding="utf-8"):
            o = json.loads(line)
            if str(o.get("parent_id", "")).startswith("t1_"):
                direct.setdefault(o["parent_id"][3:], []).append(o.get("body") or "")
    checked = 0
    for rid, n, got in zip(resp.response_id, resp.num_replies, resp.reply_sentiment):
        bodies = direct.get(rid, [])
        if n >= 1 and len(bodies) == n:
            want = sum(sia.polarity_scores(b)["compound"] for b in bodies) / n
            assert got == pytest.approx(want, abs=1e-12), rid
            checked += 1
    assert checked > 1000
