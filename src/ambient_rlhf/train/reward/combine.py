"""``ambient rm combine``: a weighted sum of reward models, usable as one."""

from __future__ import annotations

from pathlib import Path

from ambient_rlhf import AmbientError
from ambient_rlhf.io import write_manifest


def combine(paths: list[str], weights: list[float], out: str | Path, overwrite: bool = False) -> Path:
    """Write a composite reward model directory (weighted sum of normalised rewards)."""
    from ambient_rlhf.models.reward_model import CompositeReward, load_reward_model

    if len(paths) < 1:
        raise AmbientError("rm combine: give at least one reward model directory")
    if len(weights) != len(paths):
        raise AmbientError(f"rm combine: {len(paths)} models but {len(weights)} weights (--weights w1,w2,...)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AmbientError(f"{out}: output directory exists; pass --overwrite or another --out")
    members = [load_reward_model(p) for p in paths]
    comp = CompositeReward(members, weights, [str(Path(p).resolve()) for p in paths])
    comp.save_pretrained(out)
    write_manifest(out, "rm-combine", {"members": paths, "weights": weights}, inputs=paths)
    return out
