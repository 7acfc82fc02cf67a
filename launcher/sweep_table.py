"""`ptune gather`: every cell's results.json of a sweep folder into results.csv and results.md.

A sweep.json that is not what `ptune sweep` writes is one error naming the file: every value is checked
with its type, a cell's id is a plain folder name (read_back.name) and its dir this sweep's own
cells/<id> (a dir `../../other-run` would gather another run's results). A cell
without results.json is a `failed` row; one whose results.json is damaged is a `damaged` row with a
note (and a line on stderr), and the other cells are gathered. An unwritable table is one error.
The results check and the table writing are the grid engine's (grid_table.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ptune_dist import read_back
from ptune_dist.errors import ConfigError

from .grid_table import csv_text, markdown_text, results_problem, write_tables


def read_meta(path: Path) -> dict:
    """sweep.json as `ptune sweep` writes it, or a ConfigError naming the file and what is wrong."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path.parent}: no readable sweep.json ({type(e).__name__}); not a sweep folder") from None
    problem = meta_problem(meta, path.parent)
    if problem:
        raise ConfigError(
            f"{path}: {problem}; not the sweep description `ptune sweep` writes (damaged or edited): "
            "restore it, or run the sweep again into another output_dir"
        )
    return meta


def meta_problem(meta, sweep_dir: Path) -> str:
    if not isinstance(meta, dict):
        return "expected a JSON object with grid and cells"
    grid, cells = meta.get("grid"), meta.get("cells")
    if (
        not isinstance(grid, dict)
        or not grid
        or not all(isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in grid.values())
    ):
        return '"grid" is not {"dotted.key": ["value", ...]}'
    if not isinstance(cells, list) or not cells:
        return '"cells" is not a list of cells'
    for i, cell in enumerate(cells):
        problem = cell_problem(cell, grid, sweep_dir)
        if problem:
            return f"cells[{i}]: {problem}"
    ids = [c["id"] for c in cells]
    if len(set(ids)) != len(ids):
        return "two cells with one id"
    return ""


def cell_problem(cell, grid: dict, sweep_dir: Path) -> str:
    if not isinstance(cell, dict):
        return "not a JSON object"
    for key in ("id", "dir"):
        if not isinstance(cell.get(key), str) or not cell[key]:
            return f'no "{key}"'
    try:
        read_back.name(cell["id"])
    except ValueError as e:
        return f"id={cell['id']!r} is not {e}"
    own = (sweep_dir / "cells" / cell["id"]).resolve()
    if (sweep_dir / cell["dir"]).resolve() != own:  # an absolute dir, as written, stays as it is
        return f"dir={cell['dir']!r} is not this sweep's folder for cell {cell['id']} ({own})"
    overrides = cell.get("overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        return '"overrides" is not a list of "key=value"'
    values = dict(o.split("=", 1) for o in overrides)
    if sorted(values) != sorted(grid) or len(values) != len(overrides):
        return f"overrides {overrides} do not set each of the grid's keys ({', '.join(grid)}) once"
    wrong = [f"{k}={v}" for k, v in values.items() if v not in grid[k]]
    return f"{wrong[0]} is not one of the grid's values" if wrong else ""


def cell_rows(sweep_dir: Path, cell: dict, keys: list[str]) -> list[dict]:
    """A cell's rows: one per task of its results.json, or one marked failed (no results) or damaged."""
    values = dict(item.split("=", 1) for item in cell["overrides"])
    base = {"cell": cell["id"], **{k: values[k] for k in keys}}
    path = sweep_dir / cell["dir"] / "results.json"  # an absolute dir (as written) stays as it is
    if not path.exists():
        return [{**base, "status": "failed"}]
    try:
        results = json.loads(path.read_text())
        problem = results_problem(results)
    except (OSError, ValueError) as e:
        problem = f"not readable as JSON ({type(e).__name__})"
    if problem:
        print(f"ptune gather: cell {cell['id']}: {path}: {problem}; its row says damaged", file=sys.stderr)
        return [{**base, "status": "damaged", "note": f"results.json: {problem}"}]
    rows = []
    for task, metrics in results["final"].items():
        row = {**base, "status": "done", "task": task}
        row.update({k if k not in row else f"metric_{k}": v for k, v in metrics.items()})
        for k, v in results.get("baseline", {}).get(task, {}).items():
            row[f"baseline_{k}"] = v
        rows.append(row)
    return rows


def gather(sweep_dir) -> Path:
    """Collect every cell's results.json into results.csv and results.md (a missing one is a failed row,
    a damaged one a damaged row)."""
    sweep_dir = Path(sweep_dir)
    meta = read_meta(sweep_dir / "sweep.json")
    keys = list(meta["grid"])
    rows = [row for cell in meta["cells"] for row in cell_rows(sweep_dir, cell, keys)]
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "note"))
    columns += ["note"] if any("note" in r for r in rows) else []  # why a row is damaged: last
    write_tables(
        {
            sweep_dir / "results.csv": csv_text(rows, columns),  # both written, or neither
            sweep_dir / "results.md": markdown_text(rows, columns),
        }
    )
    return sweep_dir / "results.csv"
