"""``ambient report RUN_DIR``: one self-contained ``report.html`` for a run directory.

Reads whatever stage outputs exist under ``RUN_DIR`` (``data/``, ``sft/``, ``rm-proxy/``,
``rm-gold/``, ``rl/``, ``eval/``, ``eval-goal/``..., each recognised by the ``stage`` in
its ``manifest.json`` or, failing that, by its name) and writes, into ``RUN_DIR/report/``:

* ``report.html``: every figure embedded as a base64 PNG, inline CSS, no scripts and no
  external resources, so it opens offline and can be mailed as one file;
* the same figures as PNG files, and a ``manifest.json``.

A stage that has not run is shown as "not run"; a section that cannot be drawn shows the
reason instead of stopping the report.  ``RUN_DIR`` may also be a single stage directory.

The headline says plainly whether the policy beat its reference on the gold judge: the
win rate with its 95% bootstrap interval, and "beat" only when the interval lies above 0.5.

The package, one job per module (imports run top to bottom):

* :mod:`.rundir`: find the stage directories of a run and read what each one wrote;
* :mod:`.markup`: number and interval formatting, HTML tables, figures as embedded PNGs;
* :mod:`.stages`: sections on how each stage got there (stages, data, reward models, RL,
  training losses);
* :mod:`.results`: sections on the results (headline, win rates, reward vs KL, samples,
  the simulated community's hidden utility);
* :mod:`.labels`: the section on explicit comparisons (``ambient label export``);
* :mod:`.page`: section order, style sheet, and :func:`write_report`.

Everything is importable from ``ambient_rlhf.eval.report`` as before the split.  The
command line is :mod:`ambient_rlhf.cli.report`.
"""

from __future__ import annotations

from ambient_rlhf.eval.report.rundir import REPORT_DIR, REPORT_FILE, STAGE_TITLES, STAGES, StageDir, discover
from ambient_rlhf.eval.report.markup import (Figures, errbars, esc, flatten_numbers, fnum, img_tag, interval, lohi,
                                             not_run, table)
from ambient_rlhf.eval.report.stages import (BEYOND_LENGTH_WORDS, RL_CURVES, beyond_length_verdict, curves_section,
                                             data_section, rl_section, rm_bars, rm_evals, rm_length_html, rm_section,
                                             stages_table)
from ambient_rlhf.eval.report.results import (frontier_section, headline, samples_section, simulated_section,
                                              truth_table, win_section)
from ambient_rlhf.eval.report.page import CSS, SECTIONS, render, write_report

__all__ = [
    "REPORT_DIR", "REPORT_FILE", "STAGES", "STAGE_TITLES", "StageDir", "discover",
    "Figures", "errbars", "esc", "flatten_numbers", "fnum", "img_tag", "interval", "lohi", "not_run", "table",
    "BEYOND_LENGTH_WORDS", "RL_CURVES", "beyond_length_verdict", "curves_section", "data_section", "rl_section",
    "rm_bars", "rm_evals", "rm_length_html", "rm_section", "stages_table",
    "frontier_section", "headline", "samples_section", "simulated_section", "truth_table", "win_section",
    "CSS", "SECTIONS", "render", "write_report",
]
