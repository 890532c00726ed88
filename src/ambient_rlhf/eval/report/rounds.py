"""The report's round table: per round of ``ambient run rounds=N`` (round 1 is the plain
run), what the policy reached and whether the reward model ranks its own answers right."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ambient_rlhf.data.feedback import FEEDBACK_FILE
from ambient_rlhf.eval.report.markup import Figures, esc, fnum, interval, table
from ambient_rlhf.eval.report.rundir import StageDir


def _json(p: Path) -> dict[str, Any]:
    try:
        obj = json.loads(p.read_text())
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _round1_comparisons(run_dir: Path) -> int | None:
    """Within-thread comparisons the round-1 proxy trained on (train split, half a)."""
    try:
        import pandas as pd

        from ambient_rlhf.data.splits import half_of

        df = pd.read_parquet(run_dir / "data" / "rankings.parquet", columns=["thread_id", "responses", "split"])
    except (OSError, ValueError, KeyError, ImportError):
        return None
    half_a = np.array([half_of(str(t)) == "a" for t in df["thread_id"]], dtype=bool)
    df = df[(df["split"] == "train").to_numpy() & half_a]
    return int(sum(len(r) * (len(r) - 1) // 2 for r in df["responses"]))


def round_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """One dict per round that has its evaluation: eval/ (round 1), then eval-r/ with
    feedback-r/ (r >= 2), until the first round missing."""
    run_dir = Path(run_dir)
    rows: list[dict[str, Any]] = []
    k = 1
    while True:
        ev_dir = run_dir / ("eval" if k == 1 else f"eval-{k}")
        ev, fb = _json(ev_dir / "eval.json"), _json(run_dir / f"feedback-{k}" / FEEDBACK_FILE)
        if not ev or (k > 1 and not fb):
            break
        ps = _get(ev, "true_utility", "policy_samples") or {}
        rows.append({
            "round": k, "eval": ev_dir.name,
            "new_comparisons": _get(fb, "counts", "ranked_comparisons") if k > 1 else _round1_comparisons(run_dir),
            "labeller": fb.get("labeller") if k > 1 else "the community's votes (data/)",
            "true_utility": _get(ev, "true_utility", "policy"),
            "true_utility_gain": _get(ev, "true_utility", "difference"),
            "gold_win_rate": ev.get("win_rate"), "gold_score_gain": _get(ev, "judge_score", "difference"),
            "kl": ev.get("kl"), "words": _get(ev, "length", "policy", "mean_words"),
            "proxy_spearman": _get(ps, "proxy", "spearman"), "proxy_pair_accuracy": _get(ps, "proxy", "pair_accuracy"),
            "judge_spearman": _get(ps, "judge", "spearman"),
            "feedback_proxy_spearman": _get(fb, "proxy", "spearman_policy"),
            "feedback_proxy_pair_accuracy": _get(fb, "proxy", "pair_accuracy_policy"),
        })
        k += 1
    return rows


def _acc(d: Any) -> str:
    return f"{fnum(d.get('value'), 2)} (n={d.get('n')})" if isinstance(d, dict) else "–"


def rounds_section(run: dict[str, list[StageDir]], figs: Figures) -> str:
    dirs = [s.path for st in run.values() for s in st]
    if not dirs:
        return "<p class='missing'>No stage directories.</p>"
    run_dir = Path(dirs[0]).parent
    rows = round_rows(run_dir)
    if not rows:
        return "<p class='missing'>No policy evaluation in this run.</p>"
    head = ["round", "eval", "new comparisons (from)", "true utility of the policy", "true utility vs SFT",
            "gold win rate", "gold score vs SFT", "KL (nats)", "words", "proxy Spearman on policy samples",
            "proxy pair acc. (policy pairs)", "gold Spearman on policy samples",
            "last proxy on fresh-thread policy answers: Spearman / pair acc."]
    body = [[r["round"], r["eval"], f"{fnum(r['new_comparisons'])} ({r['labeller']})", interval(r["true_utility"], 2),
             interval(r["true_utility_gain"], 2), interval(r["gold_win_rate"], 2), interval(r["gold_score_gain"], 2),
             interval(r["kl"], 2), fnum(r["words"], 1), interval(r["proxy_spearman"], 2),
             _acc(r["proxy_pair_accuracy"]),
             interval(r["judge_spearman"], 2),
             f"{interval(r['feedback_proxy_spearman'], 2)} / {_acc(r['feedback_proxy_pair_accuracy'])}"
             if r["round"] > 1 else "–"] for r in rows]
    note = ("<p class='note'>Each round's policy against SFT on the same held-out prompts, judged by the fixed gold "
            "reward model (rm-gold). \"On policy samples\": Spearman of the reward model's score with the hidden "
            "utility over the policy's own answers alone (95% bootstrap interval), and the share of pairs of one "
            "prompt touching a policy answer (policy vs policy, policy vs SFT) that the score orders like the "
            "utility. The proxy of round r is rm-proxy-r (round 1: rm-proxy). The last column: the previous "
            "round's proxy on the policy answers of round r's fresh feedback threads. Empty cells: no hidden utility "
            "(a real community).</p>")
    one = "" if len(rows) > 1 else "<p class='note'>One round (set <code>rounds=N</code> for more).</p>"
    return one + table([esc(h) for h in head], body, "compact") + note
