"""Ingest speed and memory of ``ambient data build`` readers on the AskAcademia dump.

One command:

    python benchmarks/ingest.py [--data ../shared/data/reddit-askacademia] [--repeat 3]

Measured in the same run, each in a fresh subprocess (so peak RSS is that step's own):

* ``bare``:   zstd decompression (2 GiB window) + ``json.loads`` of every line of both
              files -- the floor any reader of this format pays;
* ``ingest``: the build's readers: parse, filter, assemble and label-ready threads
              (``threads.read_input``), reply sentiment off, on but scored in the
              reading process, and on as by default (scored in a second process while the
              reader parses: ``data/reply_scorer.py``);
* ``build``:  the whole ``build()``: + labels, pairs, parquet, report and plots.

Prints records/s, the ingest/bare speed ratio (target >= 0.5) and peak RSS; then the
peak RSS of ``ingest`` on growing inputs (25 %, 50 %, 100 % of the comments, and the
dump tiled 4x in time) to show memory stays flat -- and, for contrast, the same with
``source.window_days=0`` (every thread held to the end), where it grows.

    python benchmarks/ingest.py --workers N [--copies 3]

instead builds several communities at once -- AskAcademia, ``--copies`` renamed copies of
it (other ids and subreddit, so no thread repeats) and the beer table -- with the
one-process ``build`` and with ``build_parallel`` on a local Dask cluster of N workers,
each in a fresh subprocess, checks that the two directories are the same file for file,
and prints throughput (MB/s of decompressed input, records/s), the speed ratio, and a
paper estimate of a full-archive build: bytes/s per core x cores.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_env import describe, result

HERE = Path(__file__).resolve()
DEFAULT_DATA = HERE.parents[2] / "shared" / "data" / "reddit-askacademia"
WINDOW = 2**31


def _rss_mb() -> float:
    """Peak RSS of this process: VmHWM (ru_maxrss would inherit the parent's peak through
    fork + exec on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _files(d: Path) -> tuple[Path, Path]:
    subs = sorted(d.glob("*_submissions*"))
    coms = sorted(d.glob("*_comments*"))
    if not subs or not coms:
        sys.exit(f"error: {d}: expected *_submissions and *_comments files")
    return subs[0], coms[0]


# ---------------------------------------------------------------- workers (subprocess)

def worker_bare(d: Path) -> dict:
    import zstandard

    t = time.perf_counter()
    n = 0
    for p in _files(d):
        with open(p, "rb") as fh:
            stream = zstandard.ZstdDecompressor(max_window_size=WINDOW).stream_reader(fh) \
                if p.suffix == ".zst" else fh
            for line in io.BufferedReader(stream, buffer_size=1 << 20):
                if line.strip():
                    json.loads(line.decode("utf-8"))  # str input: faster than bytes
                    n += 1
    return {"seconds": time.perf_counter() - t, "records": n}


def worker_ingest(d: Path, overrides: list[str]) -> dict:
    from ambient_rlhf.config import load_config
    from ambient_rlhf.data.build import DataConfig
    from ambient_rlhf.data.sources import BadRecords, discover
    from ambient_rlhf.data.threads import Counts, read_input

    cfg = load_config(DataConfig, None, overrides)
    t = time.perf_counter()
    counts, bad = Counts(), BadRecords(show=0)
    threads = responses = 0
    for inp in discover([str(d)]):
        for th in read_input(inp, cfg, counts, bad):
            threads += 1
            responses += len(th.responses)
    c = counts.as_dict()
    n = c.get("submissions", {}).get("read", 0) + c.get("comments", {}).get("read", 0)
    return {"seconds": time.perf_counter() - t, "records": n, "threads": threads, "responses": responses,
            "peak_open_threads": c.get("memory", {}).get("peak_open_threads")}


def worker_build(d: Path, overrides: list[str]) -> dict:
    from ambient_rlhf.config import load_config
    from ambient_rlhf.data.build import DataConfig, build

    cfg = load_config(DataConfig, None, overrides)
    out = Path(tempfile.mkdtemp()) / "out"
    t = time.perf_counter()
    m = build([str(d)], str(out), cfg)
    s = time.perf_counter() - t
    shutil.rmtree(out.parent, ignore_errors=True)
    c = m["counts"]
    return {"seconds": s, "records": c["submissions"]["read"] + c["comments"]["read"]}


def worker_many(sources: list[str], out: str, workers: int, overrides: list[str]) -> dict:
    """Build ``sources`` into ``out``: one process (``workers == 0``) or a local cluster."""
    from ambient_rlhf.config import load_config
    from ambient_rlhf.data.build import DataConfig, build

    cfg = load_config(DataConfig, None, overrides)
    t = time.perf_counter()
    if workers == 0:
        m = build(sources, out, cfg)
        return {"seconds": time.perf_counter() - t, "startup": 0.0, "counts": m["counts"], "cpu": _cpu(),
                "driver_cpu": _cpu(children=False)}
    from ambient_rlhf.data.parallel import build_parallel, dask_client

    phases: dict[str, float] = {}
    with dask_client(workers) as client:
        client.wait_for_workers(workers)
        startup = time.perf_counter() - t
        m = build_parallel(sources, out, cfg, client=client, timings=phases)
    # the workers are this process's children: their CPU counts once the cluster has closed
    return {"seconds": time.perf_counter() - t, "startup": startup, "counts": m["counts"], "cpu": _cpu(),
            "driver_cpu": _cpu(children=False), "phases": phases}


def _cpu(children: bool = True) -> float:
    """CPU seconds of this process (the driver: merge, tiers, report, and the local
    scheduler) and, with ``children``, of its finished children (the workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + ((kids.ru_utime + kids.ru_stime) if children else 0.0)


def run_worker(mode: str, d: Path, overrides: list[str] = (), extra: list[str] = ()) -> dict:
    env = {**os.environ, "AMBIENT_PROGRESS": "0"}
    r = subprocess.run([sys.executable, str(HERE), "--worker", mode, "--data", str(d), *extra, *overrides],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"error: worker {mode} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- growing inputs

def _iter_lines(p: Path):
    import zstandard

    with open(p, "rb") as fh:
        for line in io.BufferedReader(zstandard.ZstdDecompressor(max_window_size=WINDOW).stream_reader(fh)):
            if line.strip():
                yield line.rstrip(b"\n")


class _ZstWriter:
    """Streaming .zst line writer (the inputs are built without holding them in memory)."""

    def __init__(self, p: Path):
        import zstandard

        self.fh = open(p, "wb")
        self.w = zstandard.ZstdCompressor(level=3).stream_writer(self.fh)

    def write(self, line: bytes) -> None:
        self.w.write(line + b"\n")

    def close(self) -> None:
        self.w.close()  # closes fh too


def make_inputs(d: Path, tmp: Path) -> list[tuple[str, Path]]:
    """Prefixes of the comments (25/50/100 %) and the dump tiled 4x in time
    (copy k: ids suffixed, every time shifted by k * (span + 1 year), so threads of
    different copies never overlap: a dump four times as long).  All are recompressed at
    level 3 (8 MiB window): the original is a --long=31 file whose decoder window is its
    whole 64 MB content, which would dominate the comparison."""
    s_path, c_path = _files(d)
    n = sum(1 for _ in _iter_lines(c_path))
    out = []
    for frac in (0.25, 0.5, 1.0):
        p = tmp / f"prefix{int(frac * 100)}"
        p.mkdir()
        shutil.copy(s_path, p / s_path.name)
        w = _ZstWriter(p / c_path.name)
        for i, line in enumerate(_iter_lines(c_path)):
            if i >= int(n * frac):
                break
            w.write(line)
        w.close()
        out.append((f"{int(frac * 100)}% of comments", p))
    lo, hi = float("inf"), float("-inf")
    for f in (s_path, c_path):
        for line in _iter_lines(f):
            t = json.loads(line)["created_utc"]
            lo, hi = min(lo, t), max(hi, t)
    shift = int(hi - lo) + 365 * 86400
    p = tmp / "tiled4"
    p.mkdir()
    ws, wc = _ZstWriter(p / s_path.name), _ZstWriter(p / c_path.name)
    for k in range(4):
        sfx = "" if k == 0 else f"x{k}"
        for line in _iter_lines(s_path):
            o = json.loads(line)
            o.update(id=o["id"] + sfx, name=o["name"] + sfx, created_utc=o["created_utc"] + k * shift)
            if o.get("retrieved_on") is not None:
                o["retrieved_on"] += k * shift
            ws.write(json.dumps(o).encode())
        for line in _iter_lines(c_path):
            o = json.loads(line)
            o.update(id=o["id"] + sfx, name=o["name"] + sfx, link_id=o["link_id"] + sfx,
                     parent_id=o["parent_id"] + sfx, created_utc=o["created_utc"] + k * shift)
            if o.get("retrieved_on") is not None:
                o["retrieved_on"] += k * shift
            wc.write(json.dumps(o).encode())
    ws.close()
    wc.close()
    out.append(("400% (tiled 4x in time)", p))
    return out


# ---------------------------------------------------------------- several communities at once

BEER = HERE.parents[2] / "shared" / "data" / "stackexchange-beer" / "responses.csv"
MANY_OVERRIDES = ["filters.allow_missing_retrieved_on=true", "labels.min_prompt_score=2"]


def make_communities(d: Path, tmp: Path, copies: int) -> tuple[list[str], int]:
    """AskAcademia as it is, ``copies`` copies with other ids and subreddit names (so no
    thread repeats across inputs; level-3 zstd), and the beer table.  Returns the sources
    and the decompressed bytes of all of them."""
    s_path, c_path = _files(d)
    sources, size = [str(d)], 0
    for f in (s_path, c_path):
        size += sum(len(line) + 1 for line in _iter_lines(f))
    one = size
    for k in range(1, copies + 1):
        sub = f"AskAcademiaCopy{k}"
        p = tmp / sub
        p.mkdir()
        for f, kind in ((s_path, "submissions"), (c_path, "comments")):
            w = _ZstWriter(p / f"{sub}_{kind}.ndjson.zst")
            for line in _iter_lines(f):
                o = json.loads(line)
                o.update(id=o["id"] + f"c{k}", name=o["name"] + f"c{k}", subreddit=sub)
                if kind == "comments":
                    o.update(link_id=o["link_id"] + f"c{k}", parent_id=o["parent_id"] + f"c{k}")
                w.write(json.dumps(o).encode())
            w.close()
        size += one  # the same lines up to the id suffixes: counted as the original's bytes
        sources.append(str(p))
    if BEER.is_file():
        sources.append(str(BEER))
        size += BEER.stat().st_size
    return sources, size


def compare_dirs(a: Path, b: Path) -> list[str]:
    """Files that differ (the manifest compared without its timing fields)."""
    diff = sorted(set(os.listdir(a)) ^ set(os.listdir(b)))
    for name in sorted(set(os.listdir(a)) & set(os.listdir(b))):
        if name == "manifest.json":
            ma, mb = (json.loads((x / name).read_text()) for x in (a, b))
            for k in ("created", "command", "seconds"):
                ma.pop(k, None), mb.pop(k, None)
            if ma != mb:
                diff.append(name)
        elif (a / name).read_bytes() != (b / name).read_bytes():
            diff.append(name)
    return diff


def main_workers(d: Path, workers: int, copies: int, repeat: int, archive_bytes: float, archive_ratio: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources, size = make_communities(d, tmp, copies)
        print(f"inputs: {len(sources)} ({copies + 1} AskAcademia-sized communities + the beer table), "
              f"{size / 1e6:.0f} MB decompressed")
        runs: dict[str, dict] = {}
        for _ in range(repeat):  # alternating, best of ``repeat`` each: the machine's load drifts
            for name, n in (("one process", 0), (f"{workers} workers", workers)):
                out = tmp / f"out{n}"
                shutil.rmtree(out, ignore_errors=True)
                r = run_worker("many", d, MANY_OVERRIDES,
                               ["--sources", json.dumps(sources), "--out", str(out), "--workers", str(n)])
                print(f"  {name}: {r['seconds']:.1f} s", flush=True)
                if name not in runs or r["seconds"] < runs[name]["seconds"]:
                    runs[name] = {**r, "out": out}
        one, par = runs["one process"], runs[f"{workers} workers"]
        diff = compare_dirs(one["out"], par["out"])
        c = one["counts"]
        records = sum(c.get(g, {}).get("read", 0) for g in ("submissions", "comments", "table_rows"))
    print(f"\n{'path':<14} {'seconds':>8} {'startup':>8} {'MB/s':>7} {'rec/s':>8} {'vs one':>7} {'CPU s':>7} "
          f"{'driver':>7} {'MB/CPU-s':>9}")
    for name, r in runs.items():
        print(f"{name:<14} {r['seconds']:>8.1f} {r['startup']:>8.1f} {size / 1e6 / r['seconds']:>7.2f} "
              f"{records / r['seconds']:>8.0f} {one['seconds'] / r['seconds']:>6.2f}x {r['cpu']:>7.1f} "
              f"{r['driver_cpu']:>7.1f} {size / 1e6 / r['cpu']:>9.2f}")
    print(f"load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other users' jobs stretch "
          f"the wall times; CPU seconds are this build's own)")
    build_only = par["seconds"] - par["startup"]
    print(f"{workers} workers without the cluster's startup: {build_only:.1f} s, "
          f"{one['seconds'] / build_only:.2f}x the one-process build (on {os.cpu_count()} cores)")
    print("same directory, file for file: " + ("yes" if not diff else f"NO, differs: {diff}"))
    ph = par["phases"]
    print(f"{workers} workers, phases: cluster start {par['startup']:.1f} s, inputs {ph['parts']:.1f} s, merge "
          f"{ph['merge']:.1f} s ({ph['merge_cpu']:.1f} CPU s), tiers + report + manifest {ph['finalize']:.1f} s "
          f"({ph['finalize_cpu']:.1f} CPU s)")
    # the workers' share spreads over the cores; the driver's merge and tiers/report do not
    serial_cpu = ph["merge_cpu"] + ph["finalize_cpu"]
    par_rate = size / (par["cpu"] - par["driver_cpu"])
    ser_rate = size / serial_cpu
    total = archive_bytes * archive_ratio
    print(f"\npaper estimate of a full-archive build: {archive_bytes / 1e12:.2f} TB of zstd x {archive_ratio:.1f} "
          f"(decompressed/compressed, measured on the AskAcademia dump) = {total / 1e12:.1f} TB of JSON; "
          f"the workers did {par_rate / 1e6:.2f} MB per CPU-second (startup and Dask overheads included), the "
          f"driver's merge + tiers + report {ser_rate / 1e6:.1f} MB per CPU-second (one process: serial, its fixed "
          f"costs counted as if they grew with the data): hours = bytes / (workers' rate x cores) + bytes / "
          f"driver's rate")
    for cores in (1, 64, 256, 1024):
        h = (total / (par_rate * cores) + total / ser_rate) / 3600
        print(f"  {cores:>5} cores: {h:>9.1f} h" + ("" if h < 48 else f" ({h / 24:.1f} days)")
              + f"  (driver alone {total / ser_rate / 3600:.1f} h)")
    if diff:
        sys.exit(1)


def compression_ratio(d: Path) -> float:
    """Decompressed / compressed bytes of the dump (the real files: zstd --long=31)."""
    raw = comp = 0
    for f in _files(d):
        comp += f.stat().st_size
        raw += sum(len(line) + 1 for line in _iter_lines(f))
    return raw / comp


# ---------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="a Pushshift-format dump directory")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats (best is reported)")
    ap.add_argument("--skip-growth", action="store_true", help="skip the growing-input RSS table")
    ap.add_argument("--workers", type=int, default=0,
                    help="instead: several communities at once, one process vs a local Dask cluster of N workers")
    ap.add_argument("--copies", type=int, default=3, help="with --workers: renamed copies of the dump added")
    ap.add_argument("--archive-bytes", type=float, default=3.28e12,
                    help="with --workers: zstd bytes of the full archive for the paper estimate (default 3.28e12: "
                         "the per-subreddit Pushshift/Arctic Shift dumps up to 2024 as reported by their users, "
                         "not measured here)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--sources", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    d = Path(a.data)
    if a.worker:
        res = {"bare": lambda: worker_bare(d), "ingest": lambda: worker_ingest(d, a.overrides),
               "build": lambda: worker_build(d, a.overrides),
               "many": lambda: worker_many(json.loads(a.sources or "[]"), a.out, a.workers, a.overrides)}[a.worker]()
        res["peak_rss_mb"] = round(_rss_mb(), 1)
        print(json.dumps(res))
        return
    if not d.is_dir():
        sys.exit(f"error: {d}: not found (pass --data DIR)")
    if a.workers:
        main_workers(d, a.workers, a.copies, a.repeat, a.archive_bytes, compression_ratio(d))
        return
    print(f"data: {d}  (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, same for every step)")
    rows = {}
    for name, mode, ov in [("bare decompress + json.loads", "bare", []),
                           ("ingest (sentiment off)", "ingest", ["labels.reply_sentiment=false"]),
                           ("ingest (sentiment inline)", "ingest", ["labels.sentiment_process=false"]),
                           ("ingest (default)", "ingest", []),
                           ("full build (default)", "build", [])]:
        best = None
        for _ in range(a.repeat if mode != "build" else 1):
            r = run_worker(mode, d, ov)
            if best is None or r["seconds"] < best["seconds"]:
                best = r
        rows[name] = best
    bare = rows["bare decompress + json.loads"]
    print(f"\n{'step':<30} {'records':>8} {'seconds':>8} {'rec/s':>9} {'vs bare':>8} {'peak RSS':>9}")
    for name, r in rows.items():
        print(f"{name:<30} {r['records']:>8} {r['seconds']:>8.2f} {r['records'] / r['seconds']:>9.0f} "
              f"{bare['seconds'] / r['seconds']:>7.2f}x {r['peak_rss_mb']:>7.0f}MB")
    ing = rows["ingest (sentiment off)"]
    print(f"\nratio ingest/bare speed: {bare['seconds'] / ing['seconds']:.2f}x without reply sentiment, "
          f"{bare['seconds'] / rows['ingest (default)']['seconds']:.2f}x with it (target >= 0.5x)")
    print(describe())
    result("ingest", ours=rows["ingest (default)"]["records"] / rows["ingest (default)"]["seconds"],
           peer=bare["records"] / bare["seconds"], unit="records/s", higher_is_better=True, target=0.5,
           peer_name="bare zstd + json.loads", sentiment_off_ratio=bare["seconds"] / ing["seconds"],
           inline_ratio=bare["seconds"] / rows["ingest (sentiment inline)"]["seconds"],
           peak_rss_mb=rows["ingest (default)"]["peak_rss_mb"])
    if a.skip_growth:
        return
    print("\npeak RSS of ingest (sentiment off) as the input grows (inputs recompressed with an 8 MiB\n"
          "window; the original --long=31 file adds its 64 MB decoder window to the RSS above):")
    print(f"{'input':<26} {'records':>8} {'open threads':>13} {'RSS window=183d':>16} {'RSS window=0':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        for label, p in make_inputs(d, Path(tmp)):
            r = run_worker("ingest", p, ["labels.reply_sentiment=false"])
            r0 = run_worker("ingest", p, ["labels.reply_sentiment=false", "source.window_days=0"])
            print(f"{label:<26} {r['records']:>8} {r['peak_open_threads']:>13} {r['peak_rss_mb']:>14.0f}MB "
                  f"{r0['peak_rss_mb']:>11.0f}MB")


if __name__ == "__main__":
    main()
