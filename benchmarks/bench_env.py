"""What every benchmark prints beside its ratio: the machine, the thread settings, the
versions, and one machine-readable result line that ``benchmarks/all.py`` collects.

    from bench_env import describe, result
    print(describe(threads=2))                       # one line: cpu, cores, load, threads, versions
    result("sft", ours=1500.0, peer=900.0, unit="tokens/s", higher_is_better=True, target=1.2)

A result line starts with ``RESULT `` and is a JSON object with ``ratio`` = ours / peer when
higher is better (throughput) and ours / peer of the seconds when lower is better, so a
ratio is always read against its ``target`` in the direction the benchmark states.
"""

from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

RESULT_PREFIX = "RESULT "


def load_average() -> str:
    """The 1/5/15-minute load averages (other jobs on a shared machine slow both sides)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(packages=("torch", "transformers", "trl", "peft", "accelerate", "vaderSentiment")) -> dict[str, str]:
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        out["ambient-rlhf"] = metadata.version("ambient-rlhf")
    except metadata.PackageNotFoundError:
        pass
    return out


def environment(threads: int | None = None) -> dict:
    env = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "threads": threads if threads is not None else os.environ.get("OMP_NUM_THREADS", "unset"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "versions": versions(),
    }
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        env["device"] = "cpu"
    return env


def describe(threads: int | None = None) -> str:
    e = environment(threads)
    v = ", ".join(f"{k} {x}" for k, x in e["versions"].items())
    return (f"machine: {e['cpu']}, {e['cores']} cores, device {e['device']}, load average {e['load_average']}; "
            f"threads {e['threads']}, OMP_WAIT_POLICY {e['omp_wait_policy']}; python {e['python']}, {v}")


def result(name: str, *, ours: float, peer: float, unit: str, higher_is_better: bool, target: float,
           peer_name: str = "", threads: int | None = None, **details) -> dict:
    """Print (and return) the machine-readable line of one comparison.

    ``ratio`` is ours / peer of the measured quantity (``unit``); ``target`` is read in the
    same direction: ``ratio >= target`` when higher is better, ``<=`` when lower is better.
    """
    ratio = ours / peer if peer else float("nan")
    met = ratio >= target if higher_is_better else ratio <= target
    rec = {"name": name, "ours": ours, "peer": peer, "peer_name": peer_name, "unit": unit, "ratio": ratio,
           "target": target, "higher_is_better": higher_is_better, "met": bool(met),
           "environment": environment(threads), **details}
    print(RESULT_PREFIX + json.dumps(rec), flush=True)
    return rec
