"""Report sections on how each stage got there: the stages table, the data counters, the
reward models against their baselines, the RL curves and the training losses."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ambient_rlhf.eval.report.markup import (Figures, _plt, _series, _slug, _val, errbars, esc, flatten_numbers,
                                             fnum, interval, lohi, not_run, table)
from ambient_rlhf.eval.report.rundir import OPTIONAL_STAGES, REPORT_DIR, STAGE_TITLES, STAGES, StageDir

RL_CURVES = (("objective/score", "reward-model score"), ("objective/kl", "KL to reference (nats)"),
             ("objective/entropy", "entropy (nats, as logged)"), ("gen/length", "response length (tokens)"))


def run_status(run_manifest: dict[str, Any]) -> str:
    """The run's status as the page should say it.  ``ambient run`` writes the report as
    its last stage, while its manifest still says ``running``: when every other stage has
    ran or was up to date, the run has finished as far as this page can know."""
    status = str(run_manifest.get("status", "?"))
    others = [st for st in run_manifest.get("stages", []) if isinstance(st, dict) and st.get("name") != REPORT_DIR]
    if status == "running" and others and all(st.get("status") in ("ran", "skipped") for st in others):
        return "finished"
    return status


def stages_table(run: dict[str, list[StageDir]], run_manifest: dict[str, Any] | None = None) -> str:
    """Every stage directory with when it finished and how long it took; with the run's
    manifest (``ambient run``), also each stage's status there (ran, up to date, failed...)."""
    by_name = {st.get("name"): st for st in (run_manifest or {}).get("stages", []) if isinstance(st, dict)}
    rows, seen = [], set()
    for st in STAGES:
        if not run[st] and st not in OPTIONAL_STAGES:
            rows.append([STAGE_TITLES[st], "–", "–", ("html", "<span class='missing'>not run</span>"), "–"])
        for s in run[st]:
            seen.add(s.name)
            secs = s.manifest.get("seconds") or s.manifest.get("timings") or {}
            total = (secs.get("total_s", secs.get("total_seconds", secs.get("total")))
                     if isinstance(secs, dict) else secs)
            total = by_name.get(s.name, {}).get("seconds", total)
            rows.append([STAGE_TITLES[st], s.name, by_name.get(s.name, {}).get("status", "–"),
                         s.manifest.get("created", "done" if s.manifest else "partial"),
                         f"{total:,.0f}" if isinstance(total, (int, float)) and not isinstance(total, bool) else "–"])
    for name, st in by_name.items():  # stages the run knows but that left no directory (failed early)
        if name not in seen and name != REPORT_DIR:
            rows.append(["", name, st.get("status", "?"), "–", "–"])
    out = table(["stage", "directory", "status in the run", "finished", "seconds"], rows)
    if run_manifest:
        out += (f"<p>Run status: {esc(run_status(run_manifest))}"
                + (f", {fnum(float(run_manifest['seconds']), 0)} s in all" if isinstance(run_manifest.get("seconds"), (int, float)) else "")
                + ".</p>")
    return out


def data_section(run, figs: Figures) -> str:
    if not run["data"] and not run.get("simulate"):
        return not_run("data")
    plt = _plt()
    out = []
    for s in run.get("simulate", []) + run["data"]:  # a simulated community's counts, then the data stage's
        counts = {k: v for k, v in flatten_numbers(s.manifest.get("counts") or {}).items()
                  if not k.startswith(("memory.", "peak_"))}  # resource use, not data
        if not counts:
            out.append(f"<p>{esc(s.name)}: the manifest has no counts.</p>")
            continue
        keys = list(counts)
        fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(keys) + 1.2))
        ax.barh(range(len(keys)), [counts[k] for k in keys], color="#4c72b0")
        ax.set_yticks(range(len(keys)), keys, fontsize=8)
        ax.invert_yaxis()
        pos = [v for v in counts.values() if v > 0]
        if pos and max(pos) / min(pos) > 1000:  # counts span orders of magnitude
            ax.set_xscale("symlog")
        ax.set_xlabel("count")
        ax.set_title(f"{s.name}: counts and filters")
        out.append(figs.save(fig, f"data_counts_{_slug(s.name)}"))
        out.append("<details><summary>all counters</summary>"
                   + table(["counter", "value"], [[k, v] for k, v in counts.items()], "compact") + "</details>")
        bad = s.manifest.get("bad_records")
        if isinstance(bad, dict) and flatten_numbers(bad):
            out.append("<p>Bad records (skipped and counted):</p>"
                       + table(["counter", "value"], [[k, v] for k, v in flatten_numbers(bad).items()], "compact"))
        for name in s.manifest.get("files") or []:  # the data stage's own plots
            f = s.path / str(name)
            if str(name).endswith(".png") and f.is_file():
                out.append(figs.embed(f.read_bytes(), f"data_{_slug(s.name)}_{f.stem}"))
    return "".join(out)


def rm_evals(s: StageDir) -> list[tuple[str, dict[str, Any]]]:
    """(label, evaluation) pairs of a reward-model directory: its eval.json is one
    evaluation, or ``{"communities": {name: evaluation}}`` for a model of several."""
    e = s.eval or {}
    if isinstance(e.get("communities"), dict):
        return [(f"{s.name} on {k}", v) for k, v in e["communities"].items() if isinstance(v, dict)]
    if e:
        label = f"{s.name} on {e['community']}" if e.get("community") else s.name
        return [(label, e)]
    return []


def rm_bars(e: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, accuracy-with-interval) of the reward model and each baseline, same pairs."""
    bars = [("reward model", e.get("accuracy"))]
    for name, b in (e.get("baselines") or {}).items():
        if _val(b) is not None:
            bars.append((str(name).replace("_", " "), b))
    ps = e.get("preferred_shorter") or {}
    if ps.get("n") and _val(ps.get("accuracy")) is not None:
        bars.append((f"reward model, preferred answer shorter (n={ps['n']})", ps["accuracy"]))
    sl = e.get("similar_length") or {}
    if sl.get("n"):
        for k, lab in (("accuracy", "reward model"), ("longer_wins", "longer wins")):
            if _val(sl.get(k)) is not None:
                bars.append((f"{lab}, similar length (n={sl['n']})", sl[k]))
    u = e.get("untimed_pairs") or {}
    if u.get("n"):
        for k, lab in (("accuracy", "reward model"), ("earlier_wins", "earlier wins"), ("longer_wins", "longer wins")):
            if _val(u.get(k)) is not None:
                bars.append((f"{lab}, pairs without time rule (n={u['n']})", u[k]))
    return [(n, b) for n, b in bars if _val(b) is not None]


BEYOND_LENGTH_WORDS = {
    "adds": "<b>adds information beyond length</b>",
    "none": "<b>adds no clear information beyond length</b> (the log-loss gain interval includes or is below 0)",
    "reversed": "<b>is reversed</b>: it predicts the preference only with its sign flipped, which counts for nothing",
    "too_few_threads": "cannot be judged: <b>too few threads</b> for an interval",
}


def beyond_length_verdict(bl: dict[str, Any]) -> str:
    """``rm eval``'s verdict; for an eval.json written before it had one, the same rule
    from the numbers (a positive reward coefficient and a log-loss gain interval above 0)."""
    if bl.get("verdict") in BEYOND_LENGTH_WORDS:
        return bl["verdict"]
    glo = lohi((bl.get("gain") or {}).get("log_loss"))[0]
    coef = (bl.get("coef") or {}).get("reward")
    return "adds" if glo is not None and glo > 0 and (coef is None or coef > 0) else "none"


def rm_length_html(e: dict[str, Any]) -> str:
    """Did the reward model learn anything beyond length?  The cross-validated
    length-only vs length+reward regressions, and accuracy by length-ratio bucket."""
    out = []
    bl = e.get("beyond_length") or {}
    if bl.get("folds"):
        lo, lr, g = bl.get("length_only") or {}, bl.get("length_reward") or {}, bl.get("gain") or {}
        what = BEYOND_LENGTH_WORDS[beyond_length_verdict(bl)]
        out.append(f"<p>Beyond length: predicting the preference from the word-length difference alone gives "
                   f"accuracy {interval(lo.get('accuracy'))}, log-loss {interval(lo.get('log_loss'))}; adding the "
                   f"reward difference gives {interval(lr.get('accuracy'))}, log-loss {interval(lr.get('log_loss'))} "
                   f"(gain: accuracy {interval(g.get('accuracy'))}, log-loss {interval(g.get('log_loss'))}; "
                   f"logistic regressions, {fnum(bl.get('folds'))}-fold cross-validated by thread). The reward "
                   f"{what}.</p>")
    rows = e.get("by_length_ratio") or []
    if rows:
        keys = [k for k in rows[0] if k not in ("bucket", "n")]
        out.append("<p>Accuracy by |log(words chosen / words rejected)|:</p>" + table(
            ["|log word ratio|", "pairs", *[("reward model" if k == "accuracy" else k.replace("_", " ")) for k in keys]],
            [[r.get("bucket"), r.get("n"), *[r.get(k) for k in keys]] for r in rows], "compact"))
    out.append(which_part_html(e))
    return "".join(out)


def which_part_html(e: dict[str, Any]) -> str:
    """``rm eval``'s "which part is learned" table: the reward model beside longer-wins,
    earlier-wins (delay only) and the bag of words, on each set of held-out pairs, and
    each score's Spearman correlation with length."""
    wp = e.get("which_part") or {}
    sets = wp.get("sets") or {}
    if not sets:
        return ""
    scorers = [k for k in next(iter(sets.values())) if k != "n"]
    rows = [[name, cell.get("n"), *[("html", interval(cell.get(k))) for k in scorers]] for name, cell in sets.items()]
    sp = wp.get("spearman_length") or {}
    rows.append(["Spearman(score, length)", None, *[sp.get(k) if k in sp else None for k in scorers]])
    return ("<p>Which part is learned: accuracy [95% interval, resampling threads] on held-out pairs. "
            "<i>chosen shorter</i>: where length fails; <i>no time rule</i>: pairs built without the SHP time rule; "
            "<i>dropped by time rule</i>: those whose preferred answer came first (exposure). The bag of words is "
            "TF-IDF + log length fitted on the reward model's own training pairs.</p>"
            + table(["pairs", "n", *scorers], rows, "compact"))


def rm_section(run, figs: Figures) -> str:
    if not run["rm"]:
        return not_run("reward model")
    plt = _plt()
    out = []
    for s in run["rm"]:
        evs = rm_evals(s)
        out.append(f"<h3>{esc(s.name)}</h3>")
        if not evs:
            out.append("<p class='missing'>no eval.json (not evaluated yet).</p>")
            continue
        for label, e in evs:
            slug = _slug(label)
            bars = rm_bars(e)
            if bars:
                vals = [_val(b) for _, b in bars]
                fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(bars) + 1.4))
                colors = ["#dd8452" if n.startswith("reward model") else "#8c8c8c" for n, _ in bars]
                ax.barh(range(len(bars)), vals, xerr=errbars(vals, [b for _, b in bars]), color=colors, capsize=3)
                ax.set_yticks(range(len(bars)), [n for n, _ in bars], fontsize=8)
                ax.invert_yaxis()
                ax.axvline(0.5, color="k", lw=0.8, ls="--")
                ax.set_xlim(0, 1)
                ax.set_xlabel("pairwise accuracy on held-out pairs (95% interval)")
                ax.set_title(f"{label}: accuracy vs baselines" + (f"\n{e['n_pairs']} held-out pairs" if e.get("n_pairs") else ""),
                             fontsize=10)
                out.append(figs.save(fig, f"rm_accuracy_{slug}"))
                out.append(table(["model", "accuracy [95% interval]"], [[n, ("html", interval(b))] for n, b in bars], "compact"))
            cal = _calibration(e)
            if cal is not None:
                conf, accs, ece = cal
                fig, ax = plt.subplots(figsize=(4.2, 4))
                lo = 0.5 if min(conf) >= 0.5 else 0.0  # symmetric form: confidence max(p, 1-p)
                ax.plot([lo, 1], [lo, 1], "k--", lw=0.8, label="perfect")
                ax.plot(conf, accs, "o-", color="#dd8452", label="reward model")
                ax.set_xlabel("confidence" + (" max(p, 1-p)" if lo else ""))
                ax.set_ylabel("fraction ordered right")
                ax.set_title("calibration" + (f" (ECE {ece:.3f})" if ece is not None else ""))
                ax.legend(fontsize=8)
                out.append(figs.save(fig, f"rm_calibration_{slug}"))
            lc = e.get("length_correlation")
            if isinstance(lc, dict) and _val(lc.get("spearman")) is not None:
                out.append(f"<p>Correlation of reward with response length: Spearman {fnum(lc.get('spearman'), 2)}, "
                           f"Pearson {fnum(lc.get('pearson'), 2)}.</p>")
            out.append(rm_length_html(e))
            for name in e.get("plots") or []:  # the reward-model stage's own plots
                if not isinstance(name, str) or "reliability" in name:
                    continue
                found = next(iter(sorted(s.path.rglob(Path(name).name))), None)
                if found is not None:
                    out.append(figs.embed(found.read_bytes(), f"rm_{slug}_{Path(name).stem}"))
            scalars = {k: v for k, v in flatten_numbers(e).items() if not k.startswith("calibration.")}
            if scalars:
                out.append("<details><summary>all numbers in eval.json</summary>"
                           + table(["key", "value"], [[k, v] for k, v in scalars.items()], "compact") + "</details>")
    return "".join(out)


def _calibration(e: dict[str, Any]) -> tuple[list[float], list[float], float | None] | None:
    cal = e.get("calibration")
    if not isinstance(cal, dict):
        return None
    ece = _val(cal.get("ece"))
    conf, acc = [], []
    for b in cal.get("bins") or []:
        if isinstance(b, dict) and (b.get("n", b.get("count", 1)) or 0) > 0:
            c, a = _val(b.get("confidence")), _val(b.get("accuracy"))
            if c is not None and a is not None:
                conf.append(c)
                acc.append(a)
    return (conf, acc, ece) if conf else None


def rl_section(run, figs: Figures) -> str:
    if not run["rl"]:
        return not_run("RL")
    plt = _plt()
    out = []
    for s in run["rl"]:
        if not s.metrics:
            out.append(f"<p class='missing'>{esc(s.name)}: no metrics.jsonl yet.</p>")
            continue
        fig, axes = plt.subplots(2, 2, figsize=(9, 6))
        for ax, (key, label) in zip(axes.ravel(), RL_CURVES):
            xs, ys = _series(s.metrics, key)
            if xs:
                ax.plot(xs, ys, color="#4c72b0", lw=1.2)
            else:
                ax.text(0.5, 0.5, f"{key}\nnot logged", ha="center", va="center", transform=ax.transAxes, color="#888")
            ax.set_title(key, fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel(label, fontsize=8)
        fig.suptitle(f"{s.name}: training curves")
        out.append(figs.save(fig, f"rl_curves_{_slug(s.name)}"))
        first, last = s.metrics[0], s.metrics[-1]
        rows = [[k, first.get(k), last.get(k)] for k, _ in RL_CURVES + (("kl/beta", ""), ("gen/eos_rate", ""))]
        out.append(table(["metric", f"step {first.get('step')}", f"step {last.get('step')}"], rows, "compact"))
    return "".join(out)


def curves_section(run, figs: Figures) -> str:
    """Loss curves of the SFT, reward-model and DPO stages (metrics whose name has 'loss'),
    one panel per stage directory."""
    stages = [s for st in ("sft", "rm", "dpo") for s in run[st] if s.metrics]
    panels = []
    for s in stages:
        keys = sorted({k for r in s.metrics for k in r if "loss" in k})[:4]
        series = [(k, *_series(s.metrics, k)) for k in keys]
        series = [x for x in series if x[1]]
        if series:
            panels.append((s.name, series))
    if not panels:
        return not_run("SFT, reward-model and DPO training") if not stages else "<p class='missing'>no loss curves logged.</p>"
    plt = _plt()
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    for ax, (name, series) in zip(axes.ravel(), panels):
        for k, xs, ys in series:
            ax.plot(xs, ys, lw=1.2, marker="." if len(xs) < 20 else None, label=k)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.legend(fontsize=7)
    return figs.save(fig, "training_losses")
