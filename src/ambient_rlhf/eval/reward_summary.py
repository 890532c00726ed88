"""The text summary ``ambient rm eval`` prints: :func:`format_summary` of an evaluation
(the dict :func:`ambient_rlhf.eval.reward_eval.evaluate_reward` returns and writes to
eval.json)."""

from __future__ import annotations

from typing import Any


def _fmt(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def format_summary(res: dict[str, Any]) -> str:
    """A short text table of an evaluation."""
    lines = [f"{res['community']} / {res['split']}: {res['n_pairs']} pairs in {res['n_threads']} threads",
             f"  reward model        {_fmt(res['accuracy'])}"]
    for k, v in res["baselines"].items():
        if isinstance(v, dict):
            lines.append(f"  {k:<19} {_fmt(v)}")
    ps = res["preferred_shorter"]
    if ps["n"]:
        lines.append(f"  preferred shorter   {_fmt(ps['accuracy'])} (n={ps['n']})")
    u = res.get("untimed_pairs", {})
    if u.get("n"):
        lines.append(f"  untimed pairs (n={u['n']}): reward model {_fmt(u['accuracy'])}, earlier wins "
                     f"{_fmt(u['earlier_wins'])}, longer wins {_fmt(u['longer_wins'])}")
    sl = res.get("similar_length") or {}
    if sl.get("n"):
        lines.append(f"  similar length (|log word ratio| < {sl['max_abs_log_word_ratio']:g}, n={sl['n']}): reward model "
                     f"{_fmt(sl['accuracy'])}, longer wins {_fmt(sl['longer_wins'])}")
    bl = res.get("beyond_length") or {}
    if bl.get("folds"):
        a0, a1, g = bl["length_only"]["accuracy"], bl["length_reward"]["accuracy"], bl["gain"]["accuracy"]
        l0, l1, gl = bl["length_only"]["log_loss"], bl["length_reward"]["log_loss"], bl["gain"]["log_loss"]
        iv = lambda c: f" [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]" if c.get("ci_low") is not None else ""  # noqa: E731
        lines.append(f"  beyond length: length-only {a0['value']:.3f} -> length+reward {a1['value']:.3f} "
                     f"(gain {g['value']:+.3f}{iv(g)}); log-loss {l0['value']:.3f} -> "
                     f"{l1['value']:.3f} (gain {gl['value']:+.3f}{iv(gl)}); "
                     f"{bl['folds']}-fold cross-validated by thread; verdict: {bl.get('verdict', '?')}")
    lines.append(f"  ECE {res['calibration']['ece']:.3f}; reward~length Spearman {res['length_correlation']['spearman']:.2f}")
    wp = res.get("which_part") or {}
    if wp.get("sets"):
        scorers = [k for k in next(iter(wp["sets"].values())) if k != "n"]
        lines.append("  which part is learned (accuracy; Spearman with length last):")
        lines.append("    " + f"{'pairs':<22}{'n':>6}" + "".join(f"{k:>16}" for k in scorers))
        for name, cell in wp["sets"].items():
            lines.append("    " + f"{name:<22}{cell['n']:>6}" + "".join(f"{cell[k]['value']:>16.3f}" for k in scorers))
        sp = wp.get("spearman_length") or {}
        lines.append("    " + f"{'Spearman(score, length)':<28}" + "".join(
            f"{sp[k]:>16.2f}" if k in sp else f"{'':>16}" for k in scorers))
    return "\n".join(lines)
