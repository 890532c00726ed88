"""The "Acts" section of a data directory's report.md (replaced on every ``ambient data acts``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ambient_rlhf.data.acts.feedback import CLASSES, ROLES

HEADER = "## Acts and follow-up feedback (`ambient data acts`)"


def acts_markdown(s: dict[str, Any]) -> str:
    """Markdown of the manifest's ``acts`` section."""
    lines = [HEADER, "",
             f"{s['acts']:,} acts on {s['comments_with_acts']:,} comments in {s['threads_with_acts']:,} of "
             f"{s['threads']:,} threads ({s['acts_per_thread']['mean']} acts per thread; median "
             f"{s['acts_per_thread']['median_over_threads_with_acts']} in threads with any); "
             f"{s['with_feedback']:,} with feedback (a reply with a positive role weight).", "",
             "| act | " + " | ".join(CLASSES) + " | none |", "|---|" + "---:|" * (len(CLASSES) + 1)]
    for act, mix in s["feedback_mix"].items():
        lines.append(f"| {act} | " + " | ".join(f"{mix.get(c, 0):,}" for c in (*CLASSES, "none")) + " |")
    lines += ["", "Direct replies to acts by role and class:", "",
              "| role | " + " | ".join(CLASSES) + " |", "|---|" + "---:|" * len(CLASSES)]
    for ro in ROLES:
        mix = s["reply_classes_by_role"].get(ro, {})
        lines.append(f"| {ro} | " + " | ".join(f"{mix.get(c, 0):,}" for c in CLASSES) + " |")
    rho = s["feedback_upvote_spearman"]
    agr = s["pairs_upvote_agreement"]
    lines += ["",
              f"Feedback score vs upvotes (Spearman, acts with feedback): {'n/a' if rho is None else f'{rho:.3f}'}.",
              "act_pairs.parquet: " + (", ".join(f"{k} {v:,}" for k, v in sorted(s["pairs"].items())) or "no")
              + f" pairs; the chosen (positive feedback) one has more upvotes in "
              f"{'n/a' if agr is None else f'{agr:.1%}'} of {s['pairs_upvote_agreement_n']} pairs with unequal scores.",
              "", "Tree counters: " + ", ".join(f"{k} {v:,}" for k, v in sorted(s["counts"].get("trees", {}).items())),
              ""]
    return "\n".join(lines)


def write_acts_report(d: Path, section: dict[str, Any]) -> None:
    """Append (or replace) the Acts section of ``d/report.md``."""
    p = d / "report.md"
    old = p.read_text() if p.is_file() else ""
    if HEADER in old:
        old = old[: old.index(HEADER)].rstrip() + "\n"
    p.write_text((old + "\n" if old else "") + acts_markdown(section))
