"""How the study's report writes things: Markdown tables, counts (81.9K, 135M), percentages, mean ± std.

Pure string functions (no files), shared by report.py (the tables) and plots.py (the axis labels).
"""

from __future__ import annotations

import math

_UNITS = ((1, ""), (1e3, "K"), (1e6, "M"), (1e9, "B"), (1e12, "T"))


def fmt_count(n: float) -> str:
    """A parameter count in three significant digits: 0, 512, 81.9K, 135M, 1.7B."""
    if n < 0:
        return "-" + fmt_count(-n)
    for scale, suffix in _UNITS:
        s = f"{n / scale:.3g}"
        if "e" not in s and float(s) < 1000:
            return s + suffix
    return f"{n / 1e12:.0f}T"


def fmt_pct(p: float) -> str:
    """A percentage: 100%, 12.3%, 0.06%, 0.0086% (two significant digits below 0.01%), 0%."""
    if p <= 0:
        return "0%"
    if p >= 100:
        s = f"{p:.0f}"
    elif p >= 1:
        s = f"{p:.3g}"
    elif p >= 0.01:
        s = f"{p:.2f}"
    else:
        s = f"{p:.{1 - math.floor(math.log10(p))}f}"
    return s + "%"


def fmt_stat(mean: float, std: float | None, n: int | None = None) -> str:
    """`0.812 ± 0.013`; `0.812 ± -` without a std (one seed); ` (n=K)` appended when n is given."""
    text = f"{mean:.3f} ± " + ("-" if std is None else f"{std:.3f}")
    return text if n is None else f"{text} (n={n})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown (GFM) table: the first column left-aligned, the others (numbers) right-aligned."""

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join([line(header), line(align)] + [line(r) for r in rows])
