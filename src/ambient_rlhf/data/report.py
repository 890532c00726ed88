"""``report.md`` and its PNG plots for a data directory (matplotlib, Agg backend).

Plots read only numeric columns of the written parquet files: score distribution,
responses per thread, delay vs score, tier balance, pairs by score ratio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ambient_rlhf.data.schema import PAIRS_FILE, RESPONSES_FILE, SPLITS, TIERS

MAX_SCATTER = 5000  # points in the delay-vs-score scatter (a fixed-seed sample)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def log_ticks(axis, lo: float, hi: float, most: int = 7) -> None:
    """Plain-number labels on a log axis at the finest of the 1-1.5-2-3-5, 1-2-5, 1-3 and
    powers-of-ten series that gives at most ``most`` labels, and no
    minor labels: matplotlib labels the minor ticks of a log axis spanning less than a
    decade (``2x10^0``, ``3x10^0``, ...), and those labels crowd or overlap."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    for mantissas in ((1, 1.5, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):  # the finest series that fits
        ticks = [m * 10.0 ** e for e in range(-3, 10) for m in mantissas if lo <= m * 10.0 ** e <= hi]
        if len(ticks) <= most:
            break
    while len(ticks) > most:  # more than `most` decades: every other power of ten
        ticks = ticks[::2]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def write_plots(out: Path) -> list[str]:
    """Write the five PNGs into ``out``; return their file names."""
    plt = _plt()
    r = pq.read_table(out / RESPONSES_FILE, columns=["thread_id", "score", "delay", "tier", "split", "thread_size"])
    p = pq.read_table(out / PAIRS_FILE, columns=["score_ratio"])
    score = r.column("score").to_numpy().astype(float)
    delay_h = r.column("delay").to_numpy().astype(float) / 3600.0
    files = []

    def save(fig, name):
        # fixed margins: tight_layout would draw every figure twice
        fig.subplots_adjust(left=0.16, right=0.97, bottom=0.17, top=0.9)
        fig.savefig(out / name, dpi=80)
        plt.close(fig)
        files.append(name)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    pos = score[score > 0]
    if pos.size:
        bins = np.unique(np.round(np.logspace(0, np.log10(max(pos.max(), 2)), 40)))
        ax.hist(pos, bins=bins)
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"response score (> 0; {int((score <= 0).sum())} responses <= 0 not shown)")
    ax.set_ylabel("responses")
    ax.set_title("Score distribution")
    save(fig, "score_distribution.png")

    # responses per thread: one value per thread (thread_size of its first row)
    tid = r.column("thread_id").to_numpy(zero_copy_only=False)
    first = np.r_[True, tid[1:] != tid[:-1]] if tid.size else np.zeros(0, bool)
    sizes = r.column("thread_size").to_numpy()[first]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if sizes.size:
        ax.hist(sizes, bins=np.arange(sizes.min(), min(sizes.max(), 100) + 2) - 0.5)
    ax.set_yscale("log")
    ax.set_xlabel("kept responses per thread (clipped at 100)")
    ax.set_ylabel("threads")
    ax.set_title("Responses per thread")
    save(fig, "responses_per_thread.png")

    fig, ax = plt.subplots(figsize=(5, 3.5))
    idx = np.arange(score.size)
    if score.size > MAX_SCATTER:
        idx = np.random.default_rng(0).choice(score.size, MAX_SCATTER, replace=False)
    ax.scatter(np.maximum(delay_h[idx], 1e-2), score[idx], s=3, alpha=0.3)
    ax.set_xscale("log")
    ax.set_yscale("symlog")
    ax.set_xlabel("delay after the prompt (hours)")
    ax.set_ylabel("score")
    ax.set_title("Early answers collect more votes")
    save(fig, "delay_vs_score.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    tiers = np.asarray(r.column("tier").to_pylist(), dtype=object)
    splits = np.asarray(r.column("split").to_pylist(), dtype=object)
    x = np.arange(len(SPLITS))
    top = 0.0
    for j, t in enumerate(TIERS):
        frac = [((splits == s) & (tiers == t)).sum() / max((splits == s).sum(), 1) for s in SPLITS]
        top = max(top, *frac)
        ax.bar(x + (j - 1) * 0.27, frac, width=0.27, label=t)
    ax.set_xticks(x, SPLITS)
    ax.set_ylim(0, max(top, 0.01) * 1.35)
    ax.set_ylabel("fraction of responses")
    ax.set_title("Tier balance (thresholds from train)")
    ax.legend(ncol=3, loc="upper center")
    save(fig, "tier_balance.png")

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ratio = p.column("score_ratio").to_numpy()
    ratio = ratio[np.isfinite(ratio)]
    if ratio.size:
        lo, hi = max(ratio.min(), 1.0), max(ratio.max(), 2.0)
        ax.hist(ratio, bins=np.logspace(np.log10(lo), np.log10(hi), 30))
        ax.set_xscale("log")
        log_ticks(ax.xaxis, lo, hi)
    ax.set_xlabel("score ratio (chosen / rejected)")
    ax.set_ylabel("pairs")
    ax.set_title("Pairs by score ratio")
    save(fig, "pairs_by_score_ratio.png")
    return files


def _table(d: dict[str, Any]) -> list[str]:
    lines = ["| counter | n |", "|---|---:|"]
    for k, v in d.items():
        lines.append(f"| {k} | {v} |")
    return lines


def write_report(out: Path, cfg: Any, counts: dict[str, dict[str, int]], bad: dict[str, Any],
                 info: dict[str, Any]) -> list[str]:
    """Write ``report.md`` (+ plots) into ``out``; return the plot file names."""
    plots = write_plots(out)
    md = ["# Data build report", ""]
    md.append("Counts per split:")
    md.append("")
    md.append("| split | threads | responses | pairs | good | ok | bad |")
    md.append("|---|---:|---:|---:|---:|---:|---:|")
    for s in SPLITS:
        t = counts.get(f"tiers_{s}", {})
        md.append(f"| {s} | {counts.get('threads_per_split', {}).get(s, 0)} | "
                  f"{counts.get('responses_per_split', {}).get(s, 0)} | {counts.get('pairs_per_split', {}).get(s, 0)} | "
                  f"{t.get('good', 0)} | {t.get('ok', 0)} | {t.get('bad', 0)} |")
    md.append("")
    th = info.get("tier_thresholds", {})

    def r4(x):
        return None if x is None else round(x, 4)

    md.append(f"Tiers by quantiles {[r4(q) for q in cfg.labels.tier_quantiles]} of `adjusted` over "
              f"{info.get('tier_basis')}: bad < {r4(th.get('bad_below'))}, good > {r4(th.get('good_above'))}.  "
              f"Pooled within-thread "
              f"correlation of rank_z and delay_z (train): {info.get('rank_delay_correlation')} "
              f"(labels.delay_weight = {cfg.labels.delay_weight}).  Pairs time rule: "
              f"{'on' if cfg.labels.time_rule else 'OFF (baseline pairs)'}.")
    md.append("")
    md.append(f"Bad records: {bad['total']} of {bad['records_seen']} ({bad['fraction']:.4%}).")
    for e in bad.get("examples", []):
        md.append(f"- `{e}`")
    md.append("")
    for g, d in counts.items():
        if g.startswith("tiers_") or g.endswith("_per_split"):
            continue
        md.append(f"## {g}")
        md.append("")
        md.extend(_table(d))
        md.append("")
    md.append("## Plots")
    md.append("")
    for f in plots:
        md.append(f"![{f[:-4].replace('_', ' ')}]({f})")
        md.append("")
    (out / "report.md").write_text("\n".join(md))
    return plots
