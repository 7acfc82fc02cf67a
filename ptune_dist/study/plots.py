"""The study's figures, like Lester et al. 2021's Figures 1 and 3: score against model size (log axis), one
line with markers per method (or prompt length, or init), and a band of mean ± std over seeds.

A figure is described by a spec, which is also what the PNG carries in its text chunk `ptune-series`:

    {"title", "x_label", "y_label", "x_log": true,
     "series": [{"label", "x": [model params], "y": [means], "lo": [mean - std], "hi": [mean + std]}]}

so what was drawn can be read back exactly (`read_series`). Drawing uses a matplotlib Figure on its own Agg
canvas, never pyplot: the caller's backend, open figures and rcParams stay as they were.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .markdown import fmt_count

SERIES_KEY = "ptune-series"
_MARKERS = "os^Dv<>PX*"


def series(label: str, points: list[tuple[float, float, float | None]]) -> dict:
    """One line of a spec from (x, mean, std) points (std None: one seed, no band), sorted by x."""
    points = sorted(points, key=lambda p: p[0])
    return {
        "label": label,
        "x": [p[0] for p in points],
        "y": [p[1] for p in points],
        "lo": [p[1] - (p[2] or 0.0) for p in points],
        "hi": [p[1] + (p[2] or 0.0) for p in points],
    }


def spec(title: str, x_label: str, y_label: str, lines: list[dict]) -> dict:
    """A figure's spec (see the module docstring); lines without points are dropped."""
    return {
        "title": title,
        "x_label": x_label,
        "y_label": y_label,
        "x_log": True,
        "series": [s for s in lines if s["x"]],
    }


def grid_spec(g, title: str, y_label: str) -> dict:
    """The spec of a report.Grid: one line per table row, at the models whose size is known."""
    return spec(
        title,
        "model parameters",
        y_label,
        [
            series(
                label,
                [
                    (p, g.stats[(k, m)].mean, g.stats[(k, m)].std)
                    for m, p in g.models
                    if p is not None and (k, m) in g.stats
                ],
            )
            for k, label in g.rows
        ],
    )


def render_png(fig_spec: dict, legend_title: str = "") -> bytes:
    """The PNG of a spec (with the spec in its `ptune-series` text chunk)."""
    fig = Figure(figsize=(7.5, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, s in enumerate(fig_spec["series"]):
        color = f"C{i % 10}"
        if any(h > lo for lo, h in zip(s["lo"], s["hi"])):
            ax.fill_between(s["x"], s["lo"], s["hi"], color=color, alpha=0.18, linewidth=0)
        ax.plot(s["x"], s["y"], marker=_MARKERS[i % len(_MARKERS)], color=color, label=s["label"])
    if fig_spec.get("x_log", True):
        ax.set_xscale("log")
    xs = sorted({x for s in fig_spec["series"] for x in s["x"]})
    if xs:
        ax.set_xticks(xs, labels=[fmt_count(x) for x in xs])
        ax.minorticks_off()
        if len(xs) == 1:
            ax.set_xlim(xs[0] / 2, xs[0] * 2)
    ax.set_xlabel(fig_spec["x_label"])
    ax.set_ylabel(fig_spec["y_label"])
    ax.set_title(fig_spec["title"])
    ax.grid(True, alpha=0.3)
    if fig_spec["series"]:
        ax.legend(title=legend_title or None, fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={SERIES_KEY: json.dumps(fig_spec)})
    return buf.getvalue()


def read_series(path: Path | str) -> dict:
    """The spec a PNG of render_png carries."""
    from PIL import Image

    with Image.open(path) as im:
        return json.loads(im.text[SERIES_KEY])
