"""The study's rows: one per cell (its one task), done or not, into results.csv.

A done cell's row carries the base's size and what trained (results.json "parameters"), the task's main
metric as `score` (METRIC: accuracy for classification, macro-F1 for token classification, next-token
accuracy for generation; CB, whose labels are unbalanced, the mean of accuracy and macro-F1 as in SuperGLUE),
and the final metrics as they are. Other rows carry the cell's settings and its state. A done cell whose
results.json lacks what its row needs (one task's metrics, the main metric as a finite number, parameter counts)
is named on stderr and its row says damaged, with a note; the rest of the table is written. The cells' state
and results and the table's writing are the grid engine's (launcher/grid_cells.py, grid_table.py).
"""

from __future__ import annotations

from pathlib import Path

from ptune_dist.errors import PtuneError
from ptune_dist.launcher.grid_attempts import say_once
from ptune_dist.launcher.grid_cells import cell_dir, state
from ptune_dist.launcher.grid_table import csv_text, results_of, write_tables
from ptune_dist.read_back import count, mapping, number, value

from .folder import read_cells

METRIC = {"classification": "accuracy", "token_classification": "macro_f1", "generation": "token_accuracy"}
COLUMNS = [
    "cell",
    "status",
    "parts",
    "model",
    "model_params",
    "method",
    "prompt_length",
    "init",
    "task",
    "seed",
    "trained_params",
    "metric",
    "score",
]


def metric_name(task_type: str, preset: str) -> str:
    return "accuracy_macro_f1" if preset == "cb" else METRIC[task_type]


def main_metric(task_type: str, preset: str, metrics: dict) -> tuple[str, float]:
    name = metric_name(task_type, preset)
    return name, ((metrics["accuracy"] + metrics["macro_f1"]) / 2 if name == "accuracy_macro_f1" else metrics[name])


def cell_row(study_dir: Path, cell: dict) -> dict:
    folder = cell_dir(study_dir, cell["id"])
    row = {
        "cell": cell["id"],
        "status": state(folder),
        "parts": ";".join(cell["parts"]),
        **{k: cell[k] for k in ("model", "method", "prompt_length", "init", "task", "seed")},
    }
    results = results_of(folder) if row["status"] == "done" else None
    if results is None:
        return row
    path = folder / "results.json"
    try:
        return {**row, **done_values(results, cell, path)}
    except PtuneError as e:
        say_once(f"ptune study: cell {cell['id']}: {e}")
        return {**row, "status": "damaged", "note": str(e)}


def done_values(results: dict, cell: dict, path: Path) -> dict:
    """A done row's numbers from the cell's results.json (results_problem passed: "final" holds dicts),
    each checked, or a PtuneError naming the file and key."""
    remedy = "its row says damaged; delete the cell's folder and run `ptune study CONFIG` again to train it again"
    if len(results["final"]) != 1:  # a cell trains and scores one task
        raise PtuneError(f"{path}: final holds {len(results['final'])} tasks, not the cell's one; {remedy}")
    (metrics,) = results["final"].values()
    metric = metric_name(cell["task_type"], cell["preset"])
    needed = ("accuracy", "macro_f1") if metric == "accuracy_macro_f1" else (metric,)
    checked = {k: value(metrics, k, number, f"{path}: final", remedy) for k in needed}
    params = value(results, "parameters", mapping, path, remedy, default={})
    sizes = {k: value(params, k, count, f"{path}: parameters", remedy, default="") for k in ("base", "trained")}
    _, score = main_metric(cell["task_type"], cell["preset"], checked)
    return {
        "model_params": sizes["base"],
        "trained_params": sizes["trained"],
        "metric": metric,
        "score": score,
        **{k: v for k, v in metrics.items() if k not in COLUMNS},
    }


def write_rows(study_dir) -> tuple[Path, list[dict]]:
    """results.csv of every cell study.json lists; returns its path and the rows."""
    study_dir = Path(study_dir)
    rows = [cell_row(study_dir, cell) for cell in read_cells(study_dir)]
    columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
    (path,) = write_tables({study_dir / "results.csv": csv_text(rows, columns)}, "output_dir")
    return path, rows
