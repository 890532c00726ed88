"""``ambient data build --workers N`` / ``--cluster ADDRESS``: many inputs at once on Dask.

The single-process build (:func:`ambient_rlhf.data.build.build`) stays the default.  This
one splits the work by input (a dump pair, a table, an SHP file: threads never cross
inputs), runs each input's reading and per-thread labelling as one Dask task
(:func:`ambient_rlhf.data.parts.build_part`) and merges the parts on the driver, in input
order, into the same files, counters and manifest as one process (docs/data.md,
"Parallel builds").

Steps:

1. discover the inputs; key each one (files, config, code) -> its part directory
2. submit one task per input whose part is not already finished (resume)
3. wait for every task: a worker that dies is replaced and its input re-run by Dask
   (up to ``distributed.scheduler.allowed-failures`` times); an input that still fails
   is reported by name, and the finished parts stay for the next run
4. thread ids seen in an earlier input: the later input is re-run with them counted as
   duplicates (what one process does)
5. merge the parts, then tiers, report and manifest as in one process
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from ambient_rlhf import AmbientError
from ambient_rlhf.data.build import finalize
from ambient_rlhf.data.config import DataConfig
from ambient_rlhf.data.parts import build_part, code_digest, merge_parts, part_key, read_part, thread_ids
from ambient_rlhf.data.sources import Input, discover
from ambient_rlhf.io import atomic_dir
from ambient_rlhf.logging import get_logger, progress

log = get_logger("data.parallel")


def default_parts_dir(out: str | Path) -> Path:
    """Where the parts of ``out`` are kept until the build succeeds: ``OUT.parts``."""
    out = Path(out)
    return out.parent / f"{out.name}.parts"


@contextlib.contextmanager
def dask_client(workers: int = 0, cluster: str | None = None) -> Iterator[Any]:
    """A Dask client: connected to the scheduler at ``cluster`` (``tcp://host:8786``), or to
    a ``LocalCluster`` of ``workers`` single-threaded processes on 127.0.0.1."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise AmbientError("a parallel build needs Dask: pip install 'ambient-rlhf[parallel]' "
                           "(or pip install 'dask[distributed]')") from None
    if cluster:
        try:
            client = Client(cluster, timeout="30s")
        except OSError as e:
            raise AmbientError(f"--cluster {cluster}: cannot reach a Dask scheduler there ({e}); start one with "
                               "`dask scheduler` and workers with `dask worker ADDRESS`") from None
        with client:
            yield client
        return
    import dask

    # one thread per worker: the readers are pure Python (the GIL), so processes are the unit;
    # saturation 1.0: a worker holds one input at a time, the others wait on the scheduler for
    # whichever worker frees up first (with the default 1.1 a busy worker could queue a second)
    with _environ_kept(), dask.config.set({"distributed.scheduler.worker-saturation": 1.0}), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None) as lc, Client(lc) as client:
        yield client


@contextlib.contextmanager
def _environ_kept() -> Iterator[None]:
    """Undo, on exit, what starting a local cluster writes into this process's environment:
    Dask's nanny sets ``OMP_NUM_THREADS=1`` (and MKL's, OpenBLAS's) here for its workers and
    leaves them, so every process started after the build -- a training stage, a launcher
    -- would run torch on one thread (and round differently from this one)."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for k in set(os.environ) - set(before):
            del os.environ[k]
        for k, v in before.items():
            if os.environ.get(k) != v:
                os.environ[k] = v


def task_config(cfg: DataConfig, local_workers: int, cores: int | None) -> DataConfig:
    """The config the Dask tasks build with.  Each reader scores reply sentiment beside it
    in a second process (``labels.sentiment_process``) to use a spare core; a local
    cluster with a worker on every core has none to spare, so there the tasks score in
    their own process (the same numbers).  ``local_workers``: 0 for a remote cluster,
    whose machines this process cannot see (set the option there yourself)."""
    lab = cfg.labels
    if local_workers and cores and local_workers >= cores and lab.reply_sentiment and lab.sentiment_process:
        log.info("--workers %d on %d cores: each task scores reply sentiment in its own process "
                 "(labels.sentiment_process=false)", local_workers, cores)
        return dataclasses.replace(cfg, labels=dataclasses.replace(lab, sentiment_process=False))
    return cfg


def build_parallel(sources: list[str], out: str, cfg: DataConfig, overwrite: bool = False, workers: int = 2,
                   cluster: str | None = None, parts_dir: str | None = None, client: Any = None,
                   timings: dict[str, float] | None = None) -> dict:
    """Build ``out`` from ``sources`` with one Dask task per input; return the manifest.

    The directory equals the one :func:`ambient_rlhf.data.build.build` writes (the manifest's
    ``created``, ``command`` and ``seconds`` aside).  ``client``: an existing Dask client
    (else one is made from ``workers``/``cluster``).  Finished parts are kept in
    ``parts_dir`` (default ``OUT.parts``) until the build succeeds, so a failed or
    interrupted build resumes per input.  ``timings``, when given, receives the phases'
    seconds: ``parts`` (wall), ``merge`` and ``finalize`` (wall and ``*_cpu``: this process's)."""
    cfg.validate()
    if client is None and not cluster and workers < 1:
        raise AmbientError(f"--workers must be >= 1 for a parallel build, got {workers}")
    t0 = time.time()
    inputs = discover(list(sources), cfg.source.format)
    parts = Path(parts_dir) if parts_dir else default_parts_dir(out)
    with atomic_dir(out, overwrite) as tmp:  # refuses an existing --out before any work
        parts.mkdir(parents=True, exist_ok=True)
        # a local cluster made here: its workers' cores are this machine's
        local = workers if (client is None and not cluster) else 0
        with contextlib.ExitStack() as stack:
            if client is None:
                client = stack.enter_context(dask_client(workers, cluster))
            metas = _run_parts(client, inputs, task_config(cfg, local, os.cpu_count()), parts)
        t1 = time.time()
        ran = [m for m in metas if not m.get("reused")]
        log.info("%d inputs in %.1f s (%d run: %.1f s of worker CPU, %.1f s of task wall time; %d from an earlier run)",
                 len(metas), t1 - t0, len(ran), sum(m["cpu_seconds"] for m in ran),
                 sum(m["seconds"] for m in ran), len(metas) - len(ran))
        c1 = time.process_time()
        sink, counts, bad, communities = merge_parts(tmp, cfg, [(parts / m["dir"], m) for m in metas])
        t2, c2 = time.time(), time.process_time()
        log.info("merged in %.1f s", t2 - t1)
        manifest = finalize(tmp, t0, sources, inputs, cfg, sink, counts, bad, communities)
        if timings is not None:
            timings.update(parts=t1 - t0, merge=t2 - t1, merge_cpu=c2 - c1, finalize=time.time() - t2,
                           finalize_cpu=time.process_time() - c2)
    shutil.rmtree(parts, ignore_errors=True)
    return manifest


def _part_name(inp: Input, key: str) -> str:
    """Named by its key, so a rerun finds a finished part wherever its input now stands."""
    return f"{Path(inp.paths[0]).name.split('.')[0]}-{key[:16]}"


def _run_parts(client: Any, inputs: list[Input], cfg: DataConfig, parts: Path) -> list[dict[str, Any]]:
    """Every input's finished part (``part.json`` + ``dir``), in input order."""
    code = code_digest()
    keys = [part_key(inp, cfg, [], code) for inp in inputs]
    names = [_part_name(inp, key) for inp, key in zip(inputs, keys)]
    metas = _run_round(client, inputs, cfg, parts, names, keys, [[] for _ in inputs], "inputs")

    # step 4. a thread id offered by an earlier input is a duplicate in a later one
    seen: set[str] = set()
    preseen: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        ids = thread_ids(parts / name)
        dup = seen.intersection(ids)
        if dup:
            preseen[i] = sorted(dup)
        seen.update(ids)
    if preseen:
        log.warning("%d input(s) repeat thread ids of earlier inputs; re-running them with those threads counted "
                    "as duplicates (as one process does): %s", len(preseen),
                    ", ".join(str(inputs[i].paths[0]) for i in preseen))
        idx = sorted(preseen)
        keys2 = [part_key(inputs[i], cfg, preseen[i], code) for i in idx]
        again = _run_round(client, [inputs[i] for i in idx], cfg, parts,
                           [_part_name(inputs[i], k) for i, k in zip(idx, keys2)], keys2, [preseen[i] for i in idx],
                           "inputs with repeated threads")
        for i, m in zip(idx, again):
            metas[i] = m
    return metas


def _run_round(client: Any, inputs: list[Input], cfg: DataConfig, parts: Path, names: list[str],
               keys: list[str], preseen: list[list[str]], what: str) -> list[dict[str, Any]]:
    from dask.distributed import as_completed

    metas: list[dict[str, Any] | None] = [None] * len(inputs)
    todo: dict[str, list[int]] = {}  # key -> inputs: the same files given twice run once
    # largest inputs first: the long tasks start early and the small ones fill the gaps
    order = sorted(range(len(inputs)), key=lambda j: -sum(Path(p).stat().st_size for p in inputs[j].paths))
    for i in order:
        done = read_part(parts / names[i], keys[i])
        if done is not None:
            log.info("input %d/%d %s: finished in an earlier run, reused from %s", i + 1, len(inputs),
                     inputs[i].paths[0], parts / names[i])
            metas[i] = {**done, "dir": names[i], "reused": True}
        else:
            todo.setdefault(keys[i], []).append(i)
    queue = list(todo.values())
    running: dict[Any, list[int]] = {}
    done_futures = as_completed()

    def submit() -> None:
        # no more tasks in flight than worker threads: a worker that dies takes only the input
        # it was running with it (Dask counts a death against every task a worker holds)
        while queue and len(running) < max(1, _threads(client)):
            idx = queue.pop(0)
            i = idx[0]
            # pure=False: a rerun after a failure must run again, not fetch a cached failure
            f = client.submit(build_part, inputs[i], cfg, str(parts / names[i]), keys[i], preseen[i], pure=False,
                              key=f"ambient-part-{names[i]}-{keys[i][:10]}")
            running[f] = idx
            done_futures.add(f)

    failed: list[str] = []
    submit()
    left = sum(len(ix) for ix in todo.values())
    with progress(total=len(inputs), desc=what, unit="input", initial=len(inputs) - left) as bar:
        for f in done_futures:
            for i in running.pop(f):
                if f.status == "finished":
                    metas[i] = {**f.result(), "dir": names[i]}
                    log.info("input %d/%d %s: done", i + 1, len(inputs), inputs[i].paths[0])
                else:
                    why, files = _reason(f.exception()), ", ".join(map(str, inputs[i].paths))
                    failed.append(why if why.startswith(str(inputs[i].paths[0])) else f"{files}: {why}")
                bar.update(1)
            submit()
    if failed:
        ok = sum(m is not None for m in metas)
        raise AmbientError(
            f"{len(failed)} of {len(inputs)} inputs failed (nothing written to --out; the {ok} finished "
            f"inputs are kept in {parts} and the same command resumes from them):\n  " + "\n  ".join(failed))
    lost = [str(inputs[i].paths[0]) for i, m in enumerate(metas) if m is None]
    if lost:  # cannot happen by construction; never merge without an input
        raise AmbientError(f"no result for {len(lost)} input(s): {', '.join(lost)}; run the build again")
    return metas  # type: ignore[return-value]


def _threads(client: Any) -> int:
    """Worker threads in the cluster now (workers may come and go)."""
    return sum(client.nthreads().values())


def _reason(e: BaseException | None) -> str:
    name = type(e).__name__
    if name == "KilledWorker":
        return ("the worker running it died each time it was tried (distributed.scheduler.allowed-failures); "
                "check the workers' memory limit and logs")
    if isinstance(e, AmbientError):
        return str(e)
    return f"{name}: {e}"
