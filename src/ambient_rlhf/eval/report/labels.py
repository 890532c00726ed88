"""The report's section on explicit comparisons (``ambient label export`` directories):
how often the labellers agree with each other and with the upvotes, and a person's win
rate of the policy."""

from __future__ import annotations

from ambient_rlhf.eval.report.markup import Figures, esc, fnum, not_run, table


def _rate(d: dict | None) -> tuple[str, str]:
    """(``rate [low, high]``, n) of an agreement entry; dashes when nothing was judged."""
    if not isinstance(d, dict) or not d.get("n"):
        return "–", "0"
    return f"{fnum(d.get('rate'))} [{fnum(d.get('low'))}, {fnum(d.get('high'))}]", str(d["n"])


def label_section(run, figs: Figures) -> str:
    if not run.get("label"):
        return not_run("explicit comparisons (ambient label export)")
    parts = []
    for s in run["label"]:
        a, c = s.manifest.get("agreement") or {}, s.manifest.get("counts") or {}
        parts.append(f"<h3>{esc(s.name)}</h3><p>{esc(c.get('pairs', '?'))} exported pairs from "
                     f"{esc(c.get('live_judgements', '?'))} judgements by {esc(c.get('labellers', '?'))} labeller(s) "
                     f"on {esc(c.get('items', '?'))} items ({esc(c.get('ties', 0))} ties, {esc(c.get('skips', 0))} skips).</p>")
        rows = []
        for label, key, what in (("labellers agree with each other", "labellers", "labeller pairs on shared items"),
                                 ("a person agrees with the upvotes", "upvotes", "A/B judgements of upvote pairs"),
                                 ("a person prefers the policy to the reference", "policy",
                                  "A/B judgements of policy vs reference")):
            rate, n = _rate(a.get(key))
            rows.append([label, rate, n, what])
        parts.append(table(["measure", "share [95% Wilson]", "n", "of"], rows))
        pairs = (a.get("labellers") or {}).get("by_pair") or {}
        if pairs:
            parts.append(table(["labellers", "agreement", "n", "Cohen's kappa"],
                               [[k, v.get("rate"), v.get("n"), v.get("kappa")] for k, v in pairs.items()], "compact"))
    parts.append("<p class='note'>Ties count as a label in the agreement between labellers; skips are left out. "
                 "A share near 0.5 with the upvotes means the upvote pairs carry little of what a person prefers.</p>")
    return "\n".join(parts)
