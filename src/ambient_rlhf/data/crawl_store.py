"""The crawl directory of ``ambient data crawl``: append-only dump files and the journal
that makes them resumable after a kill at any point.

``DIR/<sub>_submissions.ndjson.zst`` and ``DIR/<sub>_comments.ndjson.zst`` grow by one
zstd frame per thread (the data stage reads any number of frames).  ``DIR/crawl.journal``
is a journal, one JSON event per line, each line fsync'ed before the next step:

    {"ev": "run", ...}                      a crawl run starts (its subreddits and sources)
    {"ev": "found", "items": [[id, sub, created_utc], ...]}   ids seen in a listing page
    {"ev": "page", "src": KEY, "after": CURSOR}              that page is done
    {"ev": "src_done", "src": KEY} / {"ev": "sweep_done"} / {"ev": "run_done"}
    {"ev": "thread", "id": ..., "sub": ..., "status": "written"|"gone", "bytes": [S, C], ...}

A thread is committed by its ``thread`` line, written after both frames are fsync'ed;
``bytes`` are the two files' sizes then.  On open, the journal is replayed (a torn last
line is cut off) and each dump file is cut back to its last committed size: a frame
written before a kill but not yet in the journal is removed, and its thread is fetched
again.  So no record is written twice and none is lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambient_rlhf import AmbientError

JOURNAL = "crawl.journal"  # not .jsonl: `ambient data build DIR` would take it for a table


def dump_paths(out: Path, sub: str) -> tuple[Path, Path]:
    return out / f"{sub}_submissions.ndjson.zst", out / f"{sub}_comments.ndjson.zst"


@dataclass
class RunState:
    subs: list[str]
    sources: list[str]
    started: float
    pages: dict[str, str | None] = field(default_factory=dict)  # source -> cursor of the last page done
    sources_done: set[str] = field(default_factory=set)
    sweep_done: bool = False
    finished: bool = False


@dataclass
class CrawlState:
    """What the journal says, replayed."""

    found: dict[str, tuple[str, float]] = field(default_factory=dict)  # id -> (sub, created_utc)
    done: dict[str, str] = field(default_factory=dict)  # id -> "written" | "gone"
    sizes: dict[str, list[int]] = field(default_factory=dict)  # sub -> [submissions bytes, comments bytes]
    stream_time: dict[str, float] = field(default_factory=dict)  # sub -> latest comment time written
    out_of_order: int = 0  # threads written past the build's window (see crawl.write_thread)
    run: RunState | None = None
    runs: int = 0

    def apply(self, e: dict[str, Any]) -> None:
        ev = e["ev"]
        if ev == "run":
            self.run = RunState(list(e["subs"]), list(e["sources"]), float(e["at"]))
            self.runs += 1
        elif ev == "found":
            for sid, sub, created in e["items"]:
                self.found.setdefault(sid, (sub, float(created)))
        elif ev == "page":
            self.run.pages[e["src"]] = e["after"]
        elif ev == "src_done":
            self.run.sources_done.add(e["src"])
        elif ev == "sweep_done":
            self.run.sweep_done = True
        elif ev == "run_done":
            self.run.finished = True
        elif ev == "thread":
            self.done[e["id"]] = e["status"]
            if e["status"] == "written":
                self.sizes[e["sub"]] = list(e["bytes"])
                if e.get("max_created") is not None:
                    self.stream_time[e["sub"]] = max(self.stream_time.get(e["sub"], 0.0), e["max_created"])
                self.out_of_order += int(e.get("out_of_order", 0))
        else:
            raise ValueError(f"unknown event {ev!r}")


class Journal:
    """The append-only event log; :attr:`state` is its replay."""

    def __init__(self, out: Path):
        self.path = out / JOURNAL
        self.state = CrawlState()
        good = 0
        if self.path.exists():
            with open(self.path, "rb") as f:
                data = f.read()
            lineno = 0
            for raw in data.split(b"\n")[:-1]:  # the part after the last newline is torn
                lineno += 1
                try:
                    self.state.apply(json.loads(raw))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    if good + len(raw) + 1 == len(data):  # the last line: torn by a kill
                        break
                    raise AmbientError(f"{self.path}:{lineno}: unreadable crawl journal line ({e}); it was "
                                       f"not written by ambient data crawl, or was edited") from None
                good += len(raw) + 1
            if good < len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(good)
        self._f = open(self.path, "ab")

    def append(self, event: dict[str, Any]) -> None:
        self._f.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.state.apply(event)

    def close(self) -> None:
        self._f.close()


class DumpWriter:
    """Appends one thread at a time to a subreddit's two dump files, as zstd frames."""

    def __init__(self, out: Path, state: CrawlState, level: int = 3):
        import zstandard

        self.out, self.state = out, state
        self.cctx = zstandard.ZstdCompressor(level=level)
        self._files: dict[str, tuple[Any, Any]] = {}

    def check(self, subs: list[str]) -> None:
        """Cut each file back to its committed size (frames of an uncommitted thread go)."""
        for sub in set(subs) | set(self.state.sizes):
            for path, size in zip(dump_paths(self.out, sub), self.state.sizes.get(sub, [0, 0])):
                have = path.stat().st_size if path.exists() else 0
                if have < size:
                    raise AmbientError(f"{path}: {have} bytes, but the crawl journal ({self.out / JOURNAL}) "
                                       f"committed {size}; the file was cut or replaced outside the crawl. "
                                       f"Restore it, or crawl into a new --out directory")
                if have > size:
                    with open(path, "r+b") as f:
                        f.truncate(size)

    def append(self, sub: str, submission: bytes, comments: bytes) -> list[int]:
        """Write, flush and fsync; return the two files' sizes after."""
        if sub not in self._files:
            self._files[sub] = tuple(open(p, "ab") for p in dump_paths(self.out, sub))
        sizes = []
        for f, data in zip(self._files[sub], (submission, comments)):
            if data:
                f.write(self.cctx.compress(data))
            f.flush()
            os.fsync(f.fileno())
            sizes.append(os.fstat(f.fileno()).st_size)
        return sizes

    def close(self) -> None:
        for pair in self._files.values():
            for f in pair:
                f.close()
        self._files.clear()
