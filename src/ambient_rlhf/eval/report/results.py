"""Report sections on the results: the headline verdicts, win rates, reward against KL,
samples side by side, and the simulated community's hidden utility."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ambient_rlhf.eval.policy_summary import verdict
from ambient_rlhf.eval.report.markup import (Figures, _plt, _slug, _val, errbars, esc, flatten_numbers, fnum,
                                             interval, lohi, not_run, table)
from ambient_rlhf.eval.report.rundir import StageDir
from ambient_rlhf.eval.report.stages import BEYOND_LENGTH_WORDS, beyond_length_verdict, rm_evals
from ambient_rlhf.eval.report.steering import steering_headline
from ambient_rlhf.logging import read_jsonl


def headline(run: dict[str, list[StageDir]]) -> str:
    """Plain sentences: did the policy beat its reference on the gold judge?  Did each
    reward model beat the text-only baselines?"""
    evals = [s for s in run["eval"] if s.eval]
    parts, rm_parts = [], []
    if not evals:
        parts.append("<li><b>No policy evaluation in this run yet</b>, so there is no verdict on whether the "
                     "feedback made the model better.</li>")
    for s in run["rm"]:
        for label, e in rm_evals(s):
            acc = e.get("accuracy")
            if _val(acc) is None:
                continue
            base = [(str(n).replace("_", " "), b) for n, b in (e.get("baselines") or {}).items() if _val(b) is not None]
            lo = lohi(acc)[0]
            beaten = [n for n, b in base if lo is not None and lohi(b)[1] is not None and lo > lohi(b)[1]]
            txt = f"<li>[{esc(label)}] reward-model pairwise accuracy {interval(acc)}"
            if base:
                txt += "; baselines " + ", ".join(f"{esc(n)} {interval(b)}" for n, b in base)
                txt += (f"; it <b>beats {'all' if len(beaten) == len(base) else 'some'}</b> of them clearly"
                        f" (intervals apart: {esc(', '.join(beaten))})" if beaten else
                        "; it does <b>not clearly beat</b> the baselines (the intervals overlap)")
            bl = e.get("beyond_length") or {}
            g = (bl.get("gain") or {}).get("log_loss")
            if _val(g) is not None:
                txt += (f"; beyond length (paired, cross-validated by thread): log-loss gain {interval(g)}, "
                        + BEYOND_LENGTH_WORDS[beyond_length_verdict(bl)])
            rm_parts.append(txt + ".</li>")
    for s in run.get("truth", []):
        e = s.eval or {}
        for name, c in (e.get("comparisons") or {}).items():
            d, rec = c.get("vs_length") or {}, (e.get("reward_models") or {}).get(name) or {}
            if d.get("difference") is None or rec.get("spearman") is None:
                continue
            base = ((e.get("baselines") or {}).get("length") or {}).get("spearman")
            better = d["ci_low"] > 0
            worse = d["ci_high"] < 0
            word = "<b>recovers it better</b> than" if better else "<b>recovers it worse</b> than" if worse else \
                "<b>does not clearly beat</b>"
            sc = c.get("vs_score") or {}
            rm_parts.append(
                f"<li>[truth] Hidden utility of the simulated community: reward model {esc(name)} (within-thread "
                f"Spearman {fnum(rec['spearman'], 2)}) {word} the longer-answer baseline ({fnum(base, 2)}): "
                f"difference {d['difference']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] over "
                f"{fnum(d.get('threads'))} held-out threads"
                + (f"; against the raw upvote score {sc['difference']:+.2f} [{sc['ci_low']:+.2f}, {sc['ci_high']:+.2f}]"
                   if sc.get("difference") is not None else "") + ".</li>")
    for s in evals:
        e = s.eval
        if isinstance(e.get("steering"), dict):  # one model against itself: a goal, not a policy, is tested
            parts.append(steering_headline(s))
            continue
        w = e.get("win_rate", {})
        v = e.get("verdict") or verdict(w)
        judge = Path(str(e.get("judge", "?"))).name
        goal = f" with goal <code>{esc(e['goal'])}</code>" if e.get("goal") else ""
        ref = Path(str(e.get("reference", "?"))).name
        n = e.get("n_prompts", "?")
        what = {"better": "<b>beat</b>", "worse": "<b>lost to</b>"}.get(v, "<b>did not clearly beat</b>")
        why = " (the interval includes 0.5)" if v not in ("better", "worse") else ""
        txt = (f"<li>[{esc(s.name)}] On the gold judge <code>{esc(judge)}</code>, the policy <code>{esc(Path(str(e.get('policy', '?'))).name)}</code>{goal} "
               f"{what} the reference <code>{esc(ref)}</code>{why}: win rate {interval(w)} "
               f"(95% bootstrap interval over {fnum(n)} held-out prompts; ties count half)")
        kl = e.get("kl")
        if isinstance(kl, dict):
            txt += f", at a KL of {fnum(kl.get('value'), 2)} nats per answer"
        txt += "."
        lc = e.get("length_controlled_win_rate")
        if isinstance(lc, dict) and _val(lc) is not None:
            ln = e.get("length") or {}
            lp, lr = (ln.get("policy") or {}).get("mean_tokens"), (ln.get("reference") or {}).get("mean_tokens")
            txt += (f" Length-controlled (the win rate at equal length, AlpacaEval 2.0's regression): {interval(lc)}; "
                    f"mean length {fnum(lp, 1)} tokens against {fnum(lr, 1)}{length_change(lp, lr)}.")
        d = (e.get("judge_score") or {}).get("difference")
        if d:
            txt += f" Mean gold score difference {interval(d)}."
        p = (e.get("proxy_score") or {}).get("difference")
        if p:
            txt += f" On the proxy reward model (the one RL optimised) the difference is {interval(p)}."
        tu = e.get("true_utility")
        if tu:
            du = tu.get("difference", {})
            lo, hi = lohi(du)
            verdict_tu = ("raised" if lo is not None and lo > 0 else
                          "lowered" if hi is not None and hi < 0 else "did not clearly change")
            txt += f" The hidden true utility of the simulated community: the policy {verdict_tu} it ({interval(du)})."
        parts.append(txt + "</li>")
    return "<ul class='headline'>" + "".join(parts + rm_parts) + "</ul>"


LENGTH_BOUND = 0.30
"""A policy whose mean answer length moved more than this fraction from its reference's
is flagged: a gold judge's win may then be length (Singhal et al. 2023)."""


def length_change(policy_tokens, reference_tokens) -> str:
    """`` (+35%, beyond the 30% ...)`` for the report's sentence; empty when unknown."""
    if not isinstance(policy_tokens, (int, float)) or not isinstance(reference_tokens, (int, float)) \
            or reference_tokens <= 0:
        return ""
    ch = policy_tokens / reference_tokens - 1.0
    txt = f" ({ch:+.0%}"
    if abs(ch) > LENGTH_BOUND:
        txt += (f", more than {LENGTH_BOUND:.0%}: part of any gain may be length; read the length-controlled "
                "win rate")
    return txt + ")"


def frontier_section(run, figs: Figures) -> str:
    """Reward against KL: the RL trajectory on the proxy, and the evaluated endpoints."""
    evals = [s for s in run["eval"] if s.eval]
    rls = [s for s in run["rl"] if s.metrics]
    if not evals and not rls:
        return not_run("RL and evaluation")
    img = figs.save(frontier_figure(rls, evals), "frontier")
    return (img + "<p class='note'>Dots: the proxy reward model's mean score of the RL training samples minus "
            "its value at the first logged step, against their KL (what RL saw); one marker per RL run. Points "
            "with bars: held-out evaluation, policy minus reference, with 95% intervals. "
            "A proxy gain that the gold judge does not share is reward over-optimisation.</p>")


def frontier_figure(rls: list[StageDir], evals: list[StageDir]):
    """The reward-vs-KL figure (a matplotlib Figure) of the RL runs and the evaluations."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    trajectories = []
    for s in rls:
        pts = [(r["objective/kl"], r["objective/score"]) for r in s.metrics
               if isinstance(r.get("objective/kl"), (int, float)) and isinstance(r.get("objective/score"), (int, float))]
        if pts:
            trajectories.append((s, pts))
    # one colour scale (the logged step) and one colour bar for every RL run; a marker each
    norm = plt.Normalize(0, max((len(p) - 1 for _, p in trajectories), default=1) or 1)
    sc = None
    for (s, pts), marker in zip(trajectories, "o^sDv<>ph" * 10):
        # relative to the first logged step (the policy is still ~the reference there), so
        # that the trajectory reads on the same scale as the evaluations' differences
        base = pts[0][1]
        sc = ax.scatter([p[0] for p in pts], [p[1] - base for p in pts], c=range(len(pts)), cmap="viridis",
                        norm=norm, s=12, marker=marker, label=f"{s.name}: proxy score gain on training batches")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="RL step (index)")
    ax.scatter([0], [0], marker="s", color="k", label="reference (by definition)")
    colors = {"judge_score": "#c44e52", "proxy_score": "#dd8452", "true_utility": "#55a868"}
    labels = {"judge_score": "gold judge", "proxy_score": "proxy", "true_utility": "true utility"}
    for s, marker in zip(evals, "osD^v<>p*h" * 10):  # one marker per evaluation, one colour per reward
        e = s.eval
        kl = _val(e.get("kl"))
        if kl is None:
            continue
        for key in ("judge_score", "proxy_score", "true_utility"):
            d = (e.get(key) or {}).get("difference")
            if not d or _val(d) is None:
                continue
            v = _val(d)
            ax.errorbar([kl], [v], yerr=errbars([v], [d]),
                        fmt=marker, color=colors[key], capsize=3, ms=7,
                        label=f"{s.name}: {labels[key]}, policy − reference")
    ax.axhline(0, color="#999", lw=0.6)
    ax.set_xlabel("KL(policy || reference), nats per answer")
    ax.set_ylabel("reward (normalised)")
    ax.set_title("reward vs KL")
    ax.legend(fontsize=7, loc="best")
    return fig


def win_section(run, figs: Figures) -> str:
    evals = [s for s in run["eval"] if s.eval]
    if not evals:
        return not_run("policy evaluation")
    plt = _plt()
    names, vals, ivs = [], [], []
    for s in evals:
        for key, lab in (("win_rate", "gold judge"), ("length_controlled_win_rate", "gold judge, length-controlled"),
                         ("proxy_score", "proxy"), ("true_utility", "true utility")):
            w = s.eval.get(key) if "win_rate" in key else (s.eval.get(key) or {}).get("win_rate")
            if not isinstance(w, dict) or _val(w) is None:
                continue
            names.append(f"{s.name}: {lab}")
            vals.append(_val(w))
            ivs.append(w)
    out = []
    if names:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.4))
        ax.errorbar(vals, range(len(names)), xerr=errbars(vals, ivs), fmt="o", color="#4c72b0", capsize=4, ms=7)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)  # first on top
        ax.axvline(0.5, color="k", ls="--", lw=0.8)
        ax.set_xlim(0, 1)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("win rate of policy over reference (95% interval; ties half)")
        out.append(figs.save(fig, "win_rates"))
    rows = []
    for s in evals:
        e = s.eval
        ln, ds, js = e.get("length") or {}, e.get("distinct") or {}, e.get("judge_score") or {}
        for side in ("policy", "reference"):
            goal = e.get("goal") if side == "policy" else e.get("reference_goal")
            rows.append([s.name, side, Path(str(e.get(side, ""))).name + (f" (goal {goal})" if goal else ""),
                         ("html", interval(js.get(side))),
                         ("html", fnum((ln.get(side) or {}).get("mean_tokens"), 1)), (ln.get(side) or {}).get("stopped_rate"),
                         (ds.get(side) or {}).get("distinct_1"), (ds.get(side) or {}).get("distinct_2"),
                         ("html", interval(e.get("kl"), 2)) if side == "policy" else "0 (by definition)"])
    out.append(table(["eval", "side", "model", "gold score", "tokens", "stopped (EOS)", "distinct-1", "distinct-2", "KL (nats)"], rows))
    return "".join(out)


TEXT_KEYS = ("prompt", "reference", "policy")
COLLAPSE_CHARS = 200
"""Texts longer than this show their first characters (on one line: line breaks become
spaces), the rest one click away."""


def _collapsed(text: Any) -> Any:
    """A long text as ``<details>`` (its start as the summary, the whole text inside); a short
    one as it is."""
    if not isinstance(text, str) or len(text) <= COLLAPSE_CHARS:
        return text
    flat = " ".join(text.split())[:COLLAPSE_CHARS]
    head = flat.rsplit(" ", 1)[0] if " " in flat else flat
    return ("html", f"<details><summary>{esc(head)} … <span class='note'>({len(text):,} characters; "
                    f"show all)</span></summary>{esc(text)}</details>")


def samples_section(run, figs: Figures) -> str:
    evals = [s for s in run["eval"] if s.eval]
    if not evals:
        return not_run("policy evaluation")
    out = []
    for s in evals:
        rows = s.eval.get("table") or [r for r in read_jsonl(s.path / "samples.jsonl") if r.get("sample", 0) == 0][:8]
        if not rows:
            continue
        out.append(f"<h3>{esc(s.name)}</h3>")
        header = ["prompt", "reference answer", "policy answer", "gold: reference", "gold: policy", "KL"]
        keys = ["prompt", "reference", "policy", "reference_score", "policy_score", "kl"]
        for k, lab in (("proxy", "proxy"), ("true_utility", "true utility")):
            if f"policy_{k}" in rows[0]:
                header += [f"{lab}: reference", f"{lab}: policy"]
                keys += [f"reference_{k}", f"policy_{k}"]
        out.append(table(header, [[_collapsed(r.get(k)) if k in TEXT_KEYS else r.get(k) for k in keys] for r in rows],
                         "samples"))
    return "".join(out) or "<p class='missing'>no samples recorded.</p>"


def simulated_section(run, figs: Figures) -> str:
    """True utility (known only for the simulated community) against proxy and gold rewards."""
    evals = [s for s in run["eval"] if s.eval and s.eval.get("true_utility")]
    rm_rec = [(s.name, s.eval) for s in run["rm"] if s.eval and any("true_utility" in k for k in flatten_numbers(s.eval))]
    sims = run.get("simulate", [])
    truths = [s for s in run.get("truth", []) if s.eval]
    if not evals and not rm_rec and not sims and not truths:
        return "<p class='missing'>Not a simulated community (no hidden true utility in this run).</p>"
    plt = _plt()
    out = []
    for s in sims:
        summ = s.manifest.get("summary") or {}
        w = s.manifest.get("utility_weights") or {}
        if w:
            out.append("<p>Hidden utility = " + " ".join(f"{'+' if v >= 0 else '−'} {abs(v):g}·{esc(k)}"
                                                        for k, v in w.items()).lstrip("+ ") + ".</p>")
        labels = {"spearman_score_utility": "raw score vs true utility (within-thread Spearman)",
                  "spearman_score_delay": "raw score vs posting delay (within-thread Spearman; the exposure confound)",
                  "utility_mean": "true utility, mean", "utility_std": "true utility, std"}
        rows = [[labels.get(k, k), v] for k, v in flatten_numbers(summ).items()]
        if rows:
            out.append(f"<p>{esc(s.name)}: what the votes say about the hidden utility</p>"
                       + table(["", "value"], rows, "compact"))
    for s in truths:
        out.append(truth_table(s.eval))
    for name, e in rm_rec:
        nums = {k: v for k, v in flatten_numbers(e).items() if "true_utility" in k}
        out.append(f"<p>{esc(name)}: recovery of the true utility</p>" + table(["key", "value"], [[k, v] for k, v in nums.items()], "compact"))
    for s in evals:
        e = s.eval
        keys = [("true_utility", "true utility"), ("judge_score", "gold judge"), ("proxy_score", "proxy")]
        got = [(lab, (e.get(k) or {}).get("difference")) for k, lab in keys if (e.get(k) or {}).get("difference")]
        if got:
            fig, ax = plt.subplots(figsize=(6, 3))
            v = [_val(d) or 0.0 for _, d in got]
            ax.bar(range(len(got)), v, yerr=errbars(v, [d for _, d in got]),
                   color=["#55a868", "#c44e52", "#dd8452"][: len(got)], capsize=4)
            ax.set_xticks(range(len(got)), [g[0] for g in got])
            ax.axhline(0, color="k", lw=0.8)
            ax.set_ylabel("policy − reference (mean, 95% interval)")
            ax.set_title(f"{s.name}: what improved?")
            out.append(figs.save(fig, f"true_utility_{_slug(s.name)}"))
        rows = read_jsonl(s.path / "samples.jsonl")
        pts = [(r["policy_true_utility"], r["policy_score"], r.get("policy_proxy")) for r in rows if "policy_true_utility" in r] + \
              [(r["reference_true_utility"], r["reference_score"], r.get("reference_proxy")) for r in rows if "reference_true_utility" in r]
        if pts:
            tu = e["true_utility"]
            fig, ax = plt.subplots(figsize=(6, 4))
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, color="#c44e52",
                       label=f"gold judge (Spearman {fnum(tu.get('spearman_judge'), 2)})")
            if any(p[2] is not None for p in pts):
                ax.scatter([p[0] for p in pts if p[2] is not None], [p[2] for p in pts if p[2] is not None], s=10,
                           color="#dd8452", marker="x", label=f"proxy (Spearman {fnum(tu.get('spearman_proxy'), 2)})")
            ax.set_xlabel("true utility (hidden)")
            ax.set_ylabel("reward-model score")
            ax.set_title(f"{s.name}: reward models vs the true utility")
            ax.legend(fontsize=8)
            out.append(figs.save(fig, f"true_vs_reward_{_slug(s.name)}"))
    return "".join(out)


def truth_table(e: dict[str, Any]) -> str:
    """How well each signal recovers the hidden utility (the ``truth`` stage's eval.json):
    within-thread Spearman and pair accuracy of the raw score, the adjusted rank and each
    reward model against the true utility, on the held-out split."""
    split = e.get("split", "test")
    labels = (e.get("labels") or {}).get(split) or {}
    rows = []
    names = {"score": "raw score (upvotes)", "adjusted": "adjusted rank (confound control)"}
    for key, lab in names.items():
        d = labels.get(key) or {}
        if d:
            rows.append([lab, d.get("spearman"), d.get("pair_accuracy")])
    for name, d in (e.get("baselines") or {}).items():
        rows.append([f"baseline: {'longer answer' if name == 'length' else name}", (d or {}).get("spearman"),
                     (d or {}).get("pair_accuracy")])
    comps = e.get("comparisons") or {}
    has_comp = bool(comps)

    def ci(c: dict | None) -> str:
        if not c or c.get("difference") is None:
            return "—"
        return f"{c['difference']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"

    for r in rows:
        r += ["", ""] if has_comp else []
    for name, d in (e.get("reward_models") or {}).items():
        row = [f"reward model {name}", (d or {}).get("spearman"), (d or {}).get("pair_accuracy")]
        if has_comp:
            c = comps.get(name) or {}
            row += [ci(c.get("vs_length")), ci(c.get("vs_score"))]
        rows.append(row)
    if not rows:
        return ""
    n = labels.get("n") or {}
    cap = (f"<p>Recovery of the hidden utility on the {esc(split)} split"
           + (f" ({esc(n.get('threads'))} threads, {esc(n.get('responses'))} answers)" if n else "")
           + ": within-thread Spearman and pairwise agreement with the true utility"
           + ("; the last columns give each reward model's Spearman minus the longer-answer baseline's and minus "
              "the raw score's, with 95% intervals from resampling threads" if has_comp else "") + ".</p>")
    head = ["signal", "Spearman", "pair accuracy"] + (["Δ vs longer answer", "Δ vs raw score"] if has_comp else [])
    return cap + table(head, rows, "compact")
