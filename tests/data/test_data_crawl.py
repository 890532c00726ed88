"""`ambient data crawl`: PRAW against a Reddit API served on 127.0.0.1 (tests/data/reddit_api.py).

The server speaks the API's JSON (OAuth token, listings, search, comment pages,
api/morechildren); PRAW reaches it through its oauth_url / reddit_url settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("praw")

import zstandard  # noqa: E402
from reddit_api import RedditAPI, b36  # noqa: E402

from ambient_rlhf import AmbientError  # noqa: E402
from ambient_rlhf.config import ConfigError, check_documented, load_config  # noqa: E402
from ambient_rlhf.data.crawl import CrawlConfig, crawl  # noqa: E402
from ambient_rlhf.data.crawl_store import JOURNAL  # noqa: E402

DAY = 86400.0
NOW = 1_790_000_000.0  # the server's "now" (time filters) and the crawler's clock in these tests
SECRET = "sekrit-123"
FAST = dict(backoff_base=0.01, search_queries=[])


def settings(url):
    return dict(client_id="cid", client_secret=SECRET, oauth_url=url, reddit_url=url, user_agent="test by u/t")


@pytest.fixture
def api():
    a = RedditAPI(now=NOW)
    yield a
    a.stop()


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), read_across_frames=True).read()
    return [json.loads(x) for x in data.splitlines()]


def without_retrieved(recs):
    return [{k: v for k, v in r.items() if k != "retrieved_on"} for r in recs]


def small_world(api: RedditAPI, sub: str = "askx", n: int = 4, wide: int = 0) -> None:
    """``n`` threads 30+ days old, an hour apart; thread i has 3 top-level answers (+ ``wide``
    more on the last), each with a reply and a reply to the reply (depth 3: behind "continue this thread")."""
    for i in range(n):
        sid = b36(5000 + i)
        t0 = NOW - 30 * DAY + i * 3600
        api.add_submission(sub, sid, t0, 20 + i, f"question {i}?", selftext=f"body {i}", author=f"op{i}")
        for j in range(3 + (wide if i == n - 1 else 0)):
            c = api.add_comment(sid, f"{sid}a{j}", "t3_" + sid, t0 + 60 * (j + 1), 2 + 3 * j, f"answer {j} to {i}",
                                author=f"u{j}")
            r = api.add_comment(sid, f"{sid}r{j}", c["name"], t0 + 60 * (j + 1) + 7, 1, "great answer, thanks",
                                author=f"v{j}")
            api.add_comment(sid, f"{sid}d{j}", r["name"], t0 + 60 * (j + 1) + 9, 1, "agreed", author=f"w{j}")


def test_config_is_documented_and_checked():
    assert check_documented(CrawlConfig) == []
    with pytest.raises(ConfigError, match="config key 'listings': unknown listing 'top:decade'"):
        load_config(CrawlConfig, None, ["listings=new,top:decade"])
    with pytest.raises(ConfigError, match="config key 'search_windows': unknown time filter 'fortnight'"):
        load_config(CrawlConfig, None, ["search_windows=fortnight"])
    with pytest.raises(ConfigError, match="config key 'mature_days'"):
        load_config(CrawlConfig, None, ["mature_days=-1"])
    assert load_config(CrawlConfig, None, ["search_queries="]).search_queries == []


def test_cli_usage_errors(tmp_path, capsys, monkeypatch):
    from ambient_rlhf.cli import main

    assert main(["data", "crawl", "--help-config"]) == 0
    assert "mature_days" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "crawl", "askx"])
    assert "--out DIR is required" in capsys.readouterr().err
    for k in ("praw_client_id", "praw_client_secret"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)  # no praw.ini here
    assert main(["data", "crawl", "askx", "--out", str(tmp_path / "c")]) != 0
    assert "praw_client_id" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing written before the credentials are known


def test_credentials_from_the_environment(api, tmp_path, monkeypatch):
    small_world(api, n=1)
    url = api.start()
    # only the endpoints are passed; the app's id and secret come from the environment
    # variables PRAW reads (praw.ini is read once per process, so the command-line test
    # below covers it)
    monkeypatch.setenv("praw_client_id", "cid")
    monkeypatch.setenv("praw_client_secret", SECRET)
    s = crawl(["askx"], tmp_path / "c", CrawlConfig(listings=["new"], **FAST),
              settings=dict(oauth_url=url, reddit_url=url), clock=lambda: NOW)
    assert s["written"] == 1 and api.tokens_issued == 1


def test_comment_lines_put_parents_first_even_in_the_same_second():
    from types import SimpleNamespace

    from ambient_rlhf.data.crawl import comment_records

    def c(cid, parent, t, author="a"):
        return SimpleNamespace(id=cid, name="t1_" + cid, link_id="t3_s", parent_id=parent, body="x",
                               created_utc=t, score=1, author=author)

    # Reddit's times are whole seconds: "a" and its reply "0b" (an id that sorts first) share
    # one, and so do the reply "0c" to "0b"; a later answer "z" and an author-less (deleted) one
    got = comment_records([c("0c", "t1_0b", 100.0), c("z", "t3_s", 101.0), c("0b", "t1_a", 100.0),
                           c("a", "t3_s", 100.0), c("d", "t3_s", 99.0, author=None)], retrieved=7)
    assert [r["id"] for r in got] == ["d", "a", "0b", "0c", "z"]
    assert got[0]["author"] == "[deleted]" and {r["retrieved_on"] for r in got} == {7}


def test_pagination_past_the_listing_cap_and_young_threads_wait(api, tmp_path):
    # 1,200 posts, one per hour; older posts score higher. /new stops at the newest 1,000
    # (ages 0..999 h) and top:all at the 1,000 best (ages 200..1199 h): only both reach all.
    for i in range(1200):
        api.add_submission("big", b36(100_000 + i), NOW - i * 3600, i, f"t{i}")
    url = api.start()
    mature = 1190 / 24  # days: only the posts 1190..1199 h old are due
    cfg = CrawlConfig(listings=["new", "top:all"], mature_days=mature, **FAST)
    s = crawl(["big"], tmp_path / "c", cfg, settings(url), clock=lambda: NOW)
    assert s["found"] == 1200 and s["written"] == 10 and s["waiting_to_mature"] == 1190
    news = [e for e in api.log if e[2] == "/r/big/new"]
    assert len(news) == 10  # 10 pages of 100, then no cursor: the cap
    subs = records(tmp_path / "c" / "big_submissions.ndjson.zst")
    assert [r["id"] for r in subs] == [b36(100_000 + i) for i in range(1199, 1189, -1)]  # oldest first
    # /new alone finds exactly the 1,000 newest
    s2 = crawl(["big"], tmp_path / "n", CrawlConfig(listings=["new"], mature_days=1e4, **FAST), settings(url),
               clock=lambda: NOW)
    assert s2["found"] == 1000 and s2["written"] == 0


def test_search_slices_reach_past_the_listing(tmp_path):
    api = RedditAPI(now=NOW, cap=2, search_cap=2)
    # id: (age in hours, self post?, score)
    world = {"s0": (1, True, 1), "s1": (2, False, 2), "s2": (3, True, 3), "s3": (4, False, 4),
             "s4": (30, True, 50), "s5": (31, False, 60), "s6": (200, True, 5), "s7": (201, False, 7),
             "s8": (2000, True, 100), "s9": (2001, False, 1)}
    for sid, (age, is_self, score) in world.items():
        api.add_submission("sx", sid, NOW - age * 3600, score, sid, is_self=is_self)
    url = api.start()
    try:
        cfg = CrawlConfig(listings=["new"], search_queries=["self:yes", "self:no"], search_sorts=["new", "top"],
                          search_windows=["day", "week", "all"], mature_days=1e4, page_size=1, backoff_base=0.01)
        crawl(["sx"], tmp_path / "c", cfg, settings(url), clock=lambda: NOW)
    finally:
        api.stop()
    found = set()
    for line in (tmp_path / "c" / JOURNAL).read_text().splitlines():
        e = json.loads(line)
        found |= {x[0] for x in e.get("items", [])}
    # by hand, two items per source: new -> s0 s1; self:yes new (any window) -> s0 s2;
    # self:yes top day -> s2 s0, week -> s4 s2, all -> s8 s4; self:no new -> s1 s3;
    # self:no top day -> s3 s1, week -> s5 s3, all -> s5 s7.  s6 and s9 are out of reach.
    assert found == {"s0", "s1", "s2", "s3", "s4", "s5", "s7", "s8"}
    searches = [e for e in api.log if e[2] == "/r/sx/search"]
    assert len(searches) == 2 * 2 * 3 * 2  # 12 searches, 2 pages of 1 each


def test_whole_comment_trees(api, tmp_path):
    # thread 1: 123 answers; 5 shown, the other 118 with their reply and reply-to-reply
    # (354 ids) hidden behind "more": api/morechildren gives 100 a call, so 4 calls
    small_world(api, n=2, wide=120)
    api.inline, api.depth = 5, 2  # replies to replies sit behind "continue this thread"
    url = api.start()
    crawl(["askx"], tmp_path / "c", CrawlConfig(listings=["new"], **FAST), settings(url), clock=lambda: NOW)
    got = records(tmp_path / "c" / "askx_comments.ndjson.zst")
    want = {c["id"]: c for cs in api.comments.values() for c in cs}
    assert len(got) == len(want) == 3 * 123 + 3 * 3
    for r in got:
        w = want[r["id"]]
        assert (r["parent_id"], r["link_id"], r["body"], r["score"], r["author"], r["created_utc"]) == \
               (w["parent_id"], w["link_id"], w["body"], w["score"], w["author"], w["created_utc"])
        assert r["retrieved_on"] == int(NOW)
    seen = set()
    for r in got:  # every reply comes after its parent (the build's reader needs it)
        assert r["parent_id"].startswith("t3_") or r["parent_id"][3:] in seen
        seen.add(r["id"])
    assert sum(1 for e in api.log if e[2] == "/api/morechildren") == 4
    assert any(e[2].startswith("/comments/") and "/_/" in e[2] for e in api.log)


def test_retries_on_429_5xx_and_cut_bodies(api, tmp_path):
    small_world(api, n=3, wide=4)
    url = api.start()
    cfg = CrawlConfig(listings=["new"], **FAST)
    crawl(["askx"], tmp_path / "clean", cfg, settings(url), clock=lambda: NOW)
    api.log.clear()
    api.fail("/api/v1/access_token", "503")
    api.fail("/r/askx/new", "429")  # Retry-After: 1
    api.fail("/comments/", "500")
    api.fail("/comments/", "cut")  # connection closed before Content-Length
    api.fail("/comments/", "badjson")  # length fixed up, JSON cut
    api.fail("/api/morechildren", "503")
    api.fail("/comments/", "ratelimit0")  # a good answer: 0 requests left, reset in 1 s
    s = crawl(["askx"], tmp_path / "c", cfg, settings(url), clock=lambda: NOW)
    assert s["retries"] == {"503": 2, "429": 1, "500": 1, "connection (ChunkedEncodingError)": 1,
                            "cut JSON body": 1}
    for name in ("askx_submissions.ndjson.zst", "askx_comments.ndjson.zst"):
        assert records(tmp_path / "c" / name) == records(tmp_path / "clean" / name)
    log = api.log
    i = next(k for k, e in enumerate(log) if e[3] == 429)
    assert log[i + 1][0] - log[i][0] >= 0.95  # waited Retry-After (1 s), not the backoff (0.01 s)
    # prawcore honours the rate-limit headers: after "0 left, reset in 1 s" the next request waits
    j = next(k for k, e in enumerate(log) if k > i and e[2].startswith("/comments/") and e[3] == 200
             and k + 1 < len(log) and log[k + 1][0] - e[0] >= 0.95)
    assert j > i


def test_gives_up_with_a_clear_error_then_resumes(api, tmp_path):
    small_world(api, n=3)
    url = api.start()
    cfg = CrawlConfig(listings=["new"], max_retries=2, **FAST)
    api.fail("/comments/", "503", times=3)
    with pytest.raises(AmbientError, match=r"GET /comments/.*still failing after 2 retries \(last: 503\).*rerun"):
        crawl(["askx"], tmp_path / "c", cfg, settings(url), clock=lambda: NOW)
    s = crawl(["askx"], tmp_path / "c", cfg, settings(url), clock=lambda: NOW)
    assert s["written"] == 3 and s["runs"] == 1  # the same run, finished
    assert len(records(tmp_path / "c" / "askx_submissions.ndjson.zst")) == 3
    with pytest.raises(AmbientError, match="refused the app's credentials"):
        crawl(["askx"], tmp_path / "d", cfg, dict(settings(url), client_secret="wrong"), clock=lambda: NOW)


def test_a_thread_gone_before_its_fetch_is_recorded_and_skipped(api, tmp_path):
    small_world(api, n=3)
    url = api.start()
    api.fail(f"/comments/{b36(5001)}", "404")
    s = crawl(["askx"], tmp_path / "c", CrawlConfig(listings=["new"], **FAST), settings(url), clock=lambda: NOW)
    assert (s["written"], s["gone"]) == (2, 1)
    assert [r["id"] for r in records(tmp_path / "c" / "askx_submissions.ndjson.zst")] == [b36(5000), b36(5002)]
    s = crawl(["askx"], tmp_path / "c", CrawlConfig(listings=["new"], **FAST), settings(url), clock=lambda: NOW)
    assert (s["written"], s["gone"], s["runs"]) == (2, 1, 2)  # not tried again
    with pytest.raises(AmbientError, match="r/nosuch: NotFound on r/nosuch/new: no such subreddit"):
        crawl(["nosuch"], tmp_path / "d", CrawlConfig(listings=["new"], **FAST), settings(url), clock=lambda: NOW)


def test_torn_frame_and_torn_journal_line_are_cut_back(api, tmp_path):
    small_world(api, n=2)
    url = api.start()
    cfg = CrawlConfig(listings=["new"], **FAST)
    out = tmp_path / "c"
    crawl(["askx"], out, cfg, settings(url), clock=lambda: NOW)
    subs, coms = out / "askx_submissions.ndjson.zst", out / "askx_comments.ndjson.zst"
    before = (subs.read_bytes(), coms.read_bytes(), (out / JOURNAL).read_bytes())
    # what a kill leaves: half a frame on each file, half a journal line
    frame = zstandard.ZstdCompressor().compress(b'{"id": "zz"}\n' * 50)
    for p in (subs, coms):
        with open(p, "ab") as f:
            f.write(frame[: len(frame) // 2])
    with open(out / JOURNAL, "ab") as f:
        f.write(b'{"ev":"thread","id":"zz","sub":"as')
    s = crawl(["askx"], out, cfg, settings(url), clock=lambda: NOW)
    assert s["written"] == 2 and s["runs"] == 2
    assert subs.read_bytes() == before[0] and coms.read_bytes() == before[1]
    assert (out / JOURNAL).read_bytes().startswith(before[2])
    # a file shorter than the journal says is not repaired silently
    coms.write_bytes(before[1][:10])
    with pytest.raises(AmbientError, match="askx_comments.ndjson.zst: 10 bytes, but the crawl journal"):
        crawl(["askx"], out, cfg, settings(url), clock=lambda: NOW)


def test_young_threads_are_fetched_by_a_later_run_and_build_like_a_dump(api, tmp_path):
    from ambient_rlhf.data.build import DataConfig, build

    small_world(api, n=4)
    # one more thread, 2 days old at NOW: fetched only by the run 8 days later
    sid = "young1"
    api.add_submission("askx", sid, NOW - 2 * DAY, 30, "a young question?", selftext="body", author="opy")
    for j in range(3):
        c = api.add_comment(sid, f"ya{j}", "t3_" + sid, NOW - 2 * DAY + 60 * (j + 1), 2 + 5 * j, f"young {j}")
        api.add_comment(sid, f"yr{j}", c["name"], NOW - 2 * DAY + 60 * (j + 1) + 5, 1, "thanks a lot")
    url = api.start()
    cfg = CrawlConfig(listings=["new"], **FAST)
    out = tmp_path / "crawl"
    s1 = crawl(["askx"], out, cfg, settings(url), clock=lambda: NOW)
    assert (s1["written"], s1["waiting_to_mature"]) == (4, 1)
    later = NOW + 8 * DAY
    s2 = crawl(["askx"], out, cfg, settings(url), clock=lambda: later)
    assert (s2["written"], s2["waiting_to_mature"], s2["runs"]) == (5, 0, 2)
    assert records(out / "askx_submissions.ndjson.zst")[-1]["retrieved_on"] == int(later)
    # the same threads as a Pushshift dump, written from the server's world (sorted by time)
    dump = tmp_path / "dump"
    dump.mkdir()
    subs = sorted(api.subs["askx"], key=lambda r: r["created_utc"])
    retrieved = {s["id"]: int(NOW) if s["id"] != sid else int(later) for s in subs}
    with open(dump / "askx_submissions.ndjson", "w") as f:
        for r in subs:
            f.write(json.dumps(dict(r, retrieved_on=retrieved[r["id"]])) + "\n")
    coms = sorted((c for cs in api.comments.values() for c in cs), key=lambda c: c["created_utc"])
    with open(dump / "askx_comments.ndjson", "w") as f:
        for c in coms:
            f.write(json.dumps(dict(c, retrieved_on=retrieved[c["link_id"][3:]])) + "\n")
    dcfg = DataConfig()
    m1 = build([str(out)], tmp_path / "d1", dcfg)
    m2 = build([str(dump)], tmp_path / "d2", dcfg)
    assert m1["counts"]["submissions"].get("immature", 0) == 0
    assert m1["counts"]["pairs_per_split"] == m2["counts"]["pairs_per_split"]
    assert sum(m1["counts"]["pairs_per_split"].values()) > 0
    import pandas as pd

    for name in ("pairs.parquet", "responses.parquet"):
        a = pd.read_parquet(tmp_path / "d1" / name)
        b = pd.read_parquet(tmp_path / "d2" / name)
        cols = [c for c in a.columns if c != "source"]
        a, b = (x[cols].sort_values(list(cols[:3])).reset_index(drop=True) for x in (a, b))
        pd.testing.assert_frame_equal(a, b)


def test_resume_from_a_kill_after_every_journal_line(api, tmp_path):
    # A kill between two journal lines leaves the journal's first k lines and dump files that
    # may already hold frames the journal does not commit.  For every k: the full files with
    # the first k lines (the most uncommitted bytes possible), plus a torn half of line k+1.
    small_world(api, n=4)
    url = api.start()
    cfg = CrawlConfig(listings=["new"], page_size=2, **FAST)
    ref = tmp_path / "ref"
    crawl(["askx"], ref, cfg, settings(url), clock=lambda: NOW)
    names = ("askx_submissions.ndjson.zst", "askx_comments.ndjson.zst")
    full = {n: (ref / n).read_bytes() for n in names}
    lines = (ref / JOURNAL).read_bytes().split(b"\n")[:-1]
    kinds = [json.loads(x)["ev"] for x in lines]
    assert kinds == ["run", "found", "page", "found", "page", "src_done", "sweep_done"] + ["thread"] * 4 + ["run_done"]
    for k in range(1, len(lines)):
        out = tmp_path / f"k{k}"
        out.mkdir()
        for n in names:
            (out / n).write_bytes(full[n])
        (out / JOURNAL).write_bytes(b"".join(x + b"\n" for x in lines[:k]) + lines[k][: len(lines[k]) // 2])
        api.log.clear()
        s = crawl(["askx"], out, cfg, settings(url), clock=lambda: NOW)
        assert (s["written"], s["runs"]) == (4, 1)
        for n in names:
            assert (out / n).read_bytes() == full[n], (k, n)
        committed = kinds[:k].count("thread")
        assert sum(e[2].startswith("/comments/") for e in api.log) == 4 - committed  # none fetched twice
        pages_done = kinds[:k].count("page")
        last_done = "src_done" in kinds[:k] or pages_done == 2
        assert sum(e[2] == "/r/askx/new" for e in api.log) == (0 if last_done else 2 - pages_done)


def test_an_old_thread_found_by_a_later_run_is_counted_out_of_order(api, tmp_path):
    from ambient_rlhf.data.build import DataConfig, build

    small_world(api, n=2)  # threads 30 days old
    url = api.start()
    cfg = CrawlConfig(listings=["new"], **FAST)
    out = tmp_path / "c"
    assert crawl(["askx"], out, cfg, settings(url), clock=lambda: NOW)["out_of_order"] == 0
    # a thread 400 days old shows up later: the files already hold comments 370 days newer
    # than it, more than the build's 183-day window
    api.add_submission("askx", "old1", NOW - 400 * DAY, 50, "an old question?", selftext="b", author="opo")
    for j in range(2):
        api.add_comment("old1", f"oa{j}", "t3_old1", NOW - 400 * DAY + 60 * (j + 1), 2 + 3 * j, f"old answer {j}")
    s = crawl(["askx"], out, cfg, settings(url), clock=lambda: NOW)
    assert (s["written"], s["out_of_order"]) == (3, 1)
    late = build([str(out)], tmp_path / "d1", DataConfig())["counts"]["comments"]["late"]
    assert late == 2  # its two answers, as the warning says
    whole = build([str(out)], tmp_path / "d2", load_config(DataConfig, None, ["source.window_days=0"]))
    whole = whole["counts"]["comments"]
    assert whole.get("late", 0) == 0 and whole["top_level"] == 2 * 3 + 2


PRAW_INI = """[crawltest]
client_id = cid
client_secret = {secret}
oauth_url = {url}
reddit_url = {url}
user_agent = ambient-rlhf tests by u/tester
"""


def crawl_command(tmp_path, url, out, args):
    """The `ambient data crawl` command line, run in a directory whose praw.ini points at ``url``."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "praw.ini").write_text(PRAW_INI.format(secret=SECRET, url=url))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"), AMBIENT_PROGRESS="0",
               PRAW_ALLOW_ENDPOINT_OVERRIDE="1")
    env.pop("praw_client_secret", None)
    cmd = [sys.executable, "-m", "ambient_rlhf.cli", "data", "crawl", "askx", "--out", str(out), "--site",
           "crawltest", "-vv", *args]
    return cmd, dict(cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_records(api, tmp_path):
    small_world(api, n=6, wide=110)  # the last thread needs 4 api/morechildren calls
    api.depth = 2  # every answer's reply-to-reply sits behind "continue this thread"
    url = api.start()
    args = ["listings=new", "search_queries=", "backoff_base=0.01", "page_size=2"]
    ref = tmp_path / "ref"
    crawl(["askx"], ref, CrawlConfig(listings=["new"], page_size=2, **FAST), settings(url))
    out = tmp_path / "c"
    cmd, popen = crawl_command(tmp_path, url, out, args)
    sid = [b36(5000 + i) for i in range(6)]  # threads are fetched in this order (oldest first)
    # (kill on the k-th request whose path starts with P, threads committed by then):
    # the 2nd listing page (sweep unfinished); thread 2's page (0 and 1 done); thread 3's
    # first "continue this thread" (2 done, 3 half-read); the 2nd morechildren of thread 5.
    plan = [("/r/askx/new", 2, 0), (f"/comments/{sid[2]}", 1, 2), (f"/comments/{sid[3]}/_/", 1, 3),
            ("/api/morechildren", 2, 5), (None, 0, 6)]
    outputs = []
    for prefix, k, committed in plan:
        seen = [0]
        proc = subprocess.Popen(cmd, **popen)

        def on_request(path, prefix=prefix, k=k, seen=seen, proc=proc):
            if prefix is not None and path.startswith(prefix):
                seen[0] += 1
                if seen[0] == k:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return True
            return False

        api.on_request = on_request
        o, e = proc.communicate(timeout=120)
        outputs.append(o + e)
        assert proc.returncode == (0 if prefix is None else -signal.SIGKILL), o + e
        events = [json.loads(x) for x in (out / JOURNAL).read_text().splitlines()]
        assert sum(ev["ev"] == "thread" for ev in events) == committed
    api.on_request = None
    assert sum(ev["ev"] == "page" for ev in events) == 3  # 6 threads, 2 a page; the killed page redone
    for name in ("askx_submissions.ndjson.zst", "askx_comments.ndjson.zst"):
        got, want = records(out / name), records(ref / name)
        assert len(got) == len(want) > 0
        assert without_retrieved(got) == without_retrieved(want)
    assert "crawled into" in outputs[-1] and "ambient data build" in outputs[-1]
    # credentials never reach the output, the logs (-vv) or the crawl directory
    for text in outputs + [p.read_bytes().decode("utf-8", "replace") for p in out.iterdir()]:
        assert SECRET not in text


def test_kill_9_at_arbitrary_times_then_resume(api, tmp_path):
    # kills by the clock rather than at a request: they also land while frames are written
    # and fsync'ed, between a frame and its journal line, inside the journal write (measured
    # while writing this test: 4 of 8 kills left frames not yet in the journal)
    for i in range(40):
        sid = b36(9000 + i)
        t0 = NOW - 30 * DAY + i * 60
        api.add_submission("askx", sid, t0, 20, f"q{i}?")
        for j in range(2):
            api.add_comment(sid, f"{sid}a{j}", "t3_" + sid, t0 + j + 1, 2 + 3 * j, f"a{j}")
    url = api.start()
    ref = tmp_path / "ref"
    crawl(["askx"], ref, CrawlConfig(listings=["new"], page_size=5, **FAST), settings(url))
    out = tmp_path / "c"
    cmd, popen = crawl_command(tmp_path, url, out, ["listings=new", "search_queries=", "page_size=5"])
    kills = 0
    journal = out / JOURNAL
    for attempt in range(5):
        proc = subprocess.Popen(cmd, **popen)
        before = journal.read_bytes().count(b'"ev":"thread"') if journal.exists() else 0
        deadline = time.monotonic() + 60
        # once this run has committed a thread, kill it after a varying extra delay
        while proc.poll() is None and time.monotonic() < deadline:
            if journal.exists() and journal.read_bytes().count(b'"ev":"thread"') > before:
                time.sleep(0.007 * attempt)
                break
            time.sleep(0.001)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        if proc.returncode == 0:
            break
        kills += 1
    else:
        assert subprocess.run(cmd, **popen, timeout=120).returncode == 0
    assert kills >= 3
    for name in ("askx_submissions.ndjson.zst", "askx_comments.ndjson.zst"):
        got, want = records(out / name), records(ref / name)
        assert without_retrieved(got) == without_retrieved(want) and len(want) > 0
