"""A parallel build (one Dask task per input, on a local 2-worker cluster on 127.0.0.1)
writes the same directory as the one-process build, file for file; a worker killed in the
middle of an input is replaced and the input re-run; a failing input is reported by name
and the finished ones are reused by the next run; thread ids repeated across inputs are
dropped as duplicates exactly as one process drops them.

The reference in every test is the one-process ``build`` of the same sources (the
project's existing, separately tested path): the parallel path must reproduce its bytes."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.config import load_config
from ambient_rlhf.data.build import build
from ambient_rlhf.data.config import DataConfig

distributed = pytest.importorskip("distributed")

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
AA, BEER = DATA / "reddit-askacademia", DATA / "stackexchange-beer" / "responses.csv"
OVERRIDES = ["filters.allow_missing_retrieved_on=true", "labels.min_prompt_score=2"]
TIMING = ("created", "command", "seconds")  # the manifest fields that differ between any two runs

pytestmark = pytest.mark.skipif(not AA.is_dir() or not BEER.is_file(), reason="needs ../shared/data")


def _zst_lines(p: Path):
    import zstandard

    with open(p, "rb") as fh:
        for line in io.BufferedReader(zstandard.ZstdDecompressor(max_window_size=2**31).stream_reader(fh)):
            if line.strip():
                yield line


def subsample_askacademia(out: Path, n_submissions: int) -> Path:
    """The first ``n_submissions`` of the real dump and every comment of theirs (plain NDJSON)."""
    out.mkdir(parents=True)
    keep = set()
    with open(out / "AskAcademia_submissions.ndjson", "wb") as f:
        for i, line in enumerate(_zst_lines(AA / "AskAcademia_submissions.ndjson.zst")):
            if i >= n_submissions:
                break
            keep.add(json.loads(line)["name"])
            f.write(line)
    with open(out / "AskAcademia_comments.ndjson", "wb") as f:
        for line in _zst_lines(AA / "AskAcademia_comments.ndjson.zst"):
            if json.loads(line)["link_id"] in keep:
                f.write(line)
    return out


def subsample_beer(out: Path, n_prompts: int, skip: int = 0) -> Path:
    """The rows of prompts ``skip .. skip + n_prompts`` of the real beer table (rows of a
    prompt are adjacent there)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(BEER, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, seen, kept = rows[0], [], []
    for r in rows[1:]:
        pid = r[header.index("prompt_id")]
        if not seen or seen[-1] != pid:
            seen.append(pid)
        if skip < len(seen) <= skip + n_prompts:
            kept.append(r)
    with open(out, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *kept])
    return out


@pytest.fixture(scope="module")
def cfg() -> DataConfig:
    return load_config(DataConfig, None, OVERRIDES)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[str]:
    """AskAcademia (60 threads of the real dump), the beer table (80 real questions) and a
    simulated community (20 threads): three inputs, three communities."""
    from ambient_rlhf.data.simulate import SimulateConfig, simulate

    d = tmp_path_factory.mktemp("inputs")
    aa = subsample_askacademia(d / "aa", 60)
    beer = subsample_beer(d / "beer" / "responses.csv", 80)
    sim = simulate(d / "sim", SimulateConfig(threads=20, responses=4, model="template"))
    return [str(aa), str(beer), str(sim)]


@pytest.fixture(scope="module")
def reference(sources, cfg, tmp_path_factory) -> Path:
    """The one-process build of ``sources``, without the PNGs (as the tests' builds: see
    conftest's ``_skip_plots``)."""
    import ambient_rlhf.data.report as report

    out = tmp_path_factory.mktemp("ref") / "one"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report, "write_plots", lambda out: [])
        build(sources, str(out), cfg)
    return out


@pytest.fixture(scope="module")
def client():
    """A local Dask cluster: 2 single-threaded worker processes on 127.0.0.1."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as lc, Client(lc) as c:
        yield c


@contextlib.contextmanager
def killing_a_running_part(client, parts: Path):
    """SIGKILL, once, the worker process running a part task that has started writing (its
    ``.NAME.tmp-*`` directory exists under ``parts``); yields the list of what was killed."""
    pids = client.run(os.getpid)  # worker address -> pid
    killed: list[tuple[str, str]] = []
    stop = threading.Event()

    def killer():
        while not stop.is_set() and not killed:
            started = [p.name[1:].split(".tmp-")[0] for p in parts.glob(".*.tmp-*")] if parts.exists() else []
            for addr, keys in (client.processing() if started else {}).items():
                for k in keys:
                    if any(str(k).startswith(f"ambient-part-{name}") for name in started):
                        os.kill(pids[addr], signal.SIGKILL)
                        killed.append((addr, str(k)))
                        return
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        yield killed
    finally:
        stop.set()
        t.join()


def assert_same_dir(a: Path, b: Path) -> None:
    """Every file byte for byte; the manifest apart from its timing fields."""
    names = sorted(os.listdir(a))
    assert names == sorted(os.listdir(b))
    for name in names:
        if name == "manifest.json":
            ma, mb = (json.loads((d / name).read_text()) for d in (a, b))
            assert list(ma) == list(mb)
            assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
            # and the counters' text itself, in the same order
            assert json.dumps(ma["counts"]) == json.dumps(mb["counts"])
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_two_workers_write_the_one_process_directory(sources, cfg, reference, client, tmp_path):
    from ambient_rlhf.data.parallel import build_parallel

    out = tmp_path / "par"
    m = build_parallel(sources, str(out), cfg, client=client, parts_dir=str(tmp_path / "parts"))
    assert_same_dir(reference, out)
    # not vacuous: every input contributed rows (the table has no community name)
    assert m["communities"] == {"AskAcademia": 60, "AmbientSim": 20}
    assert m["counts"]["submissions"]["read"] == 60 + 20  # the two dumps' submissions
    import pyarrow.parquet as pq

    for name in ("responses.parquet", "pairs.parquet", "rankings.parquet"):
        assert pq.ParquetFile(out / name).metadata.num_rows > 0
    assert len(set(pq.read_table(out / "responses.parquet", columns=["source"]).column(0).to_pylist())) == 3
    assert not (tmp_path / "parts").exists()  # removed once the build succeeded


def test_a_worker_killed_mid_input_is_replaced_and_the_input_rerun(sources, cfg, reference, client, tmp_path):
    """SIGKILL the worker process whose task has started writing its part (its ``.tmp-``
    directory exists): the nanny starts a new worker, the scheduler re-runs the input, and
    the output is still the one-process directory."""
    from ambient_rlhf.data.parallel import build_parallel

    parts = tmp_path / "parts"
    with killing_a_running_part(client, parts) as killed:
        out = tmp_path / "par"
        build_parallel(sources, str(out), cfg, client=client, parts_dir=str(parts))
    assert killed, "no task was caught running: the test did not kill anything"
    assert_same_dir(reference, out)
    client.wait_for_workers(2, timeout=60)  # the nanny replaced the dead worker


def test_an_input_whose_worker_dies_every_time_is_reported(sources, cfg, tmp_path):
    """With ``allowed-failures`` 0 one death is final (the default allows 3 re-runs): the
    build fails naming the input whose worker died, and the other inputs, run on the
    replacement worker, are kept (one task in flight per worker thread, so the death
    counts against the running input only)."""
    import dask
    from distributed import Client, LocalCluster

    from ambient_rlhf.data.parallel import build_parallel

    parts = tmp_path / "parts"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as lc, \
            Client(lc) as c, killing_a_running_part(c, parts) as killed, pytest.raises(AmbientError) as e:
        build_parallel(sources, str(tmp_path / "par"), cfg, client=c, parts_dir=str(parts))
    assert len(killed) == 1
    msg = str(e.value)
    assert "1 of 3 inputs failed" in msg and "died each time" in msg
    dead = next(p for p in killed[0][1].split("ambient-part-")[1:])  # the task's name: <stem>-<key>-...
    failed_line = [ln for ln in msg.splitlines() if "died each time" in ln][0]
    assert dead.split("-")[0] in failed_line
    finished = sorted(json.loads((p / "part.json").read_text())["paths"][0] for p in parts.iterdir()
                      if (p / "part.json").is_file())
    assert len(finished) == 2 and not any(dead.split("-")[0] in f for f in finished)
    assert not (tmp_path / "par").exists()


def test_a_failing_input_is_named_and_the_finished_ones_are_reused(cfg, client, tmp_path, caplog):
    from ambient_rlhf.data.parallel import build_parallel

    beer = subsample_beer(tmp_path / "beer" / "responses.csv", 30)
    other = tmp_path / "other" / "responses.csv"
    other.parent.mkdir()
    other.write_text("question,answer\nwhy?,because\n")  # no prompt_id, ...: the worker's reader refuses it
    parts = tmp_path / "parts"
    with pytest.raises(AmbientError) as e:
        build_parallel([str(beer.parent), str(other.parent)], str(tmp_path / "par"), cfg, client=client,
                       parts_dir=str(parts))
    msg = str(e.value)
    assert "1 of 2 inputs failed" in msg and str(other) in msg and "prompt_id" in msg
    assert str(beer) not in msg
    assert not (tmp_path / "par").exists()
    finished = [p for p in parts.iterdir() if (p / "part.json").is_file()]
    assert [p.name.split("-")[0] for p in finished] == ["responses"] and len(finished) == 1
    assert json.loads((finished[0] / "part.json").read_text())["paths"] == [str(beer)]

    subsample_beer(other, 12, skip=30)  # fixed: other real questions
    with caplog.at_level(logging.INFO, logger="ambient_rlhf.data.parallel"):
        build_parallel([str(beer.parent), str(other.parent)], str(tmp_path / "par"), cfg, client=client,
                       parts_dir=str(parts))
    reused = [r.getMessage() for r in caplog.records if "reused from" in r.getMessage()]
    assert len(reused) == 1 and str(beer) in reused[0]
    build([str(beer.parent), str(other.parent)], str(tmp_path / "one"), cfg)
    assert_same_dir(tmp_path / "one", tmp_path / "par")


def test_thread_ids_repeated_in_a_later_input_are_duplicates_as_in_one_process(cfg, client, tmp_path,
                                                                                 monkeypatch):
    """Questions 20..39 of the beer table appear in both inputs: one process keeps them
    from the first input and counts the second input's copies as ``threads.duplicate_id``;
    the parallel build re-runs the second input with those ids seen and matches it.

    Row groups of 7 rows (instead of 4096) put group boundaries inside threads and across
    the two inputs, so the merge's re-chunking is checked on a small build too."""
    import pyarrow.parquet as pq

    from ambient_rlhf.data import build as build_module
    from ambient_rlhf.data.parallel import build_parallel

    monkeypatch.setattr(build_module, "CHUNK_ROWS", 7)
    a = subsample_beer(tmp_path / "a" / "responses.csv", 40)
    b = subsample_beer(tmp_path / "b" / "responses.csv", 30, skip=20)  # 20 repeated, 10 new
    srcs = [str(a.parent), str(b.parent)]
    m1 = build(srcs, str(tmp_path / "one"), cfg)
    build_parallel(srcs, str(tmp_path / "par"), cfg, client=client, parts_dir=str(tmp_path / "parts"))
    assert_same_dir(tmp_path / "one", tmp_path / "par")
    assert pq.ParquetFile(tmp_path / "par" / "responses.parquet").metadata.num_row_groups > 2
    assert pq.ParquetFile(tmp_path / "par" / "rankings.parquet").metadata.num_row_groups >= 2
    # by hand from the CSV: the 20 repeated questions (ids 64 .. 181) all have a score >= 0,
    # a prompt under 10k chars and >= 2 answers under 5k chars, so all 20 assemble into a
    # thread in the second input, and all 20 are duplicates there
    assert m1["counts"]["threads"]["duplicate_id"] == 20


def test_cli_builds_on_an_existing_scheduler(sources, reference, client, tmp_path):
    """``ambient data build --cluster ADDRESS``: the path for a real cluster."""
    from ambient_rlhf.cli import main

    out = tmp_path / "par"
    rc = main(["data", "build", *sources, "--out", str(out), "--cluster", client.scheduler.address, *OVERRIDES])
    assert rc in (0, None)
    assert_same_dir(reference, out)
    assert not (tmp_path / "par.parts").exists()


def test_cli_refuses_parts_dir_without_workers(sources, tmp_path, capsys):
    from ambient_rlhf.cli import main

    with pytest.raises(SystemExit):
        main(["data", "build", *sources, "--out", str(tmp_path / "o"), "--parts-dir", str(tmp_path / "p")])
    assert "--parts-dir needs --workers" in capsys.readouterr().err


def test_the_same_table_under_two_spellings_runs_once_and_is_all_duplicates(cfg, client, tmp_path):
    """``beer`` and ``beer/../beer`` are two inputs to one process (the second all
    duplicates); the parallel build runs the shared files once, then the second input again
    with every id seen, and matches it."""
    from ambient_rlhf.data.parallel import build_parallel

    a = subsample_beer(tmp_path / "beer" / "responses.csv", 15)
    srcs = [str(a.parent), str(a.parent / ".." / "beer")]
    m1 = build(srcs, str(tmp_path / "one"), cfg)
    build_parallel(srcs, str(tmp_path / "par"), cfg, client=client, parts_dir=str(tmp_path / "parts"))
    assert_same_dir(tmp_path / "one", tmp_path / "par")
    th = m1["counts"]["threads"]
    assert th["duplicate_id"] > 0 and 2 * th["duplicate_id"] == th["assembled"]  # every thread of the 2nd input


def test_a_local_cluster_on_every_core_scores_sentiment_in_the_tasks(cfg):
    """Each reader's sentiment worker needs a spare core: with a local worker per core
    the tasks score in their own process; with fewer workers, or a remote cluster (0),
    the config is left as it is.  Where the scoring runs changes no part's key."""
    from ambient_rlhf.data.parallel import task_config
    from ambient_rlhf.data.parts import code_digest, part_key
    from ambient_rlhf.data.sources import Input

    assert cfg.labels.sentiment_process and cfg.labels.reply_sentiment
    assert task_config(cfg, 2, 2).labels.sentiment_process is False
    assert task_config(cfg, 4, 2).labels.sentiment_process is False
    assert task_config(cfg, 1, 2) is cfg and task_config(cfg, 0, 2) is cfg and task_config(cfg, 2, None) is cfg
    off = task_config(cfg, 2, 2)
    assert off.labels.reply_sentiment and cfg.labels.sentiment_process  # a copy: the caller's config is kept
    inp = Input("table", [__file__])
    assert part_key(inp, cfg, [], code_digest()) == part_key(inp, off, [], code_digest())


def test_a_local_cluster_made_for_the_build_uses_the_task_config(sources, cfg, reference, tmp_path, caplog,
                                                                monkeypatch):
    """``--workers N`` with N = the cores: the build's own local cluster gets the in-task
    scoring (said in the log), and writes the one-process directory all the same; and it
    leaves this process's environment as it was (Dask's nanny writes OMP_NUM_THREADS=1 and
    MKL_NUM_THREADS=1 into it for its workers)."""
    from ambient_rlhf.data.parallel import build_parallel

    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)
    before = dict(os.environ)
    out = tmp_path / "par"
    with caplog.at_level(logging.INFO, logger="ambient_rlhf"):
        build_parallel(sources, str(out), cfg, workers=os.cpu_count() or 1, parts_dir=str(tmp_path / "parts"))
    assert any("scores reply sentiment in its own process" in r.getMessage() for r in caplog.records)
    assert_same_dir(reference, out)
    assert dict(os.environ) == before
