"""``ambient run [CONFIG] [key=value ...]``: the whole pipeline in one run directory.

    ambient run                                   # the demo: a simulated community, SmolLM2
    ambient run askacademia data.sources=../shared/data/reddit-askacademia
    ambient run demo out=runs/x sft.max_steps=10 rl.max_steps=5
    ambient run my-run.yaml                       # a YAML file of your own

CONFIG is a preset shipped in ``ambient_rlhf/presets/`` (by name) or a YAML file; its keys
go on top of the demo preset's, then ``key=value`` overrides.  Keys that connect the
stages (paths, ``sft.condition``, ``rm.train_half``, ``eval.goal``, ...; ``RUN_SET`` in :mod:`ambient_rlhf.run_config`)
are set by the run, and giving one is an error.  The resolved config is written to
``RUN_DIR/config.resolved.yaml``.

Stages, each in its own subdirectory of ``out`` with its ``manifest.json``::

    simulate/   the simulated community (only when no data sources are given)
    data/       ambient data build
    sft/        behaviour cloning (the reference and RL's starting point)
    sft-tier/   tier-conditioned SFT (goal tokens; ``goal_model=true``)
    rm-proxy/   reward model on half ``a`` of the train threads: RL optimises it
    rm-gold/    reward model on half ``b``: only judges (Gao et al. 2022)
    truth/      simulated community only: how well the raw score, the adjusted rank and
                both reward models recover the hidden utility (within-thread Spearman)
    rl/         policy optimisation against rm-proxy, KL to sft (``method`` rl or both)
    eval/       rl vs sft on held-out prompts, judged by rm-gold
    dpo/        direct preference optimisation on the pairs, from sft (``method`` dpo or both)
    eval-dpo/   dpo vs sft, the same prompts and judge as eval/
    eval-goal/  sft-tier with <|tier:good|> vs sft, same judge
    eval-steer/ the steering test: sft-tier with <|tier:good|> vs itself with <|tier:bad|>
    report/     report.html

**Idempotent.**  Every stage has a *key*: the sha256 of its resolved config (paths
relative to the run directory; ``resume``/``overwrite`` left out) and the keys of the
stages it reads.  After a stage finishes, its key is recorded in its manifest
(``run_key``); a re-run skips every stage whose manifest carries the current key.
Changing a stage's config changes its key and the keys of every stage downstream, so
exactly those re-run.  A stage that was interrupted (the run manifest says it started
with the same key) is resumed from its newest checkpoint when it has ``resume``;
otherwise its directory is cleared and it runs again.

**One view.**  A progress bar over the stages (each stage adds its own bar below it);
``manifest.json`` in the run directory lists every stage with its status, key and
seconds, and is rewritten after each stage, so an interrupted run shows how far it got.

**Injection point.**  :data:`RUNNERS` maps a stage kind to the function that runs it
(``runner(stage_config, resume, out_dir) -> None``); :func:`run_pipeline` takes
replacements for some of them, and :func:`execute` runs any list of :class:`Stage` s
with any runners, which is how the orchestration tests check skip / resume /
re-run-on-change with small local functions instead of training.

**Several processes.**  Under ``accelerate launch``/``torchrun`` SFT, RL and DPO run on every
process; the other stages run on the main process while the rest wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ambient_rlhf import AmbientError
from ambient_rlhf.config import to_dict
from ambient_rlhf.data.simulate import SimulateConfig
from ambient_rlhf.io import write_json, write_manifest
from ambient_rlhf.logging import get_logger, progress, progress_enabled
from ambient_rlhf.rounds import RUNNERS as ROUND_RUNNERS
from ambient_rlhf.rounds import plan_rounds
from ambient_rlhf.run_config import (DEMO, PRESETS, RESOLVED_FILE, RUN_SET, RunConfig, find_preset,  # noqa: F401
                                     load_run_config, preset_names, resolved_yaml, run_config_help, stage_config_types)

log = get_logger("run")

RUN_MANIFEST = "manifest.json"
KEY_FIELD = "run_key"
"""Field of a stage's manifest.json holding the key it was produced with."""
_VOLATILE = ("resume", "overwrite", "report_to")  # none of them changes what a stage writes
"""Config fields that do not change a stage's result (left out of its key)."""


# ---- stages and keys -----------------------------------------------------------------------
@dataclass
class Stage:
    """One step of the plan: ``runner(config, resume)`` writes ``run_dir/name``."""

    name: str
    kind: str
    config: Any
    deps: list[str] = field(default_factory=list)
    resumable: bool = False


def _relative(obj: Any, root: str) -> Any:
    if isinstance(obj, str):
        return obj.replace(root, "$RUN") if root and obj.startswith(root) else obj
    if isinstance(obj, dict):
        return {k: _relative(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, root) for v in obj]
    return obj


def _file_identity(path: str) -> Any:
    """Cheap identity of a source: size and mtime of each file (a dump can be GBs)."""
    p = Path(path)
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def stage_key(stage: Stage, run_dir: Path, dep_keys: list[str]) -> str:
    """sha256 of the stage's config (paths relative to the run, volatile fields dropped),
    its kind and the keys of the stages it reads."""
    cfg = to_dict(stage.config)
    if isinstance(cfg, dict):
        cfg = {k: v for k, v in cfg.items() if k not in _VOLATILE}
    cfg = _relative(cfg, str(run_dir))
    blob = json.dumps({"kind": stage.kind, "config": cfg, "deps": dep_keys}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


CONTENT_KEYED = {"data"}
"""Stage kinds whose dependents key on what the stage wrote instead of on its own key:
the data stage knows its sources only by size and modification time, so a dump copied
or touched again rebuilds it (seconds), but when the rebuild writes the same tables the
training stages after it stay up to date instead of starting over (tens of minutes)."""


def output_key(out: Path) -> str:
    """sha256 of the names and bytes of every file under ``out`` but its manifest (which
    records when and how the stage ran)."""
    h = hashlib.sha256()
    for f in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"):
        h.update(str(f.relative_to(out)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:16]


def plan(cfg: RunConfig) -> list[Stage]:
    """The stages of a run, in order, with their configs wired to each other's outputs."""
    run = Path(cfg.out)
    d = {n: str(run / n) for n in ("simulate", "data", "sft", "sft-tier", "rm-proxy", "rm-gold", "truth", "rl", "eval",
                                   "dpo", "eval-dpo", "eval-goal", "eval-steer", "report")}
    r = dataclasses.replace
    stages: list[Stage] = []
    if cfg.sources:
        sources = list(cfg.sources)
        data_deps: list[str] = []
        source_id = {s: _file_identity(s) for s in sources}
    else:
        stages.append(Stage("simulate", "simulate", r(cfg.simulate), []))
        sources = [d["simulate"]]
        data_deps, source_id = ["simulate"], {}
    stages.append(Stage("data", "data", {"sources": sources, "config": cfg.data, "source_files": source_id}, data_deps))
    sft = r(cfg.sft, data=d["data"], model=cfg.model, out=d["sft"], condition="none", resume=False, overwrite=True)
    stages.append(Stage("sft", "sft", sft, ["data"], resumable=True))
    if cfg.goal_model:
        stages.append(Stage("sft-tier", "sft", r(sft, condition="tier", out=d["sft-tier"]), ["data"], resumable=True))
    rm_model, rm_deps = (d["sft"], ["data", "sft"]) if cfg.rm_init == "sft" else (cfg.model, ["data"])
    if cfg.rm_model:
        rm_model, rm_deps = cfg.rm_model, ["data"]
    # head-only reward models share one on-disk feature cache per run (keyed by backbone
    # and token ids): the two halves' common texts and the evaluations are computed once
    rm_cache = cfg.rm.feature_cache or (str(run / "cache" / "rm-features") if cfg.rm.train_layers == 0 else "")
    for name, half, seed in (("rm-proxy", "a", cfg.rm.seed), ("rm-gold", "b", cfg.rm.seed + 1)):
        # own threads and own seed (head init, batch order): the judge is independent of the proxy
        rm = r(cfg.rm, data=[d["data"]], model=rm_model, out=d[name], train_half=half, seed=seed, feature_cache=rm_cache)
        stages.append(Stage(name, "rm", _volatile_off(rm), rm_deps, resumable=hasattr(rm, "resume")))
    if not cfg.sources:  # the hidden utility is known: how well do labels and reward models recover it?
        truth = {"data": d["data"], "reward_models": {"rm-proxy": d["rm-proxy"], "rm-gold": d["rm-gold"]},
                 "split": cfg.eval.split, "batch_size": cfg.eval.batch_size}
        stages.append(Stage("truth", "truth", truth, ["data", "rm-proxy", "rm-gold"]))
    ev = r(cfg.eval, policy=d["rl"], reference=d["sft"], judge=d["rm-gold"], proxy=d["rm-proxy"], data=d["data"],
           out=d["eval"], goal=None, reference_goal=None, overwrite=True,
           sample_cache=cfg.eval.sample_cache or str(run / "cache" / "eval-samples"))
    if cfg.method in ("rl", "both"):
        rl = r(cfg.rl, policy=d["sft"], reward=d["rm-proxy"], data=d["data"], out=d["rl"])
        stages.append(Stage("rl", "rl", _volatile_off(rl), ["data", "sft", "rm-proxy"], resumable=hasattr(rl, "resume")))
        stages.append(Stage("eval", "eval", ev, ["data", "sft", "rm-proxy", "rm-gold", "rl"]))
    if cfg.method in ("dpo", "both"):
        # half a, as the proxy RL optimises: the gold judge (half b) never saw DPO's pairs
        dpo = r(cfg.dpo, data=d["data"], model=d["sft"], out=d["dpo"], resume=False, overwrite=True, train_half="a")
        stages.append(Stage("dpo", "dpo", dpo, ["data", "sft"], resumable=True))
        stages.append(Stage("eval-dpo", "eval", r(ev, policy=d["dpo"], out=d["eval-dpo"]),
                            ["data", "sft", "rm-proxy", "rm-gold", "dpo"]))
    if cfg.goal_model:
        stages.append(Stage("eval-goal", "eval", r(ev, policy=d["sft-tier"], goal="good", out=d["eval-goal"]),
                            ["data", "sft", "sft-tier", "rm-proxy", "rm-gold"]))
        # the steering test: the same model and seeds, only the goal token differs
        steer = r(ev, policy=d["sft-tier"], reference=d["sft-tier"], goal="good", reference_goal="bad",
                  out=d["eval-steer"])
        stages.append(Stage("eval-steer", "eval", steer, ["data", "sft-tier", "rm-proxy", "rm-gold"]))
    stages.append(Stage("report", "report", {"run_dir": str(run)}, [s.name for s in stages]))
    return plan_rounds(cfg, stages, Stage)  # rounds 2..N (rounds=N), before the report


def _volatile_off(cfg: Any) -> Any:
    """resume=False, overwrite=True where the config has them (the run decides both)."""
    kw = {k: v for k, v in (("resume", False), ("overwrite", True)) if hasattr(cfg, k)}
    return dataclasses.replace(cfg, **kw) if kw else cfg


# ---- runners: the stage entry points (imported lazily; replaceable in tests) -----------------
def _run_simulate(cfg: SimulateConfig, resume: bool, out: str) -> None:
    from ambient_rlhf.simulate import simulate

    simulate(out, cfg, overwrite=True)


def _run_data(spec: dict, resume: bool, out: str) -> None:
    from ambient_rlhf.data.build import build

    build(list(_dump_files(spec["sources"])), out, spec["config"], overwrite=True)


def _dump_files(sources: list[str]):
    """A simulated community directory is passed as its two dump files (the directory
    also holds manifest.json and the truth table, which are not inputs)."""
    for s in sources:
        p = Path(s)
        if p.is_dir() and (p / "manifest.json").is_file() and json.loads((p / "manifest.json").read_text()).get("stage") == "simulate":
            yield from (str(x) for x in sorted(p.glob("*_submissions.ndjson*")) + sorted(p.glob("*_comments.ndjson*")))
        else:
            yield s


def _run_sft(cfg: Any, resume: bool, out: str) -> None:
    from ambient_rlhf.train.sft import train_sft

    train_sft(dataclasses.replace(cfg, resume=resume, overwrite=not resume))


def _run_rm(cfg: Any, resume: bool, out: str) -> None:
    from ambient_rlhf.train.reward import train_reward

    train_reward(_with_resume(cfg, resume))


def _run_rl(cfg: Any, resume: bool, out: str) -> None:
    from ambient_rlhf.train.rl import train_rl

    train_rl(_with_resume(cfg, resume))


def _run_dpo(cfg: Any, resume: bool, out: str) -> None:
    from ambient_rlhf.train.dpo import train_dpo

    train_dpo(_with_resume(cfg, resume))


def _run_eval(cfg: Any, resume: bool, out: str) -> None:
    from ambient_rlhf.eval.policy_eval import evaluate_policy

    evaluate_policy(cfg)


def _run_truth(spec: dict, resume: bool, out: str) -> None:
    from ambient_rlhf.simulate import evaluate_recovery

    evaluate_recovery(spec["data"], spec["reward_models"], out, split=spec["split"], batch_size=spec["batch_size"])


def _run_report(spec: dict, resume: bool, out: str) -> None:
    from ambient_rlhf.eval.report import write_report

    write_report(spec["run_dir"])


def _with_resume(cfg: Any, resume: bool) -> Any:
    kw = {k: v for k, v in (("resume", resume), ("overwrite", not resume)) if hasattr(cfg, k)}
    return dataclasses.replace(cfg, **kw) if kw else cfg


Runner = Callable[[Any, bool, str], None]
RUNNERS: dict[str, Runner] = {
    "simulate": _run_simulate, "data": _run_data, "sft": _run_sft, "rm": _run_rm, "rl": _run_rl, "dpo": _run_dpo,
    "truth": _run_truth, "eval": _run_eval, "report": _run_report, **ROUND_RUNNERS,
}
"""Stage kind -> ``runner(stage_config, resume, out_dir)``.  The injection point of
:func:`run_pipeline` (tests pass small local functions)."""


# ---- the orchestration ---------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
        return obj if isinstance(obj, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def _has_checkpoint(path: Path) -> bool:
    from ambient_rlhf.checkpoint import latest_checkpoint

    return latest_checkpoint(path) is not None


def run_pipeline(cfg: RunConfig, runners: dict[str, Runner] | None = None, until: str | None = None) -> dict[str, Any]:
    """Run (or finish) the pipeline of ``cfg`` in ``cfg.out``; return the run manifest.

    ``runners`` replaces entries of :data:`RUNNERS` (the injection point); ``until`` stops
    after the stage of that name (its later stages are left as they are)."""
    stages = plan(cfg)
    if until:
        names = [s.name for s in stages]
        if until not in names:
            raise AmbientError(f"run: --until {until!r} is not a stage of this run; the stages are: {', '.join(names)}")
        stages = stages[: names.index(until) + 1]
    return execute(Path(cfg.out), stages, {**RUNNERS, **(runners or {})}, to_dict(cfg))


DISTRIBUTED_KINDS = {"sft", "rm", "rl", "dpo"}
"""Stage kinds that run on every process under ``accelerate launch`` / ``torchrun``
(their trainers shard the batch); every other stage runs on the main process while the
others wait at a barrier."""
BARRIER_HOURS = 12
"""Process-group timeout: how long the other processes may wait for a main-process stage."""


def _processes() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier); one process unless launched by accelerate/torchrun.

    The process group is the one the trainers use (accelerate's shared state, gloo on
    CPU, NCCL on GPUs), created here with a long timeout so that processes can wait
    through a main-process stage."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from datetime import timedelta

    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=BARRIER_HOURS))
    if state.num_processes <= 1:
        raise AmbientError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate set up a single process; "
                           "launch with `accelerate launch` or `torchrun`")
    return state.process_index, state.num_processes, state.wait_for_everyone


def execute(run_dir: Path, stages: list[Stage], runners: dict[str, Runner], config: dict | None = None) -> dict[str, Any]:
    """Run ``stages`` in order into ``run_dir``: skip those whose manifest carries their
    current key, resume an interrupted resumable one, run the rest from scratch.
    Writes and returns the run manifest (``config`` is recorded in it and, as YAML, in
    ``config.resolved.yaml``)."""
    run_dir = Path(run_dir)
    rank, world, barrier = _processes()
    main = rank == 0
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (run_dir / RESOLVED_FILE).write_text(resolved_yaml(config))
    barrier()
    previous = {s["name"]: s for s in (_read_json(run_dir / RUN_MANIFEST) or {}).get("stages", [])}
    records: list[dict[str, Any]] = []
    keys: dict[str, str] = {}
    t_run = time.time()
    n = len(stages)

    def save(status: str) -> dict[str, Any]:
        done = {r["name"] for r in records}
        pending = [{"name": s.name, "status": "pending"} for s in stages if s.name not in done]
        m = {"stages": records + pending, "status": status, "seconds": round(time.time() - t_run, 1)}
        if not main:
            return m
        return write_manifest(run_dir, "run", config or {}, inputs=[], counts={"stages": n}, processes=world, **m)

    if main:
        bar = progress(total=n, desc="ambient run", unit="stage", leave=True)
    else:  # one view: only the main process draws
        from tqdm.auto import tqdm

        bar = tqdm(total=n, disable=True)
    say = bar.write if (progress_enabled() and main) else (log.info if main else (lambda msg: None))
    try:
        for i, st in enumerate(stages, 1):
            out = run_dir / st.name
            key = stage_key(st, run_dir, [keys[d] for d in st.deps])
            keys[st.name] = key  # what dependents read: the key, or the output (CONTENT_KEYED)
            prev = previous.get(st.name, {})
            bar.set_description(f"ambient run [{i}/{n}] {st.name}")
            barrier()  # every process sees the same files when it decides
            m = _read_json(out / "manifest.json")
            if m is not None and m.get(KEY_FIELD) == key:
                if st.kind in CONTENT_KEYED:
                    keys[st.name] = "output:" + output_key(out)
                records.append({"name": st.name, "status": "skipped", "key": key, "seconds": 0.0,
                                "ran_seconds": prev.get("ran_seconds")})
                say(f"[{i}/{n}] {st.name}: up to date (key {key}), skipped")
                bar.update(1)
                continue
            # an interrupted stage resumes only with the very config it started with
            resume = bool(st.resumable and prev.get("key") == key and prev.get("status") in ("running", "interrupted", "failed")
                          and out.is_dir() and _has_checkpoint(out))
            barrier()
            if main and out.exists() and not resume:
                shutil.rmtree(out)
            records.append({"name": st.name, "status": "running", "key": key, "resumed": resume,
                            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            save("running")
            say(f"[{i}/{n}] {st.name}: {'resuming from its last checkpoint' if resume else 'running'}")
            barrier()
            t0, c0 = time.time(), time.process_time()
            try:
                if main or st.kind in DISTRIBUTED_KINDS:
                    runners[st.kind](st.config, resume, str(out))
                m = _read_json(out / "manifest.json") if main else {}
                if m is None:
                    raise AmbientError(f"stage {st.name} finished without writing {out / 'manifest.json'}")
            except BaseException as e:
                records[-1].update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                                   seconds=round(time.time() - t0, 1), error=f"{type(e).__name__}: {e}"[:500])
                save(records[-1]["status"])
                raise
            if main:
                m[KEY_FIELD] = key
                write_json(out / "manifest.json", m)
            barrier()  # the main process has written the manifest
            if st.kind in CONTENT_KEYED:
                keys[st.name] = "output:" + output_key(out)
            seconds = round(time.time() - t0, 1)
            # CPU seconds of this process (all its threads): on a shared machine they say
            # more about the stage's cost than the wall time does
            records[-1].update(status="ran", seconds=seconds, ran_seconds=seconds,
                               cpu_seconds=round(time.process_time() - c0, 1))
            save("running")
            say(f"[{i}/{n}] {st.name}: done in {seconds:.0f} s")
            bar.update(1)
    finally:
        bar.close()
    barrier()
    manifest = save("finished")
    report = run_dir / "report" / "report.html"
    if report.is_file():
        say(f"report: {report}")
    return manifest

