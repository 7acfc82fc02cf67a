"""The study's rows: one per cell (its one task), done or not, into results.csv.

A done cell's row carries the base's size and what trained (results.json "parameters"), the task's main
metric as `score` (METRIC: accuracy for classification, macro-F1 for token classification, next-token
accuracy for generation; CB, whose labels are unbalanced, the mean of accuracy and macro-F1 as in SuperGLUE),
and the final metrics as they are. Other rows carry the cell's settings and its state.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ptune_dist.launcher.files import write_file

from .folder import cell_dir, read_cells, results_of, state

METRIC = {"classification": "accuracy", "token_classification": "macro_f1", "generation": "token_accuracy"}
COLUMNS = ["cell", "status", "parts", "model", "model_params", "method", "prompt_length", "init", "task", "seed",
           "trained_params", "metric", "score"]


def main_metric(task_type: str, preset: str, metrics: dict) -> tuple[str, float]:
    if preset == "cb":
        return "accuracy_macro_f1", (metrics["accuracy"] + metrics["macro_f1"]) / 2
    name = METRIC[task_type]
    return name, metrics[name]


def cell_row(study_dir: Path, cell: dict) -> dict:
    folder = cell_dir(study_dir, cell["id"])
    row = {"cell": cell["id"], "status": state(folder), "parts": ";".join(cell["parts"]),
           **{k: cell[k] for k in ("model", "method", "prompt_length", "init", "task", "seed")}}
    results = results_of(folder) if row["status"] == "done" else None
    if results is None:
        return row
    (metrics,) = results["final"].values()  # a cell trains and scores one task
    params = results.get("parameters", {})
    metric, score = main_metric(cell.get("task_type", "classification"), cell.get("preset", ""), metrics)
    row.update(model_params=params.get("base", ""), trained_params=params.get("trained", ""), metric=metric,
               score=score, **{k: v for k, v in metrics.items() if k not in row})
    return row


def gather(study_dir) -> tuple[Path, list[dict]]:
    """results.csv of every cell study.json lists; returns its path and the rows."""
    study_dir = Path(study_dir)
    rows = [cell_row(study_dir, cell) for cell in read_cells(study_dir)]
    columns = COLUMNS + sorted({k for r in rows for k in r} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    return write_file(study_dir / "results.csv", buf.getvalue(), "output_dir"), rows
