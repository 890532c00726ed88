"""Experiment trackers through accelerate's tracker integrations (``accelerate.tracking``).

Every trainer's ``report_to`` names the trackers (``tensorboard``, ``wandb``, ``mlflow``,
``trackio``, ``aim``, ``comet_ml``, ``clearml``, ``dvclive``, ``swanlab``: the names of
transformers' ``report_to`` and accelerate's ``log_with``).  :func:`make_trackers` starts
them on the main process with the resolved config; :class:`ambient_rlhf.logging.MetricsWriter`
sends each row of ``metrics.jsonl`` to them as well.  A named tracker whose package is not
installed costs a one-line notice, and the metrics still go to ``metrics.jsonl``.

Where they write: TensorBoard events in ``OUT/tensorboard/`` (what ``tensorboard --logdir
OUT`` reads); local trackers (mlflow, aim, ...) under ``OUT/``; W&B and the other hosted
ones to the project ``ambient-rlhf``, the run named after ``OUT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ambient_rlhf import AmbientError
from ambient_rlhf.logging import get_logger

log = get_logger("train")

PROJECT = "ambient-rlhf"
NONE = ("none", "")


def tracker_names() -> list[str]:
    """The names accelerate knows (its ``LOGGER_TYPE_TO_CLASS``)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


def check_report_to(report_to: list[str], key: str = "report_to") -> None:
    """ConfigError-style refusal of a name accelerate does not know (checked when a stage
    validates its config, before any work)."""
    bad = [n for n in report_to if n not in NONE and n not in tracker_names()]
    if bad:
        raise AmbientError(f"{key}={report_to}: unknown {bad}; choose from {tracker_names()} (or [] for "
                           "metrics.jsonl only)")


def _flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars only (TensorBoard's hparams and most trackers take no nested values)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(_flat_config(v, f"{prefix}{k}."))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[prefix + k] = "null" if v is None else v
        else:
            out[prefix + k] = str(v)
    return out


def make_trackers(report_to: list[str], out: str | Path, config: dict[str, Any] | None = None) -> list:
    """Start the trackers ``report_to`` names that are installed (accelerate's classes),
    each with the flattened ``config``; call on the main process only."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    check_report_to(report_to)
    available = {str(t) for t in get_available_trackers()}
    out = Path(out)
    trackers = []
    for name in dict.fromkeys(n for n in report_to if n not in NONE):
        if name not in available:
            log.warning("report_to=%s: the %s package is not installed (pip install %s); metrics go to %s only",
                        name, name, name, out / "metrics.jsonl")
            continue
        cls = LOGGER_TYPE_TO_CLASS[name]
        if name == "tensorboard":
            tracker = cls("tensorboard", logging_dir=out)  # events in OUT/tensorboard
        elif cls.requires_logging_directory:
            tracker = cls(PROJECT, logging_dir=out)
        elif name == "wandb":
            tracker = cls(PROJECT, name=out.name)
        else:
            tracker = cls(PROJECT)
        if hasattr(tracker, "start"):  # accelerate >= 1.6 starts a tracker lazily
            tracker.start()
        if config:
            try:
                tracker.store_init_configuration(_flat_config(config))
            except Exception as e:  # a tracker refusing some value must not stop training
                log.warning("report_to=%s: the config was not recorded (%s)", name, e)
        trackers.append(tracker)
    return trackers
