"""Reading a run directory: which stage directories it holds and what each one wrote."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger, read_jsonl

log = get_logger("report")

REPORT_DIR = "report"
REPORT_FILE = "report.html"
STAGES = ("simulate", "data", "sft", "rm", "rl", "dpo", "eval", "truth", "label")
OPTIONAL_STAGES = ("dpo", "label")
"""Stages outside the default pipeline: listed in the stages table only when present (DPO
runs with ``ambient run method=dpo|both``)."""
STAGE_TITLES = {"simulate": "Simulated community", "data": "Data", "sft": "Behaviour cloning (SFT)",
                "rm": "Reward models", "rl": "Policy optimisation (RL)",
                "dpo": "Direct preference optimisation (DPO)", "eval": "Policy evaluation",
                "truth": "Recovery of the true utility (simulated community)",
                "label": "Explicit comparisons (ambient label export)"}


@dataclass
class StageDir:
    """One stage output directory and what it holds."""

    name: str
    path: Path
    stage: str
    manifest: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        if path.exists():
            log.warning("%s: unreadable (%s); ignored", path, e)
        return None
    return obj if isinstance(obj, dict) else None


def _classify(name: str, manifest: dict[str, Any]) -> str | None:
    st = str(manifest.get("stage", "")).lower()
    for key, aliases in (("simulate", ("simulate",)), ("data", ("data",)), ("sft", ("sft",)),
                         ("rm", ("rm", "reward", "rm-combine")), ("rl", ("rl",)), ("dpo", ("dpo",)),
                         ("eval", ("eval",)), ("truth", ("truth",)), ("label", ("label",))):
        if st in aliases:
            return key
    n = name.lower()
    for key in STAGES:
        if n == key or n.startswith(key + "-") or n.startswith(key + "_"):
            return key
    return None


def _load_stage(path: Path, name: str | None = None) -> StageDir | None:
    manifest = _read_json(path / "manifest.json") or {}
    if not manifest and not (path / "eval.json").exists() and not (path / "metrics.jsonl").exists():
        return None
    stage = _classify(path.name, manifest)  # by its own name: a nested one is named by its relative path
    if stage is None:
        return None
    return StageDir(name=name or path.name, path=path, stage=stage, manifest=manifest,
                    eval=_read_json(path / "eval.json"), metrics=read_jsonl(path / "metrics.jsonl"))


MAX_DEPTH = 3
"""How far below RUN_DIR stage directories are looked for (``runs/`` holding ``sft/``, or
``runs/exp1/sft/``); a stage directory's own subdirectories are never searched."""
SKIP_DIRS = (REPORT_DIR, "checkpoints", "tensorboard", "adapter", "__pycache__")


def _stage_dirs(root: Path, depth: int = 1, prefix: str = ""):
    """(name, path) of the stage directories below ``root``, depth first, each named by its
    path relative to the run directory."""
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in SKIP_DIRS)
    except OSError as e:
        log.warning("%s: unreadable (%s); skipped", root, e)
        return
    for sub in subs:
        name = prefix + sub.name
        s = _load_stage(sub, name)
        if s is not None:
            yield s
        elif depth < MAX_DEPTH:
            yield from _stage_dirs(sub, depth + 1, name + "/")


def discover(run_dir: str | Path) -> dict[str, list[StageDir]]:
    """Stage directories of a run, grouped by stage (``simulate``, ``data``, ``sft``, ``rm``,
    ``rl``, ``eval``, ``truth``), found up to :data:`MAX_DEPTH` levels below ``run_dir``."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AmbientError(f"{run}: not a directory; give a run directory (from `ambient run`) or a stage directory")
    found: dict[str, list[StageDir]] = {k: [] for k in STAGES}
    own = _read_json(run / "manifest.json")
    if own is not None and _classify(run.name, own) is not None and own.get("stage") != "run":
        s = _load_stage(run.resolve(), run.resolve().name)  # a single stage directory
        if s is not None:
            found[s.stage].append(s)
            return found
    for s in _stage_dirs(run):
        found[s.stage].append(s)
    for st in STAGES:  # in the order they ran (simulate before data), then by name
        found[st].sort(key=lambda s: (str(s.manifest.get("created", "~")), s.name))
    return found
