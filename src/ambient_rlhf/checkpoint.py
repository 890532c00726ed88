"""Checkpoints that hold everything needed to continue a run bit-for-bit.

A checkpoint is a directory ``<out>/checkpoints/step-<N>/`` holding ``state.pt`` (one dict:
optimizer and scheduler states, RNG states, data position, step, anything else the
trainer needs) and the model(s) saved next to it.  It is written to a temporary name and
renamed, so a ``kill -9`` mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states."""
    s = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``out_dir/checkpoints``, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / "state.pt").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    c = checkpoint_dirs(out_dir)
    return c[-1] if c else None


def save_checkpoint(out_dir: str | Path, step: int, state: dict[str, Any], save_models=None, keep: int = 2) -> Path:
    """Write ``state`` (plus whatever ``save_models(tmp_dir)`` writes) as checkpoint ``step``.

    Keeps the newest ``keep`` checkpoints.
    """
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    if save_models is not None:
        save_models(tmp)
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    return torch.load(Path(ckpt_dir) / "state.pt", map_location="cpu", weights_only=False)
