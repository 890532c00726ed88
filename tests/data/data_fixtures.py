"""Helpers for the data-stage tests: small dumps written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path


T0 = 1_600_000_000
DAY = 86400
RET = T0 + 30 * DAY  # retrieved 30 days after the threads: mature


def sub(id, score=50, author="op1", created=T0, retrieved=RET, **kw):
    d = {"id": id, "name": f"t3_{id}", "title": f"Question {id}?", "selftext": f"Body of {id}.",
         "author": author, "subreddit": "AskTest", "created_utc": created, "score": score,
         "over_18": False, "stickied": False}
    if retrieved is not None:
        d["retrieved_on"] = retrieved
    d.update(kw)
    return d


def com(id, link, score, dt, author, body=None, parent=None, retrieved=RET, **kw):
    d = {"id": id, "name": f"t1_{id}", "author": author, "body": body if body is not None else f"answer {id}",
         "created_utc": T0 + dt, "score": score, "link_id": f"t3_{link}",
         "parent_id": parent or f"t3_{link}", "subreddit": "AskTest", "stickied": False,
         "distinguished": None, "retrieved_on": retrieved}
    d.update(kw)
    return d


def canonical_dump():
    """The hand-built dump the expectations in test_data_build.py are derived from."""
    subs = [
        sub("s1", score=50),
        sub("s2", over_18=True),
        sub("s3", retrieved=T0 + DAY),  # 1 day old at retrieval: immature
        sub("s4", retrieved=None),  # no retrieved_on
        sub("s5", selftext="[removed]"),
        sub("s6", score=5),  # kept, but below the pair prompt-score threshold (10)
        sub("s7"),  # gets a single response -> too few
    ]
    coms = [
        com("c4", "s1", 2, 50, "d"),
        com("c1", "s1", 10, 100, "a"),
        com("c12", "s6", 2, 100, "f"),
        com("c2", "s1", 4, 200, "b"),
        com("c13", "s6", 8, 200, "g"),
        com("c3", "s1", 20, 300, "c"),
        com("c5", "s1", 10, 300, "e"),
        com("c6", "s1", 30, 310, "[deleted]"),
        com("c7", "s1", 30, 320, "h", body="[removed]"),
        com("c8", "s1", 30, 330, "AutoModerator"),
        com("c9", "s1", 30, 340, "op1"),
        com("c10", "s1", 30, 350, "modguy", distinguished="moderator"),
        com("c11", "s1", 1, 400, "i"),
        com("r1", "s1", 3, 500, "x", body="great", parent="t1_c1"),
        com("r2", "s1", 3, 510, "y", body="bad", parent="t1_c1"),
        com("r3", "s1", 3, 520, "a", body="great", parent="t1_c1"),  # self reply
        com("r4", "s1", 3, 530, "z", body="great", parent="t1_r1"),  # nested
        com("c14", "s2", 5, 600, "j"),  # thread dropped (nsfw)
        com("c15", "s7", 5, 700, "k"),
        com("c16", "zzz", 5, 800, "l"),  # submission absent: bad
    ]
    return subs, coms


def write_ndjson(path: Path, records, extra_lines=(), zst=False):
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    if zst:
        import zstandard

        data = zstandard.ZstdCompressor(level=3).compress(data)
    path.write_bytes(data)
    return path
