"""One policy for a stage's output directory: fresh, resumed, or refused.

Every training stage calls :func:`prepare_out` before it reads anything.  The rules:

- ``out`` that is, contains or lies inside one of the stage's inputs (data directory,
  model directory, dump file) is refused, whatever the flags: replacing it would delete
  the input (``ambient sft --data D --out D overwrite=true`` used to).
- an absent or empty ``out`` is created and a run starts from step 0 (also with
  ``resume``: nothing to resume means starting, as after a kill before the first
  checkpoint).
- ``out`` holding this stage's run with the same config (compared without the keys in
  :data:`NOT_RESULT_KEYS`): ``resume`` continues from its newest checkpoint, or starts
  over when it has none yet; a finished run (its ``manifest.json`` is written) is left as
  it is and reported as ``finished``.  Without ``resume`` it is refused.
- ``out`` holding another stage's output, another config's output or files no stage
  wrote is refused, with ``resume`` too; ``overwrite`` deletes it and starts over.

What a directory holds is read from its ``manifest.json`` (written when a stage
finishes) or else from :data:`STAGE_FILE`, which this function writes when it starts a
run: the stage name and the config.  Every refusal says what to do.

The module imports torch only to find a checkpoint to resume from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ambient_rlhf import AmbientError
from ambient_rlhf.io import writing

STAGE_FILE = "stage.json"
"""Written into ``out`` when a run starts: ``{"stage", "config", "config_sha256"}``."""
MANIFEST_FILE = "manifest.json"
NOT_RESULT_KEYS = ("resume", "overwrite", "out", "report_to")
"""Config keys that do not change what a stage produces (left out of the comparison)."""


@dataclass
class Prepared:
    """What :func:`prepare_out` found."""

    out: Path
    checkpoint: Path | None = None
    """Newest checkpoint to continue from (``resume`` of an interrupted run), else None."""
    finished: bool = False
    """``resume`` found this stage's finished run of the same config: nothing to do."""


def result_config(config: dict[str, Any], ignore: Iterable[str] = NOT_RESULT_KEYS) -> dict[str, Any]:
    """The config as JSON values, without the keys that do not change the result."""
    drop = set(ignore)
    return json.loads(json.dumps({k: v for k, v in config.items() if k not in drop}, sort_keys=True, default=str))


def config_sha256(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    flat: dict[str, Any] = {}
    for k, v in d.items():
        flat.update(_flat(v, f"{prefix}{k}."))
    return flat


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two (nested) configs."""
    a, b = _flat(before), _flat(now)
    return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def _overlap(out: Path, inputs: Iterable[str | Path]) -> str | None:
    """The first input that ``out`` is, contains or lies inside, described; else None."""
    o = out.resolve()
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        p = Path(inp)
        if not p.exists():  # a model name such as `default`, a reward spec
            continue
        p = p.resolve()
        if o == p:
            return f"is the input {inp}"
        if o in p.parents:
            return f"contains the input {inp}"
        if p in o.parents:
            return f"lies inside the input {inp}"
    return None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _recorded(out: Path) -> tuple[str | None, dict[str, Any] | None, bool]:
    """(stage, config, finished) of what ``out`` holds; stage None when no stage wrote it."""
    m = _read(out / MANIFEST_FILE)
    if m is not None and isinstance(m.get("stage"), str):
        return m["stage"], m.get("config") if isinstance(m.get("config"), dict) else None, True
    s = _read(out / STAGE_FILE)
    if s is not None and isinstance(s.get("stage"), str):
        return s["stage"], s.get("config") if isinstance(s.get("config"), dict) else None, False
    return None, None, False


def _latest_checkpoint(out: Path) -> Path | None:
    from ambient_rlhf.checkpoint import latest_checkpoint  # torch comes with it: only on resume

    return latest_checkpoint(out)


def inspect_out(out: str | Path, stage: str, config: dict[str, Any], resume: bool, overwrite: bool,
                inputs: Iterable[str | Path] = (), ignore: Iterable[str] = NOT_RESULT_KEYS) -> tuple[Prepared, bool]:
    """The decision of :func:`prepare_out` without touching anything: ``(prepared, clear)``
    where ``clear`` says the directory must be emptied before the run.  Raises
    :class:`AmbientError` for a directory the stage must not use."""
    out = Path(out)
    what = _overlap(out, inputs)
    if what:
        raise AmbientError(f"{stage}: --out {out} {what}; writing there would destroy the input "
                           "(even with --overwrite). Choose an --out outside every input")
    if out.exists() and not out.is_dir():
        raise AmbientError(f"{stage}: --out {out} is a file, not a directory; choose another --out")
    if not out.exists() or not any(out.iterdir()):
        return Prepared(out), False
    if overwrite and not resume:
        return Prepared(out), True
    held, before, finished = _recorded(out)
    now = result_config(config, ignore)
    if held is None:
        names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise AmbientError(f"{stage}: output directory exists and holds files no ambient stage wrote ({names}); "
                           "choose another --out, or pass --overwrite to delete them")
    if held != stage:
        raise AmbientError(f"{stage}: output directory {out} exists and holds the output of `ambient {held}`; "
                           "choose another --out (or pass --overwrite to delete it)")
    diff = changed_keys(result_config(before or {}, ignore), now)
    if diff:
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise AmbientError(f"{stage}: output directory {out} exists and holds a run with another config "
                           f"(differs in: {shown}); run again with the same settings to --resume it, pass "
                           "--overwrite to replace it, or choose another --out")
    if not resume:
        state = "a finished" if finished else "an interrupted"
        raise AmbientError(f"{stage}: output directory {out} exists and holds {state} run of this config; "
                           + ("nothing to do (pass --overwrite to train again, or choose another --out)" if finished
                              else "pass --resume to continue it, --overwrite to start over, or choose another --out"))
    if finished:
        return Prepared(out, finished=True), False
    ckpt = _latest_checkpoint(out)
    # no checkpoint yet: the run was stopped before its first one, so it starts over
    return Prepared(out, checkpoint=ckpt), ckpt is None


def prepare_out(out: str | Path, stage: str, config: dict[str, Any], resume: bool = False, overwrite: bool = False,
                accelerator: Any = None, inputs: Iterable[str | Path] = (),
                ignore: Iterable[str] = NOT_RESULT_KEYS) -> Prepared:
    """Check ``out`` for ``stage`` (see the module docstring), create or clear it, record
    the stage; return what to do (:class:`Prepared`).

    Args:
        out: the output directory.
        stage: the stage's name as its manifest records it (``sft``, ``rm``, ``rl``).
        config: the resolved config, as ``to_dict(cfg)`` gives it.
        resume, overwrite: the stage's flags.
        accelerator: under several processes, anything with ``is_main_process`` and
            ``wait_for_everyone()``: every process checks (so all raise the same error),
            then the main process alone clears, creates and records, between barriers.
        inputs: every path the stage reads (data directories, model directories, files);
            names that are not paths are skipped.
        ignore: config keys left out of the comparison.
    """
    inputs = list(inputs)
    prepared, clear = inspect_out(out, stage, config, resume, overwrite, inputs, ignore)
    main = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if main and not prepared.finished:
        o = prepared.out
        with writing(o, "the output directory"):
            if clear:
                shutil.rmtree(o)
            o.mkdir(parents=True, exist_ok=True)
            if prepared.checkpoint is None:
                rec = result_config(config, ignore)
                _write_json(o / STAGE_FILE, {"stage": stage, "config": rec, "config_sha256": config_sha256(rec),
                                            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return prepared


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
