"""The page: section order, style sheet, and ``report.html`` with its figures and manifest."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from ambient_rlhf import __version__
from ambient_rlhf.eval.report.labels import label_section
from ambient_rlhf.eval.report.markup import Figures, esc
from ambient_rlhf.eval.report.results import (frontier_section, headline, samples_section, simulated_section,
                                              win_section)
from ambient_rlhf.eval.report.rounds import rounds_section
from ambient_rlhf.eval.report.rundir import REPORT_DIR, REPORT_FILE, STAGES, StageDir, _read_json, discover
from ambient_rlhf.eval.report.steering import steering_section
from ambient_rlhf.eval.report.stages import curves_section, data_section, rl_section, rm_section, stages_table
from ambient_rlhf.io import atomic_dir, write_manifest
from ambient_rlhf.logging import get_logger

log = get_logger("report")


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ddd;padding:.3em .5em;vertical-align:top;text-align:left}
th{background:#f4f4f4}table.compact td{padding:.15em .5em}
table.samples td{max-width:22em;white-space:pre-wrap;word-wrap:break-word}
img{max-width:100%;display:block;margin:.6em 0}.missing{color:#888;font-style:italic}.note{color:#555;font-size:.85em}
.error{color:#b00}ul.headline li{margin:.4em 0;line-height:1.4}code{background:#f4f4f4;padding:0 .2em}
"""


# Results first (did it help, at what KL, on which samples), then how each stage got there.
SECTIONS: list[tuple[str, str, Callable]] = [
    ("headline", "Headline", lambda run, figs: headline(run)),
    ("win", "Win rates on held-out prompts", win_section),
    ("steering", "Goals: the steering test and the token shift", steering_section),
    ("frontier", "Reward vs KL", frontier_section),
    ("simulated", "Simulated community: true utility vs proxy and gold rewards", simulated_section),
    ("rounds", "Rounds: does the reward model rank the policy's own answers right?", rounds_section),
    ("samples", "Samples side by side", samples_section),
    ("rm", "Reward models: accuracy, baselines, calibration", rm_section),
    ("labels", "Explicit comparisons: agreement between labellers and with the upvotes", label_section),
    ("rl", "RL: score, KL, entropy, length", rl_section),
    ("data", "Data: summary and filters", data_section),
    ("training", "Training losses (SFT, reward models, DPO)", curves_section),
    ("stages", "Stages", None),  # drawn by render(), which has the run's manifest
]


def render(run: dict[str, list[StageDir]], run_dir: Path, figs: Figures, run_manifest: dict[str, Any] | None = None) -> str:
    parts = [f"<h1>ambient-rlhf report</h1><p class='note'>{esc(run_dir)} · written "
             f"{esc(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))} · ambient-rlhf {esc(__version__)}</p>"]
    nav = " · ".join(f"<a href='#{sid}'>{esc(title.split(':')[0])}</a>" for sid, title, _ in SECTIONS)
    parts.append(f"<p class='note'>{nav}</p>")
    for sid, title, fn in SECTIONS:
        if fn is None:
            fn = lambda r, f: stages_table(r, run_manifest)  # noqa: E731
        parts.append(f"<h2 id='{sid}'>{esc(title)}</h2>")
        try:
            parts.append(fn(run, figs))
        except Exception as e:  # one broken input must not cost the whole report
            log.warning("report section %s failed: %s", sid, e, exc_info=True)
            parts.append(f"<p class='error'>This section could not be drawn: {esc(type(e).__name__)}: {esc(e)}</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ambient-rlhf report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` and its PNGs for ``run_dir``; return the path of report.html.

    ``out`` defaults to ``RUN_DIR/report``; it is replaced as a whole on every call."""
    run_dir = Path(run_dir)
    run = discover(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_DIR
    with atomic_dir(out, overwrite=True) as tmp:
        figs = Figures(tmp)
        own = _read_json(run_dir / "manifest.json")
        page = render(run, run_dir, figs, own if own and own.get("stage") == "run" else None)
        (tmp / REPORT_FILE).write_text(page, encoding="utf-8")
        stage_dirs = [s.path for st in STAGES for s in run[st]]
        write_manifest(tmp, "report", {"run_dir": str(run_dir)}, inputs=stage_dirs,
                       counts={"figures": len(figs.files), **{st: len(run[st]) for st in STAGES}})
    return out / REPORT_FILE
