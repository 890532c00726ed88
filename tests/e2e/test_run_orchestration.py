"""``ambient run`` orchestration: skip finished stages, resume an interrupted one, re-run
a changed stage and everything downstream of it.

The stage functions are replaced through the documented injection point
(``ambient_rlhf.run.execute(run_dir, stages, runners)``, which ``run_pipeline`` calls
with the real plan and :data:`ambient_rlhf.run.RUNNERS`) by small local functions that write a
manifest (and a checkpoint), so these tests take milliseconds and need no model.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from ambient_rlhf import AmbientError
from ambient_rlhf.checkpoint import latest_checkpoint, save_checkpoint
from ambient_rlhf.config import to_dict
from ambient_rlhf.io import write_manifest
from ambient_rlhf.run import KEY_FIELD, Stage, execute, stage_key


@dataclass
class Cfg:
    value: int = 0
    out: str = ""
    resume: bool = False


class Recorder:
    """Runners that log their calls; ``interrupt`` makes stage ``b`` checkpoint and stop."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.interrupt = False

    def make(self, kind: str):
        def runner(cfg: Cfg, resume: bool, out: str) -> None:
            self.calls.append((kind, resume))
            if kind == "b" and resume:
                assert latest_checkpoint(out) is not None  # resumed where it stopped
            if kind == "b" and self.interrupt:
                save_checkpoint(out, 1, {"step": 1})
                raise KeyboardInterrupt
            write_manifest(out, kind, to_dict(cfg))
        return runner

    def runners(self) -> dict:
        return {k: self.make(k) for k in ("a", "b", "c")}


def _stages(run: Path, a=1, b=2, c=3) -> list[Stage]:
    return [Stage("a", "a", Cfg(a, str(run / "a"))),
            Stage("b", "b", Cfg(b, str(run / "b")), ["a"], resumable=True),
            Stage("c", "c", Cfg(c, str(run / "c")), ["b"])]


def _statuses(run: Path) -> dict[str, str]:
    return {s["name"]: s["status"] for s in json.loads((run / "manifest.json").read_text())["stages"]}


def test_skip_rerun_on_change_and_resume(tmp_path):
    run = tmp_path / "run"
    rec = Recorder()

    # 1. a fresh run runs every stage and stamps each manifest with its key
    m = execute(run, _stages(run), rec.runners())
    assert rec.calls == [("a", False), ("b", False), ("c", False)]
    assert [s["status"] for s in m["stages"]] == ["ran"] * 3 and all(s["seconds"] >= 0 for s in m["stages"])
    for name in "abc":
        assert json.loads((run / name / "manifest.json").read_text())[KEY_FIELD]

    # 2. the same command again: nothing runs
    rec.calls.clear()
    execute(run, _stages(run), rec.runners())
    assert rec.calls == [] and _statuses(run) == {"a": "skipped", "b": "skipped", "c": "skipped"}

    # 3. change b's config: b and c (downstream) re-run, a does not
    execute(run, _stages(run, b=20), rec.runners())
    assert rec.calls == [("b", False), ("c", False)]

    # 4. interrupt b after its first checkpoint: the run stops there and says so
    rec.calls.clear()
    rec.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        execute(run, _stages(run, b=21), rec.runners())
    assert rec.calls == [("b", False)]
    assert _statuses(run) == {"a": "skipped", "b": "interrupted", "c": "pending"}
    assert latest_checkpoint(run / "b") is not None

    # 5. the same command again resumes b from its checkpoint, then runs c
    rec.calls.clear()
    rec.interrupt = False
    execute(run, _stages(run, b=21), rec.runners())
    assert rec.calls == [("b", True), ("c", False)]
    assert _statuses(run) == {"a": "skipped", "b": "ran", "c": "ran"}


def test_interrupted_stage_with_changed_config_starts_over(tmp_path):
    run = tmp_path / "run"
    rec = Recorder()
    rec.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        execute(run, _stages(run), rec.runners())
    rec.interrupt = False
    rec.calls.clear()
    # b's config changed since the interruption: its checkpoint belongs to another config,
    # so the directory is cleared and b starts from scratch (resume=False)
    execute(run, _stages(run, b=5), rec.runners())
    assert rec.calls == [("b", False), ("c", False)]


def test_keys_are_relative_to_the_run_directory(tmp_path):
    """A moved run directory is still up to date (paths enter the key relative to it)."""
    run = tmp_path / "run"
    rec = Recorder()
    execute(run, _stages(run), rec.runners())
    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    rec.calls.clear()
    execute(moved, _stages(moved), rec.runners())
    assert rec.calls == []
    # and a key changes with the config, the kind and the upstream keys
    s = _stages(run)
    k = stage_key(s[1], run, ["x"])
    assert k == stage_key(_stages(moved)[1], moved, ["x"])
    assert k != stage_key(_stages(run, b=9)[1], run, ["x"])
    assert k != stage_key(s[1], run, ["y"])
    assert k == stage_key(Stage("b", "b", Cfg(2, str(run / "b"), resume=True)), run, ["x"])  # resume is volatile


def test_a_rebuilt_data_stage_that_wrote_the_same_tables_keeps_its_dependents(tmp_path):
    """The data stage reruns when its config (here: its sources' identity) changes; the
    stages after it rerun only when the tables it wrote changed too."""
    run = tmp_path / "run"
    calls: list[str] = []
    tables = {"rows": "1,2,3"}

    def runner(kind):
        def go(cfg, resume, out):
            calls.append(kind)
            Path(out).mkdir(parents=True, exist_ok=True)
            if kind == "data":
                (Path(out) / "responses.csv").write_text(tables["rows"])
            write_manifest(out, kind, to_dict(cfg))  # a new 'created' time each run
        return go

    def stages(source_mtime):
        return [Stage("data", "data", Cfg(source_mtime, str(run / "data"))),
                Stage("sft", "b", Cfg(2, str(run / "sft")), ["data"]),
                Stage("eval", "c", Cfg(3, str(run / "eval")), ["sft"])]

    runners = {"data": runner("data"), "b": runner("b"), "c": runner("c")}
    execute(run, stages(1), runners)
    assert calls == ["data", "b", "c"]
    calls.clear()
    execute(run, stages(2), runners)  # the dump was touched: data reruns, the same tables
    assert calls == ["data"] and _statuses(run) == {"data": "ran", "sft": "skipped", "eval": "skipped"}
    calls.clear()
    tables["rows"] = "1,2,4"
    execute(run, stages(3), runners)  # touched and changed: everything after data reruns
    assert calls == ["data", "b", "c"]
    calls.clear()
    execute(run, stages(3), runners)  # and then all is up to date
    assert calls == []


def test_stage_without_manifest_is_an_error(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(AmbientError, match="without writing"):
        execute(run, _stages(run)[:1], {"a": lambda cfg, resume, out: None})
    assert _statuses(run) == {"a": "failed"}


_TWO_PROCESS_SCRIPT = '''
import os, sys
from dataclasses import dataclass
from pathlib import Path
from ambient_rlhf.io import write_manifest
from ambient_rlhf.run import Stage, execute

rank = int(os.environ["RANK"])

@dataclass
class Cfg:
    value: int = 0

def make(kind):
    def runner(cfg, resume, out):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"rank{rank}").write_text("ran")
        if rank == 0:
            write_manifest(out, kind, {"value": cfg.value})
    return runner

run = Path(sys.argv[1])
stages = [Stage("data", "data", Cfg(1)), Stage("sft", "sft", Cfg(2), ["data"]), Stage("eval", "eval", Cfg(3), ["sft"])]
execute(run, stages, {k: make(k) for k in ("data", "sft", "eval")})
'''


def test_two_processes_share_the_training_stages_only(tmp_path):
    """Under torchrun (2 CPU processes, gloo): SFT runs on both processes, the other
    stages on the main one; the second launch skips everything on both."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:  # a free port, so parallel test runs do not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    script = tmp_path / "two.py"
    script.write_text(_TWO_PROCESS_SCRIPT)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(script), str(run)]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "AMBIENT_PROGRESS": "0"}
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    assert sorted(p.name for p in (run / "data").glob("rank*")) == ["rank0"]
    assert sorted(p.name for p in (run / "sft").glob("rank*")) == ["rank0", "rank1"]
    assert sorted(p.name for p in (run / "eval").glob("rank*")) == ["rank0"]
    assert _statuses(run) == {"data": "ran", "sft": "ran", "eval": "ran"}
    # the markers of the training stages go (data's stay: the stages after data key on
    # the files it wrote, run.CONTENT_KEYED); a stage that runs again writes them anew
    data_marker = (run / "data" / "rank0").stat().st_mtime_ns
    for f in run.glob("*/rank*"):
        if f.parent.name != "data":
            f.unlink()
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    assert not list(run.glob("[!d]*/rank*"))  # nothing ran again, on either process
    assert (run / "data" / "rank0").stat().st_mtime_ns == data_marker
    assert _statuses(run) == {"data": "skipped", "sft": "skipped", "eval": "skipped"}


def test_until_stops_after_the_named_stage_and_a_full_run_finishes(tmp_path):
    from ambient_rlhf.run import RUNNERS, load_run_config, run_pipeline

    calls: list[str] = []

    def runner(cfg, resume: bool, out: str) -> None:
        calls.append(Path(out).name)
        write_manifest(out, "stub", {})

    cfg = load_run_config(None, [f"out={tmp_path / 'run'}"])
    runners = {k: runner for k in RUNNERS}
    m = run_pipeline(cfg, runners, until="rm-gold")
    assert calls == ["simulate", "data", "sft", "sft-tier", "rm-proxy", "rm-gold"]
    assert [s["name"] for s in m["stages"]] == calls
    calls.clear()
    run_pipeline(cfg, runners)  # without --until: only the stages after rm-gold run
    assert calls == ["truth", "rl", "eval", "eval-goal", "eval-steer", "report"]
    with pytest.raises(AmbientError, match="not a stage of this run.*rm-proxy"):
        run_pipeline(cfg, runners, until="rm")
