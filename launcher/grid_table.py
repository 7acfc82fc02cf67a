"""A grid's gathered table: what a cell's results.json must hold to be rows, and rows written as CSV (and
Markdown). Both grids gather through it (launcher/sweep_table.py: `ptune gather`; study/rows.py: the
study's results.csv); each decides its own columns.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ptune_dist.errors import PtuneError

from .files import write_file


def results_problem(results, values: bool = True) -> str:
    """What keeps a cell's results.json from being rows ("" when nothing); with values=False only its shape
    is checked (the metrics' values are read, and checked, where a row is made of them)."""
    metrics = '{"task": {"metric": value}}'
    if not isinstance(results, dict):
        return "not a JSON object"
    final = results.get("final")
    if not isinstance(final, dict) or not final or not all(isinstance(m, dict) for m in final.values()):
        return f'"final" is not {metrics}'
    baseline = results.get("baseline", {})
    if not isinstance(baseline, dict) or not all(isinstance(m, dict) for m in baseline.values()):
        return f'"baseline" is not {metrics}'
    for part, tasks in (("final", final), ("baseline", baseline)) if values else ():
        for task, values in tasks.items():
            wrong = [k for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
            if wrong:
                return f'"{part}" {task}.{wrong[0]}={values[wrong[0]]!r} is not a number'
    return ""


def results_of(folder: Path) -> dict | None:
    """The cell's results.json when complete (a training run wrote it: "final" holds each task's metrics),
    else None. Its values are checked where a row is made of them (a damaged row, named)."""
    try:
        results = json.loads((Path(folder) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return None if results_problem(results, values=False) else results


def csv_text(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def markdown_text(rows: list[dict], columns: list[str]) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(md) + "\n"


def write_tables(tables: dict[Path, str], key: str = "") -> list[Path]:
    """Each path its text, atomically: every target checked first (a folder there is refused, nothing written)."""
    for path in tables:
        if Path(path).is_dir():
            raise PtuneError(f"{path} is a folder, not a file; move it away (nothing was written)")
    return [write_file(path, text, key) for path, text in tables.items()]
