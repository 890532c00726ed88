"""Report fixes seen in a real browser (issue 14 item 8): the run's status, the simulate
stage's title, tick labels that do not overlap, one colour bar for several RL runs,
long prompts collapsed, stage directories nested below RUN_DIR, and progress bars that
leave a readable log when stderr is a file."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_report import _eval_dir, _eval_rows, _jsonl, _manifest, chromium, make_run_dir, run_chromium

from ambient_rlhf.eval.report import discover, write_report
from ambient_rlhf.eval.report.results import frontier_figure
from ambient_rlhf.eval.report.stages import run_status, stages_table

SRC = Path(__file__).resolve().parents[2] / "src"


def _overlaps(fig, axis_list) -> list[tuple[str, str]]:
    """Pairs of visible tick labels whose drawn boxes intersect (after drawing ``fig``)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    bad = []
    for axis in axis_list:
        labels = [t for t in axis.get_ticklabels(minor=False) + axis.get_ticklabels(minor=True)
                  if t.get_visible() and t.get_text()]
        boxes = [(t.get_text(), t.get_window_extent(r)) for t in labels]
        for i, (ta, a) in enumerate(boxes):
            for tb, b in boxes[i + 1:]:
                if a.overlaps(b):
                    bad.append((ta, tb))
    return bad


def test_a_run_whose_last_stage_is_this_report_is_finished():
    stages = [{"name": n, "status": "ran"} for n in ("data", "sft")] + [{"name": "rl", "status": "skipped"}]
    # what `ambient run` has written when its report stage runs
    assert run_status({"status": "running", "stages": stages + [{"name": "report", "status": "running"}]}) == "finished"
    # a run with a stage still to come, or one that failed, says so
    assert run_status({"status": "running", "stages": stages + [{"name": "eval", "status": "pending"},
                                                                  {"name": "report", "status": "pending"}]}) == "running"
    assert run_status({"status": "failed", "stages": stages}) == "failed"


LONG_PROMPT = "My advisor wants me to rewrite the whole introduction again. " * 60  # ~3,700 characters


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(path, page) of the synthetic run as ``ambient run``'s report stage sees it (the run
    manifest still says running), with very long prompts in ``eval/``."""
    run = make_run_dir(tmp_path_factory.mktemp("fixes"))
    m = json.loads((run / "manifest.json").read_text())
    m.update(status="running", stages=[{"name": "rl", "status": "ran", "seconds": 610.0},
                                       {"name": "report", "status": "running"}])
    (run / "manifest.json").write_text(json.dumps(m))
    rows = _eval_rows(np.random.default_rng(1), 6, shift=0.5)
    for r in rows:
        r["prompt"] = LONG_PROMPT
    _eval_dir(run / "eval", rows)
    path = write_report(run)
    return path, path.read_text()


def test_page_of_a_run_written_by_its_report_stage(report):
    _, page = report
    assert "Run status: finished" in page and "Run status: running" not in page
    # the simulate stage has its own title in the stages table (it was listed as "Data")
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", page)
    assert ("Simulated community", "simulate") in rows and ("Data", "data") in rows
    assert ("Data", "simulate") not in rows


def test_stage_directories_nested_below_the_run_dir_are_found(tmp_path):
    root = tmp_path / "runs"
    make_run_dir(root / "exp1")  # root/exp1/run/{sft,rl,...}
    _manifest(root / "sft", "sft", seconds=3.0)  # and one directly below
    # a stage directory's own subdirectories are not stages (rm eval writes eval/<community>-<split>/)
    _manifest(root / "exp1" / "run" / "rm-gold" / "eval" / "askacademia-test", "eval")
    found = discover(root)
    assert [s.name for s in found["rl"]] == ["exp1/run/rl"]
    assert sorted(s.name for s in found["sft"]) == ["exp1/run/sft", "sft"]
    assert sorted(s.name for s in found["eval"]) == ["exp1/run/eval", "exp1/run/eval-goal", "exp1/run/eval-steer"]
    assert [s.name for s in found["simulate"]] == ["exp1/run/simulate"]
    stages = stages_table(found)
    assert "<td>exp1/run/rl</td>" in stages and "<td>exp1/run/simulate</td>" in stages
    assert stages.count("not run") == 1  # the truth stage, which this run does not have


def _two_rl_runs(tmp_path):
    run = make_run_dir(tmp_path)
    _manifest(run / "rl-b", "rl", seconds=300.0)
    _jsonl(run / "rl-b" / "metrics.jsonl", [{"step": i, "objective/score": 0.05 * i, "objective/kl": 0.5 * i}
                                             for i in range(1, 61)])
    return run


def test_one_colour_bar_for_two_rl_runs_and_no_overlapping_ticks(tmp_path):
    run = discover(_two_rl_runs(tmp_path))
    assert len(run["rl"]) == 2
    fig = frontier_figure(run["rl"], [s for s in run["eval"] if s.eval])
    fig.tight_layout()  # as Figures.save draws it
    main_ax, *bars = fig.axes
    assert len(bars) == 1  # one colour bar: the step scale is shared (it was one per run)
    assert bars[0].get_ylim() == (0.0, 59.0)  # 60 logged steps of the longer run
    assert _overlaps(fig, [main_ax.xaxis, main_ax.yaxis, bars[0].yaxis]) == []


def _x_gaps(fig, ax) -> list[float]:
    """Pixels between neighbouring x tick labels inside the axes (after drawing ``fig``)."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    x0, x1 = ax.get_xlim()
    labels = [t for t in ax.xaxis.get_ticklabels() + ax.xaxis.get_ticklabels(minor=True)
              if t.get_text() and x0 <= t.get_position()[0] <= x1]
    boxes = sorted((t.get_window_extent(r) for t in labels), key=lambda b: b.x0)
    return [b.x0 - a.x1 for a, b in zip(boxes, boxes[1:])]


@pytest.mark.parametrize("lo,hi", [(2.0, 11.0), (1.5, 8.0), (2.0, 3.5), (1.0, 400.0), (1.5, 90.0)])
def test_pairs_by_score_ratio_tick_labels_do_not_crowd(lo, hi):
    """The data stage's log-scale histogram at its own size (5 x 3.2 in, 80 dpi).  Before,
    a range under two decades got matplotlib's minor labels (``2x10^0``, ``3x10^0``,
    ``4x10^0`` ...), 9 px apart on the 2..11 range of the beer community's pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ambient_rlhf.data.report import log_ticks

    ratio = np.exp(np.random.default_rng(0).uniform(np.log(lo), np.log(hi), 300))
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    ax.hist(ratio, bins=np.logspace(np.log10(lo), np.log10(hi), 30))
    ax.set_xscale("log")
    log_ticks(ax.xaxis, lo, hi)
    fig.subplots_adjust(left=0.16, right=0.97, bottom=0.17, top=0.9)
    gaps = _x_gaps(fig, ax)
    assert _overlaps(fig, [ax.xaxis]) == [] and min(gaps, default=99) >= 12, gaps  # about a character apart
    labels = [t.get_text() for t in ax.xaxis.get_ticklabels() if t.get_text()]
    assert len(labels) >= 2 and all(re.fullmatch(r"[0-9.]+", t) for t in labels), labels  # plain numbers
    plt.close(fig)


def test_long_prompts_are_collapsed_in_chromium(report, tmp_path):
    _, page = report
    assert "<details><summary>My advisor wants" in page and LONG_PROMPT.strip() in page
    chromium()
    probe = tmp_path / "probe.html"  # the tallest row of each samples table, as laid out
    probe.write_text(page.replace("</body>", """<script>
      const h = [...document.querySelectorAll('table.samples')].map(t =>
        Math.max(...[...t.querySelectorAll('tbody tr')].map(r => r.getBoundingClientRect().height)));
      document.body.insertAdjacentHTML('beforeend', '<div id="row-check">rows ' + h.join(',') + '</div>');
    </script></body>"""))
    r = run_chromium(["--virtual-time-budget=5000", "--window-size=1200,1600", "--dump-dom", probe.as_uri()], tmp_path)
    m = re.search(r'<div id="row-check">rows ([0-9.,]+)</div>', r.stdout)
    assert m, r.stderr[-2000:]
    heights = [float(x) for x in m.group(1).split(",")]
    # the 3,700-character prompt at 22em per cell would make rows thousands of pixels tall
    assert len(heights) == 3 and max(heights) < 300, heights  # the samples of eval, eval-goal and eval-steer


def test_progress_written_to_a_file_is_plain_lines(tmp_path):
    script = ("from ambient_rlhf.logging import progress\n"
              "bar = progress(total=3, desc='stage', unit='step', mininterval=0)\n"
              "for _ in range(3):\n    bar.update(1)\nbar.close()\n")
    with open(tmp_path / "err.txt", "w") as err:
        subprocess.run([sys.executable, "-c", script], stderr=err, check=True,
                       env={**os.environ, "AMBIENT_PROGRESS": "1", "PYTHONPATH": str(SRC)})
    text = (tmp_path / "err.txt").read_text()
    assert "\r" not in text and "\x1b[" not in text, repr(text)
    lines = text.splitlines()
    assert lines[0].startswith("stage:   0%") and "3/3" in lines[-1] and len(lines) >= 4


def test_length_change_flags_moves_beyond_the_bound():
    from ambient_rlhf.eval.report.results import length_change

    # 60.3125 / 44.75 = 1.3478: +35%, beyond 30%
    flagged = length_change(60.3125, 44.75)
    assert flagged.startswith(" (+35%") and "more than 30%" in flagged
    assert length_change(50.0, 45.0) == " (+11%)"   # 50 / 45 = 1.111
    assert length_change(26.0, 45.0).startswith(" (-42%, more than 30%")  # 26 / 45 = 0.578
    assert length_change(None, 45.0) == "" and length_change(10.0, 0.0) == ""
