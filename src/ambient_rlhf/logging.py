"""Logging, progress bars and metric files shared by every stage.

* Logging is quiet by default (warnings only); ``-v`` gives INFO, ``-vv`` DEBUG.
* :func:`progress` wraps tqdm (items/s and ETA); ``AMBIENT_PROGRESS=0`` turns bars off.
* :class:`MetricsWriter` appends one JSON object per step to ``metrics.jsonl`` and sends
  the same numbers to the experiment trackers it is given (``train/trackers.py``:
  accelerate's TensorBoard, W&B, MLflow, ... integrations, the stages' ``report_to``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from ambient_rlhf.io import writing

from tqdm.auto import tqdm

_ROOT = "ambient_rlhf"


def setup_logging(verbosity: int = 0) -> None:
    """Configure the package logger: 0 = warnings, 1 = info, 2+ = debug."""
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logger = logging.getLogger(_ROOT)
    logger.setLevel(level)
    if not any(getattr(h, "_ambient", False) for h in logger.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
        h._ambient = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    logger.propagate = False
    if verbosity < 2:
        # third-party chatter (transformers' own warnings, datasets' progress) stays quiet
        for name in ("transformers", "datasets", "accelerate", "peft", "urllib3", "filelock"):
            logging.getLogger(name).setLevel(logging.ERROR)
        # Environment variables reach transformers whenever it is imported later (and
        # importing it here would cost seconds in stages that never use it).
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            try:
                import transformers

                transformers.utils.logging.set_verbosity_error()
                transformers.utils.logging.disable_progress_bar()
            except Exception:  # pragma: no cover - transformers changed
                pass


def get_logger(name: str) -> logging.Logger:
    """Logger under the package namespace (``ambient_rlhf.<name>``)."""
    if not name.startswith(_ROOT):
        name = f"{_ROOT}.{name}"
    return logging.getLogger(name)


def progress_enabled() -> bool:
    return os.environ.get("AMBIENT_PROGRESS", "1") not in ("0", "false", "no")


class _Lines:
    """Where a bar goes when stderr is not a terminal (a log file, a pipe): each update as a
    line of its own, without the carriage returns and cursor movements that redraw a bar
    in place (in a file they pile up into one unreadable line)."""

    _ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        for line in self._ESCAPES.sub("", text).replace("\r", "\n").split("\n"):
            if line.strip():  # a bar being cleared writes only blanks
                self.stream.write(line.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it", **kw: Any):
    """A tqdm progress bar (rate and ETA) on stderr; disabled by ``AMBIENT_PROGRESS=0``.
    When stderr is not a terminal the bar prints a plain line every 10 s instead of
    redrawing itself (:class:`_Lines`)."""
    tty = sys.stderr.isatty()
    kw.setdefault("mininterval", 0.5 if tty else 10.0)
    if not tty:
        kw.setdefault("ncols", 100)  # no terminal to size the bar to
        kw.setdefault("ascii", True)  # block characters are noise in a log
    else:
        kw.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not progress_enabled(),
                file=sys.stderr if tty else _Lines(sys.stderr), **kw)


def _jsonable(v: Any) -> Any:
    try:
        import torch

        if isinstance(v, torch.Tensor):
            v = v.item() if v.numel() == 1 else v.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except Exception:
            pass
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    """Append-only metrics: ``metrics.jsonl``, and the same numbers to ``trackers``.

    On resume, pass ``resume_step``: lines with ``step > resume_step`` (written after the
    checkpoint that is being resumed) are dropped, so the file reads as one clean run.
    ``trackers``: started experiment trackers (anything with ``log(values, step)`` and
    ``finish()``, as accelerate's are; ``train.trackers.make_trackers``).
    """

    def __init__(self, out_dir: str | Path, resume_step: int | None = None, enabled: bool = True,
                 trackers: Iterable[Any] = ()):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = list(trackers) if enabled else []
        if not enabled:
            return
        with writing(self.path, "metrics"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._trim(resume_step)

    def _trim(self, resume_step: int | None) -> None:
        """Resume: keep the rows up to ``resume_step``; a fresh run starts an empty file."""
        if resume_step is not None and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue
            self.path.write_text("".join(k + "\n" for k in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        row = {"step": int(step), "time": round(time.time(), 3)}
        row.update({k: _jsonable(v) for k, v in metrics.items()})
        if not self.enabled:
            return row
        with writing(self.path, "metrics"), self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        numbers = {k: v for k, v in row.items()
                   if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in self.trackers:
            t.log(numbers, step=int(step))
        return row

    def close(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file (skipping a torn last line)."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
