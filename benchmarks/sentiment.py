"""Reply sentiment: ``ambient_rlhf.data.vader`` against ``vaderSentiment`` itself, same run.

    python benchmarks/sentiment.py [--data ../shared/data/reddit-askacademia] [--repeat 3]

Scores the direct replies to top-level comments of a Pushshift-format dump (the replies
the build's reply sentiment reads) with ``vaderSentiment``'s
``SentimentIntensityAnalyzer.polarity_scores(text)["compound"]`` (the peer) and with
:func:`ambient_rlhf.data.vader.compound`, alternating, best of ``--repeat`` CPU times each;
prints microseconds per reply, the speed ratio, and how many scores are the same float.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

from bench_env import describe, result

HERE = Path(__file__).resolve()
DEFAULT_DATA = HERE.parents[2] / "shared" / "data" / "reddit-askacademia"


def direct_replies(d: Path) -> list[str]:
    import zstandard

    coms = sorted(d.glob("*_comments*"))
    if not coms:
        sys.exit(f"error: {d}: expected a *_comments file")
    top, out = set(), []
    with open(coms[0], "rb") as fh:
        stream = zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh) \
            if coms[0].suffix == ".zst" else fh
        for line in io.BufferedReader(stream):
            if not line.strip():
                continue
            o = json.loads(line)
            if o.get("parent_id") == o.get("link_id"):
                top.add(o.get("name") or "t1_" + str(o.get("id")))
            elif o.get("parent_id") in top and isinstance(o.get("body"), str):
                out.append(o["body"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a Pushshift-format dump directory")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (best is reported)")
    a = ap.parse_args()
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from ambient_rlhf.data.vader import analyser

    texts = direct_replies(Path(a.data))
    sia, ours = SentimentIntensityAnalyzer(), analyser()
    print(describe())
    best = {"vaderSentiment": float("inf"), "ambient_rlhf.data.vader": float("inf")}
    for _ in range(a.repeat):
        for name, f in (("vaderSentiment", lambda t: sia.polarity_scores(t)["compound"]),
                        ("ambient_rlhf.data.vader", ours.compound)):
            t0 = time.process_time()
            scores = [f(t) for t in texts]
            best[name] = min(best[name], time.process_time() - t0)
            if name == "vaderSentiment":
                ref = scores
    same = sum(x == y for x, y in zip(ref, scores))
    print(f"{len(texts)} direct replies of {a.data}")
    for name, s in best.items():
        print(f"{name:<26} {s:7.2f} s CPU  {s / len(texts) * 1e6:7.1f} us/reply")
    peer, mine = best["vaderSentiment"], best["ambient_rlhf.data.vader"]
    print(f"ratio: {peer / mine:.1f}x the replies/s of vaderSentiment; same float on {same} of {len(texts)}")
    result("sentiment", ours=len(texts) / mine, peer=len(texts) / peer, unit="replies/s (CPU)", higher_is_better=True,
           target=2.0, peer_name="vaderSentiment", same_float=same, texts=len(texts))


if __name__ == "__main__":
    main()
