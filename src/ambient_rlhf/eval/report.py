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
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ambient_rlhf import AmbientError, __version__
from ambient_rlhf.eval.policy_eval import verdict
from ambient_rlhf.io import atomic_dir, write_manifest
from ambient_rlhf.logging import get_logger, read_jsonl

log = get_logger("report")

REPORT_DIR = "report"
REPORT_FILE = "report.html"
STAGES = ("data", "sft", "rm", "rl", "eval", "truth")
STAGE_TITLES = {"data": "Data", "sft": "Behaviour cloning (SFT)", "rm": "Reward models", "rl": "Policy optimisation (RL)",
                "eval": "Policy evaluation", "truth": "Recovery of the true utility (simulated community)"}
RL_CURVES = (("objective/score", "reward-model score"), ("objective/kl", "KL to reference (nats)"),
             ("objective/entropy", "entropy (nats, as logged)"), ("gen/length", "response length (tokens)"))


# ---- reading a run directory -----------------------------------------------------------------
@dataclass
class StageDir:
    """One stage output directory and what it holds."""

    name: str
    path: Path
    stage: str
    manifest: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        if path.exists():
            log.warning("%s: unreadable (%s); ignored", path, e)
        return None
    return obj if isinstance(obj, dict) else None


def _classify(name: str, manifest: dict[str, Any]) -> str | None:
    st = str(manifest.get("stage", "")).lower()
    for key, aliases in (("data", ("data", "simulate")), ("sft", ("sft",)), ("rm", ("rm", "reward", "rm-combine")),
                         ("rl", ("rl",)), ("eval", ("eval",)), ("truth", ("truth",))):
        if st in aliases:
            return key
    n = name.lower()
    for key in ("data", "sft", "rm", "rl", "eval", "truth"):
        if n == key or n.startswith(key + "-") or n.startswith(key + "_"):
            return key
    return None


def _load_stage(path: Path, name: str | None = None) -> StageDir | None:
    manifest = _read_json(path / "manifest.json") or {}
    if not manifest and not (path / "eval.json").exists() and not (path / "metrics.jsonl").exists():
        return None
    stage = _classify(name or path.name, manifest)
    if stage is None:
        return None
    return StageDir(name=name or path.name, path=path, stage=stage, manifest=manifest,
                    eval=_read_json(path / "eval.json"), metrics=read_jsonl(path / "metrics.jsonl"))


def discover(run_dir: str | Path) -> dict[str, list[StageDir]]:
    """Stage directories of a run, grouped by stage (``data``, ``sft``, ``rm``, ``rl``, ``eval``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AmbientError(f"{run}: not a directory; give a run directory (from `ambient run`) or a stage directory")
    found: dict[str, list[StageDir]] = {k: [] for k in STAGES}
    own = _read_json(run / "manifest.json")
    if own is not None and _classify(run.name, own) is not None and own.get("stage") != "run":
        s = _load_stage(run.resolve(), run.resolve().name)  # a single stage directory
        if s is not None:
            found[s.stage].append(s)
            return found
    for sub in sorted(p for p in run.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != REPORT_DIR):
        s = _load_stage(sub)
        if s is not None:
            found[s.stage].append(s)
    for st in STAGES:  # in the order they ran (simulate before data), then by name
        found[st].sort(key=lambda s: (str(s.manifest.get("created", "~")), s.name))
    return found


# ---- small helpers ---------------------------------------------------------------------------
def esc(x: Any) -> str:
    """HTML-escaped text (quotes too): every string from a data or model goes through this."""
    return html.escape("" if x is None else str(x), quote=True)


def fnum(x: Any, nd: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return esc(x) if x is not None else "–"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "–"
        return f"{x:.{nd}f}"
    return esc(x)


def lohi(d: Any) -> tuple[float | None, float | None]:
    """Interval ends of ``{"low", "high"}`` (ambient_rlhf.stats) or ``{"ci_low", "ci_high"}``
    (reward-model evaluation); ``(None, None)`` when absent."""
    if not isinstance(d, dict):
        return None, None
    lo, hi = d.get("low", d.get("ci_low")), d.get("high", d.get("ci_high"))
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in (lo, hi))
    return (float(lo), float(hi)) if ok else (None, None)


def interval(d: Any, nd: int = 3) -> str:
    """``0.620 [0.550, 0.690]`` from ``{"value", "low", "high"}`` (or a bare number)."""
    if isinstance(d, dict) and "value" in d:
        lo, hi = lohi(d)
        if lo is not None:
            return f"{fnum(d['value'], nd)} [{fnum(lo, nd)}, {fnum(hi, nd)}]"
        return fnum(d["value"], nd)
    return fnum(d, nd)


def errbars(vals: list[float], ds: list[Any]) -> list[list[float]]:
    """Matplotlib ``xerr``/``yerr`` (distances below and above) from interval dicts."""
    below, above = [], []
    for v, d in zip(vals, ds):
        lo, hi = lohi(d)
        below.append(max(v - lo, 0.0) if lo is not None else 0.0)
        above.append(max(hi - v, 0.0) if hi is not None else 0.0)
    return [below, above]


def _val(d: Any) -> float | None:
    """A number from a bare number or a ``{"value": ...}`` dict."""
    if isinstance(d, dict):
        d = d.get("value", d.get("accuracy", d.get("mean")))
    if isinstance(d, bool) or not isinstance(d, (int, float)):
        return None
    return float(d) if math.isfinite(float(d)) else None


def flatten_numbers(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested dict as ``{"a.b": x}`` (bools and NaNs left out)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_numbers(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[key] = v
    return out


class Figures:
    """Figures saved as PNG files and kept as bytes for embedding."""

    def __init__(self, out: Path):
        self.out = out
        self.files: dict[str, bytes] = {}

    def save(self, fig, name: str) -> str:
        """Save a matplotlib figure as ``name``.png; return the ``<img>`` tag."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        data = buf.getvalue()
        (self.out / f"{name}.png").write_bytes(data)
        self.files[name] = data
        return img_tag(data, name)

    def embed(self, png: bytes, name: str) -> str:
        """Copy a PNG another stage drew into the report; return the ``<img>`` tag."""
        (self.out / f"{name}.png").write_bytes(png)
        self.files[name] = png
        return img_tag(png, name)


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def table(header: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table; cells are escaped unless given as ``("html", markup)``."""
    def cell(c: Any) -> str:
        if isinstance(c, tuple) and len(c) == 2 and c[0] == "html":
            return c[1]
        return fnum(c) if isinstance(c, (int, float)) or c is None else esc(c)

    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def not_run(what: str) -> str:
    return f'<p class="missing">{esc(what)}: not run (no output in this run directory).</p>'


# ---- sections ----------------------------------------------------------------------------------
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


def stages_table(run: dict[str, list[StageDir]], run_manifest: dict[str, Any] | None = None) -> str:
    """Every stage directory with when it finished and how long it took; with the run's
    manifest (``ambient run``), also each stage's status there (ran, up to date, failed...)."""
    by_name = {st.get("name"): st for st in (run_manifest or {}).get("stages", []) if isinstance(st, dict)}
    rows, seen = [], set()
    for st in STAGES:
        if not run[st]:
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
        out += (f"<p>Run status: {esc(run_manifest.get('status', '?'))}"
                + (f", {fnum(float(run_manifest['seconds']), 0)} s in all" if isinstance(run_manifest.get("seconds"), (int, float)) else "")
                + ".</p>")
    return out


def data_section(run, figs: Figures) -> str:
    if not run["data"]:
        return not_run("data")
    plt = _plt()
    out = []
    for s in run["data"]:
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
    return "".join(out)


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


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in metrics:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


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


def frontier_section(run, figs: Figures) -> str:
    """Reward against KL: the RL trajectory on the proxy, and the evaluated endpoints."""
    evals = [s for s in run["eval"] if s.eval]
    rls = [s for s in run["rl"] if s.metrics]
    if not evals and not rls:
        return not_run("RL and evaluation")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in rls:
        pts = [(r["objective/kl"], r["objective/score"]) for r in s.metrics
               if isinstance(r.get("objective/kl"), (int, float)) and isinstance(r.get("objective/score"), (int, float))]
        if pts:
            # relative to the first logged step (the policy is still ~the reference there), so
            # that the trajectory reads on the same scale as the evaluations' differences
            base = pts[0][1]
            sc = ax.scatter([p[0] for p in pts], [p[1] - base for p in pts], c=range(len(pts)), cmap="viridis", s=12,
                            label=f"{s.name}: proxy score gain on training batches")
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
    img = figs.save(fig, "frontier")
    return (img + "<p class='note'>Dots: the proxy reward model's mean score of the RL training samples minus "
            "its value at the first logged step, against their KL (what RL saw). Points with bars: held-out "
            "evaluation, policy minus reference, with 95% intervals. "
            "A proxy gain that the gold judge does not share is reward over-optimisation.</p>")


def win_section(run, figs: Figures) -> str:
    evals = [s for s in run["eval"] if s.eval]
    if not evals:
        return not_run("policy evaluation")
    plt = _plt()
    names, vals, ivs = [], [], []
    for s in evals:
        for key, lab in (("win_rate", "gold judge"), ("proxy_score", "proxy"), ("true_utility", "true utility")):
            w = s.eval.get(key) if key == "win_rate" else (s.eval.get(key) or {}).get("win_rate")
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
            rows.append([s.name, side, Path(str(e.get(side, ""))).name + (f" (goal {e['goal']})" if side == "policy" and e.get("goal") else ""),
                         ("html", interval(js.get(side))),
                         ("html", fnum((ln.get(side) or {}).get("mean_tokens"), 1)), (ln.get(side) or {}).get("stopped_rate"),
                         (ds.get(side) or {}).get("distinct_1"), (ds.get(side) or {}).get("distinct_2"),
                         ("html", interval(e.get("kl"), 2)) if side == "policy" else "0 (by definition)"])
    out.append(table(["eval", "side", "model", "gold score", "tokens", "stopped (EOS)", "distinct-1", "distinct-2", "KL (nats)"], rows))
    return "".join(out)


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
        out.append(table(header, [[r.get(k) for k in keys] for r in rows], "samples"))
    return "".join(out) or "<p class='missing'>no samples recorded.</p>"


def simulated_section(run, figs: Figures) -> str:
    """True utility (known only for the simulated community) against proxy and gold rewards."""
    evals = [s for s in run["eval"] if s.eval and s.eval.get("true_utility")]
    rm_rec = [(s.name, s.eval) for s in run["rm"] if s.eval and any("true_utility" in k for k in flatten_numbers(s.eval))]
    sims = [s for s in run["data"] if s.manifest.get("stage") == "simulate"]
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


def curves_section(run, figs: Figures) -> str:
    """Loss curves of the SFT and reward-model stages (metrics whose name has 'loss'),
    one panel per stage directory."""
    stages = [s for st in ("sft", "rm") for s in run[st] if s.metrics]
    panels = []
    for s in stages:
        keys = sorted({k for r in s.metrics for k in r if "loss" in k})[:4]
        series = [(k, *_series(s.metrics, k)) for k in keys]
        series = [x for x in series if x[1]]
        if series:
            panels.append((s.name, series))
    if not panels:
        return not_run("SFT and reward-model training") if not stages else "<p class='missing'>no loss curves logged.</p>"
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


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "x"


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}th,td{border:1px solid #ddd;padding:.3em .5em;vertical-align:top;text-align:left}
th{background:#f4f4f4}table.compact td{padding:.15em .5em}
table.samples td{max-width:22em;white-space:pre-wrap;word-wrap:break-word}
img{max-width:100%;display:block;margin:.6em 0}.missing{color:#888;font-style:italic}.note{color:#555;font-size:.85em}
.error{color:#b00}ul.headline li{margin:.4em 0;line-height:1.4}code{background:#f4f4f4;padding:0 .2em}
"""

# Results first (did it help, at what KL, on which samples), then how each stage got there.
SECTIONS: list[tuple[str, str, Callable]] = [
    ("headline", "Headline", lambda run, figs: headline(run)),
    ("win", "Win rates on held-out prompts", win_section),
    ("frontier", "Reward vs KL", frontier_section),
    ("simulated", "Simulated community: true utility vs proxy and gold rewards", simulated_section),
    ("samples", "Samples side by side", samples_section),
    ("rm", "Reward models: accuracy, baselines, calibration", rm_section),
    ("rl", "RL: score, KL, entropy, length", rl_section),
    ("data", "Data: summary and filters", data_section),
    ("training", "Training losses (SFT, reward models)", curves_section),
    ("stages", "Stages", None),  # drawn by render(), which has the run's manifest
]


def render(run: dict[str, list[StageDir]], run_dir: Path, figs: Figures, run_manifest: dict[str, Any] | None = None) -> str:
    parts = [f"<h1>ambient-rlhf report</h1><p class='note'>{esc(run_dir)} · written "
             f"{esc(time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))} · ambient-rlhf {esc(__version__)}</p>"]
    nav = " · ".join(f"<a href='#{sid}'>{esc(title.split(':')[0])}</a>" for sid, title, _ in SECTIONS)
    parts.append(f"<p class='note'>{nav}</p>")
    for sid, title, fn in SECTIONS:
        if fn is None:
            fn = lambda r, f: stages_table(r, run_manifest)  # noqa: E731
        parts.append(f"<h2 id='{sid}'>{esc(title)}</h2>")
        try:
            parts.append(fn(run, figs))
        except Exception as e:  # one broken input must not cost the whole report
            log.warning("report section %s failed: %s", sid, e, exc_info=True)
            parts.append(f"<p class='error'>This section could not be drawn: {esc(type(e).__name__)}: {esc(e)}</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ambient-rlhf report</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.html`` and its PNGs for ``run_dir``; return the path of report.html.

    ``out`` defaults to ``RUN_DIR/report``; it is replaced as a whole on every call."""
    run_dir = Path(run_dir)
    run = discover(run_dir)
    out = Path(out) if out is not None else run_dir / REPORT_DIR
    with atomic_dir(out, overwrite=True) as tmp:
        figs = Figures(tmp)
        own = _read_json(run_dir / "manifest.json")
        page = render(run, run_dir, figs, own if own and own.get("stage") == "run" else None)
        (tmp / REPORT_FILE).write_text(page, encoding="utf-8")
        stage_dirs = [s.path for st in STAGES for s in run[st]]
        write_manifest(tmp, "report", {"run_dir": str(run_dir)}, inputs=stage_dirs,
                       counts={"figures": len(figs.files), **{st: len(run[st]) for st in STAGES}})
    return out / REPORT_FILE

