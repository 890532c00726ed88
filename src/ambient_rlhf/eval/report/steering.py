"""Report pieces on goals: the steering test (one model, goal ``good`` against goal
``bad``) and how far the goal token moves the next-token distribution (``token_shift``
of eval.json, :mod:`ambient_rlhf.eval.goal_shift`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ambient_rlhf.eval.report.markup import Figures, _plt, _slug, esc, fnum, interval, not_run, table
from ambient_rlhf.eval.report.rundir import StageDir

WORDS = {"steers": "<b>steers</b>", "reversed": "<b>steers the wrong way</b>",
         "no clear effect": "<b>does not clearly steer</b>"}
LABELS = {"true_utility": "true utility", "judge": "gold judge", "proxy": "proxy reward model"}


def steering_evals(run: dict[str, list[StageDir]]) -> list[StageDir]:
    return [s for s in run["eval"] if s.eval and isinstance(s.eval.get("steering"), dict)]


def steering_headline(s: StageDir) -> str:
    """One headline item: does the goal steer, on which judge, by how much."""
    e, st = s.eval, s.eval["steering"]
    by = st.get("by", "judge")
    model = Path(str(e.get("policy", "?"))).name
    txt = (f"<li>[{esc(s.name)}] Steering test on {fnum(e.get('n_prompts'))} held-out prompts: the goal token of "
           f"<code>{esc(model)}</code> {WORDS.get(st.get('verdict'), esc(st.get('verdict')))} — goal "
           f"<code>{esc(st.get('goal'))}</code> minus goal <code>{esc(st.get('reference_goal'))}</code>, same seeds: "
           f"{LABELS.get(by, by)} {interval(st.get(by))}")
    others = [f"{LABELS[k]} {interval(st[k])}" for k in ("judge", "proxy") if k != by and isinstance(st.get(k), dict)]
    if others:
        txt += "; " + "; ".join(others)
    txt += f"; length {interval(st.get('length_tokens'), 1)} tokens"
    ts = e.get("token_shift") or {}
    if ts.get("kl"):
        txt += (f". Only the input changed, and the next-token distribution moved by "
                f"{fnum(ts['kl'].get('per_token'), 4)} nats per token (exact KL; "
                f"{fnum(ts['kl'].get('first_token'), 4)} at the first)")
    return txt + " (95% intervals over threads).</li>"


def steering_section(run: dict[str, list[StageDir]], figs: Figures) -> str:
    evals = steering_evals(run)
    if not evals:
        return not_run("the steering test (an evaluation with goal and reference_goal)")
    out = ["<p>One tier-conditioned model on both sides, the same prompts and sampling seeds; only the goal "
           "token differs, so each difference below is the goal's effect. A goal the model ignores gives "
           "intervals around 0.</p>"]
    for s in evals:
        e, st = s.eval, s.eval["steering"]
        rows = [[LABELS.get(k, k), ("html", interval(st[k]))] for k in ("true_utility", "judge", "proxy")
                if isinstance(st.get(k), dict)]
        rows.append(["length (tokens)", ("html", interval(st.get("length_tokens"), 1))])
        rows.append([f"KL(goal {st.get('goal')} || goal {st.get('reference_goal')}), nats per answer (sampled)",
                     ("html", interval(st.get("kl"), 2))])
        out.append(f"<h3>{esc(s.name)}: goal {esc(st.get('goal'))} minus goal {esc(st.get('reference_goal'))} — "
                   f"{WORDS.get(st.get('verdict'), esc(st.get('verdict')))}</h3>")
        out.append(table(["", "difference (95% interval over threads)"], rows, "compact"))
        ts = e.get("token_shift")
        if isinstance(ts, dict):
            out.append(token_shift_part(s.name, ts, figs))
    return "".join(out)


def token_shift_part(name: str, ts: dict[str, Any], figs: Figures) -> str:
    """Per-position exact KL between the goals, and the tokens that gain and lose most."""
    a, b = ts.get("goal"), ts.get("reference_goal")
    out = []
    kl, rev = ts.get("kl") or {}, ts.get("reverse_kl") or {}
    out.append(table(["answers", "KL per answer (exact, 95% interval)", "per token", "first token", "tokens"],
                     [[f"sampled with goal {a}: KL(p_{a} || p_{b})", ("html", interval(kl.get("sequence"), 2)),
                       fnum(kl.get("per_token"), 4), fnum(kl.get("first_token"), 4), kl.get("tokens")],
                      [f"sampled with goal {b}: KL(p_{b} || p_{a})", ("html", interval(rev.get("sequence"), 2)),
                       fnum(rev.get("per_token"), 4), fnum(rev.get("first_token"), 4), rev.get("tokens")]], "compact"))
    bp = ts.get("by_position") or {}
    if bp.get("kl"):
        plt = _plt()
        fig, ax = plt.subplots(figsize=(7, 3))
        for key, lab, c in (("kl", f"KL(p_{a} || p_{b}) on goal-{a} answers", "#4c72b0"),
                            ("reverse_kl", f"KL(p_{b} || p_{a}) on goal-{b} answers", "#c44e52")):
            ys = bp.get(key) or []
            pts = [(i, y) for i, y in enumerate(ys) if isinstance(y, (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=c, label=lab)
        ax.set_xlabel("response position (token)")
        ax.set_ylabel("exact KL, nats")
        ax.set_title(f"{name}: how far the goal token moves each next-token distribution")
        ax.legend(fontsize=8)
        out.append(figs.save(fig, f"goal_kl_by_position_{_slug(name)}"))
    gained, lost = ts.get("gained") or [], ts.get("lost") or []
    if gained or lost:
        rows = []
        for i in range(max(len(gained), len(lost))):
            row: list[Any] = []
            for lst in (gained, lost):
                t = lst[i] if i < len(lst) else {}
                row += [repr(t["token"]) if t else "", fnum(t.get("p_goal"), 4), fnum(t.get("p_reference_goal"), 4),
                        (f"{t['difference']:+.2e}" if t else "")]
            rows.append(row)
        out.append(f"<p>Mean probability of each token over all {fnum(ts.get('positions'))} response positions of "
                   f"both answer sets, under goal {esc(a)} and goal {esc(b)}: the tokens that gain and lose the most "
                   f"(total variation between the two mean distributions {fnum(ts.get('tv_of_mean'), 3)}).</p>")
        out.append(table([f"more likely with {a}", f"p({a})", f"p({b})", "Δ", f"less likely with {a}", f"p({a})",
                          f"p({b})", "Δ"], rows, "compact"))
    return "".join(out)
