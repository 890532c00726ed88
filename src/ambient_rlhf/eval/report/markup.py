"""Small pieces the report sections share: number and interval formatting, HTML tables,
and figures saved as PNG files and embedded in the page."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any


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


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in metrics:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
            xs.append(r["step"])
            ys.append(v)
    return xs, ys


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_") or "x"


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
