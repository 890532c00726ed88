"""One input's share of a parallel ``ambient data build``, and the merge of the shares.

A *part* is what the single-process build does with one input (a dump pair, a table or an
SHP file), written to its own directory instead of the shared output:

* ``responses.untiered.parquet``, ``pairs.parquet``, ``rankings.parquet``: the rows the
  :class:`~ambient_rlhf.data.build.Sink` wrote for the input's threads, in reading order;
* ``part.json``: the input's counters (in the order they were first touched), bad records,
  communities and row counts, and the part's key;
* ``rz_terms.f64``: the per-thread terms of the rank/delay correlation (float64), so the
  merged sum is the same float as the single-process one;
* ``thread_ids.json``: every thread id the sink was offered, to find duplicates *across*
  inputs (the single-process build drops a thread id it has seen in an earlier input).

``part.json`` is written last and the directory renamed into place, so a part either
exists whole or not at all: a worker killed mid-input leaves only a ``.tmp-`` directory,
and a rerun with the same key reuses every finished part (resume per input).

:func:`merge_parts` replays the parts, in input order, into a fresh ``Sink``: the rows are
re-chunked to the build's row groups (``build.CHUNK_ROWS``) and the counters added in the order
the single-process build would have touched them, so the merged directory is the same, file
for file, as the one process build's.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ambient_rlhf import __version__
from ambient_rlhf.config import to_dict
from ambient_rlhf.data import build as _build
from ambient_rlhf.data.build import SHOW_BAD, ChunkWriter, Sink
from ambient_rlhf.data.config import DataConfig
from ambient_rlhf.data.schema import PAIRS_FILE, RANKINGS_FILE
from ambient_rlhf.data.sources import BadRecords, Input, StreamDamage
from ambient_rlhf.data.records import Counts
from ambient_rlhf.data.threads import read_input

PART_JSON = "part.json"
UNTIERED = "responses.untiered.parquet"
RZ_TERMS = "rz_terms.f64"
THREAD_IDS = "thread_ids.json"


def code_digest() -> str:
    """sha256 of the data stage's source files: a part built by other code is not reused."""
    h = hashlib.sha256(__version__.encode())
    h.update(pa.__version__.encode())
    for f in sorted(Path(__file__).parent.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def part_key(inp: Input, cfg: DataConfig, preseen: list[str], code: str) -> str:
    """What a part depends on: the input's files (path, size, mtime), the resolved config
    (but ``max_bad_fraction`` and ``labels.sentiment_process``), the thread ids counted as
    already seen, and the code."""
    files = []
    for p in inp.paths:
        st = Path(p).stat()
        files.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    # max_bad_fraction is checked after the merge and changes no part: raising it reuses them
    config = {k: v for k, v in to_dict(cfg).items() if k != "max_bad_fraction"}
    # where reply sentiment is scored (this process or a second one) changes no number either
    config["labels"] = {k: v for k, v in config["labels"].items() if k != "sentiment_process"}
    blob = json.dumps({"kind": inp.kind, "files": files, "config": config,
                       "preseen": sorted(preseen), "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_part(part_dir: Path, key: str) -> dict[str, Any] | None:
    """The finished part's ``part.json`` when its key is ``key``, else None."""
    try:
        meta = json.loads((part_dir / PART_JSON).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("key") == key else None


def build_part(inp: Input, cfg: DataConfig, part_dir: str, key: str, preseen: list[str]) -> dict[str, Any]:
    """Run the single-process build's reading and per-thread steps on one input, into
    ``part_dir`` (a worker's task).  A finished part with the same key is returned as it is.

    ``preseen``: thread ids an earlier input already offered (they are duplicates here)."""
    part = Path(part_dir)
    done = read_part(part, key)
    if done is not None:
        return {**done, "reused": True}
    tmp = part.parent / f".{part.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    t0, c0 = time.perf_counter(), time.process_time()
    quiet = os.environ.get("AMBIENT_PROGRESS")
    os.environ["AMBIENT_PROGRESS"] = "0"  # workers' bars would interleave; the driver shows one over inputs
    try:
        counts, bad = Counts(), BadRecords(show=SHOW_BAD, echo=False)
        sink = Sink(tmp, cfg, counts)
        sink.seen_threads.update(preseen)
        communities: dict[str, int] = {}
        for th in read_input(inp, cfg, counts, bad):
            if th.community:
                communities[th.community] = communities.get(th.community, 0) + 1
            sink.add(th)
        for w in (sink.responses, sink.pairs, sink.rankings):
            w.close()
        sink.tmp_responses.rename(tmp / UNTIERED)
        with open(tmp / RZ_TERMS, "wb") as f:
            sink.rz_terms.tofile(f)
        offered = sorted(sink.seen_threads.difference(preseen))
        (tmp / THREAD_IDS).write_text(json.dumps(offered))
        meta = {
            "key": key, "kind": inp.kind, "paths": [str(p) for p in inp.paths],
            "counts": {g: dict(v) for g, v in counts.d.items()},  # first-touch order, zeros kept
            "bad": {"total": bad.total, "seen": bad.seen, "by_file": bad.by_file, "by_reason": bad.by_reason,
                    "examples": bad.examples, "damaged": [d.as_dict() for d in bad.damaged]},
            "communities": communities, "rz_n": sink.rz_n,
            "rows": {"responses": sink.responses.n, "pairs": sink.pairs.n, "rankings": sink.rankings.n},
            "preseen": len(preseen),
            "seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(time.process_time() - c0, 3),
            "worker": f"{socket.gethostname()}:{os.getpid()}",
        }
        (tmp / PART_JSON).write_text(json.dumps(meta))
        try:
            os.replace(tmp, part)
        except OSError:  # the same task finished twice (Dask may re-run a task it thought lost)
            if read_part(part, key) is None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if quiet is None:
            os.environ.pop("AMBIENT_PROGRESS", None)
        else:
            os.environ["AMBIENT_PROGRESS"] = quiet
    return {**meta, "reused": False}


def thread_ids(part_dir: Path) -> list[str]:
    return json.loads((Path(part_dir) / THREAD_IDS).read_text())


# ---------------------------------------------------------------- merge (the driver)

class _Rechunk:
    """Appends Arrow batches to a :class:`ChunkWriter`'s file in row groups of exactly
    ``build.CHUNK_ROWS`` rows (the last one shorter): the layout the single-process build writes."""

    def __init__(self, writer: ChunkWriter):
        self.w = writer
        self.buf: list[pa.Table] = []
        self.n = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.buf.append(pa.Table.from_batches([batch], schema=self.w.schema))
        self.n += batch.num_rows
        while self.n >= _build.CHUNK_ROWS:  # read at call time: one value for both paths
            self._write(_build.CHUNK_ROWS)

    def _write(self, n: int) -> None:
        t = pa.concat_tables(self.buf)
        self.w.w.write_table(t.slice(0, n).combine_chunks())
        self.w.n += n
        rest = t.slice(n)
        self.buf, self.n = ([rest] if rest.num_rows else []), rest.num_rows

    def close(self) -> None:
        if self.n:
            self._write(self.n)


def _add_counts(counts: Counts, part: dict[str, dict[str, int]]) -> None:
    # groups new to ``counts`` are appended in the part's order, as one process would
    # have created them on reaching this input; keys are sorted by ``as_dict`` anyway
    for g, kv in part.items():
        grp = counts.group(g)
        for k, n in kv.items():
            grp[k] += n


def _add_bad(bad: BadRecords, part: dict[str, Any]) -> None:
    bad.total += part["total"]
    bad.seen += part["seen"]
    for src, dst in ((part["by_file"], bad.by_file), (part["by_reason"], bad.by_reason)):
        for k, n in src.items():
            dst[k] = dst.get(k, 0) + n
    for msg in part["examples"]:
        if len(bad.examples) < bad.show:
            bad.examples.append(msg)
    for d in part["damaged"]:
        sd = StreamDamage(Path(d["file"]), d["kind"], d["offset"], d["resumed_at"],
                          d["compressed_bytes_skipped"], d["error"])
        sd.partial_bytes, sd.line = d["partial_line_bytes_dropped"], d["line"]
        bad.damaged.append(sd)


def merge_parts(tmp: Path, cfg: DataConfig, parts: list[tuple[Path, dict[str, Any]]]
                ) -> tuple[Sink, Counts, BadRecords, dict[str, int]]:
    """Replay the parts (``(dir, part.json)``, in input order) into a Sink writing to
    ``tmp``, ready for :func:`ambient_rlhf.data.build.finalize`."""
    counts, bad = Counts(), BadRecords(show=SHOW_BAD)
    sink = Sink(tmp, cfg, counts)
    communities: dict[str, int] = {}
    outs = [(UNTIERED, _Rechunk(sink.responses)), (PAIRS_FILE, _Rechunk(sink.pairs)),
            (RANKINGS_FILE, _Rechunk(sink.rankings))]
    for d, meta in parts:
        _add_counts(counts, meta["counts"])
        _add_bad(bad, meta["bad"])
        for c, n in meta["communities"].items():
            communities[c] = communities.get(c, 0) + n
        for name, rc in outs:
            pf = pq.ParquetFile(str(d / name))
            for batch in pf.iter_batches(batch_size=_build.CHUNK_ROWS):
                rc.add(batch)
                if rc.w is sink.responses:  # the values the tiers' quantiles are taken over
                    adj = batch.column("adjusted")
                    train = pc.equal(batch.column("split"), "train")
                    sink.all_adjusted.frombytes(adj.to_numpy(zero_copy_only=False).tobytes())
                    sink.train_adjusted.frombytes(pc.filter(adj, train).to_numpy(zero_copy_only=False).tobytes())
        terms = array.array("d")
        with open(d / RZ_TERMS, "rb") as f:
            terms.frombytes(f.read())
        sink.rz_terms.extend(terms)
        sink.rz_n += meta["rz_n"]
    for _, rc in outs:
        rc.close()
    for msg in bad.examples:  # what one process prints while reading, printed once merged
        print(f"warning: {msg}", file=sys.stderr)
    if bad.total > len(bad.examples):
        print("warning: more bad records follow (not shown; all are counted)", file=sys.stderr)
    return sink, counts, bad, communities
