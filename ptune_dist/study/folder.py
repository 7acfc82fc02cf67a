"""The study folder: what `ptune study` writes, and the state of each cell.

    study_dir/config.yaml             the study's resolved config (its base run and study section)
    study_dir/study.json              the cells: id, the comparisons it belongs to, its settings
    study_dir/cells/<id>/launch.yaml  a cell's complete run config (its output_dir is the cell folder)
    study_dir/cells/<id>/attempts.json  how often it was started (local queue or Slurm array task:
                                      launcher/grid_attempts.py) and the last exit status ("requeued")
    study_dir/cells/<id>/...          the run itself: results.json, final/, checkpoints/, metrics.jsonl
    study_dir/results.csv             one row per cell and task (study/rows.py)
    study_dir/report/                 report.md and its plots (study/report.py, study/plots.py)

The cells' folders, their check, their writing, their attempt records and their state are the grid engine's,
shared with `ptune sweep` (launcher/grid_cells.py, grid_attempts.py); this module holds what is the study's own:
study.json and config.yaml, and which cells of an earlier grid it keeps. Every cell config first, study.json
last, each file atomically. A rerun reuses the folder: cells already there must have the same config but for what a
resumed
run may change, new cells are added, and each cell's `ptune train` resumes from its own checkpoints. Growing
or shrinking the grid keeps what is done: a done (or running) cell of an earlier grid stays in study.json
(after the new grid's cells), and a done cell keeps the comparisons it was in besides the new grid's, so its
rows stay in results.csv and the report; a pending or failed cell the new grid leaves out is dropped from
study.json (its folder stays: a regrown grid resumes it).

What is read back is checked with its type and domain (read_back.py): study.json is refused by name with
the cell and key and the remedy (`ptune study CONFIG` writes it again). A cell's state (done, running,
failed, pending): grid_cells.state.
"""

from __future__ import annotations

import json
from pathlib import Path

from ptune_dist.config import to_yaml
from ptune_dist.config.schema import RunConfig
from ptune_dist.data.presets import PRESETS
from ptune_dist.errors import PtuneError
from ptune_dist.launcher.files import write_file
from ptune_dist.launcher.grid_attempts import say_once
from ptune_dist.launcher.grid_cells import cell_dir, state, write_cells
from ptune_dist.launcher.grid_table import results_of
from ptune_dist.read_back import count, list_of, mapping, name, one_of, read_record, text, value

from .cells import INITS


def check_study_record(path: Path) -> None:
    """study.json of an earlier run of this command: a damaged or edited one is named on stderr and written again
    from this config (REMEDY); its cells are checked by grid_cells.check_folder."""
    try:
        read_cells(path.parent)
    except PtuneError as e:
        say_once(
            f"ptune study: {str(e).split('; run `ptune study')[0]}; writing it again from this config "
            "(its cells' folders are kept)"
        )


def write_study(study_dir: Path, cfg: RunConfig, cells: list[dict], configs: list[RunConfig]) -> None:
    """Cells first, study.json last; the done cells of an earlier grid kept (kept_cells)."""
    write_cells(study_dir, cells, configs)
    listed = kept_cells(study_dir, cells)
    write_file(study_dir / "config.yaml", to_yaml(cfg), "output_dir")
    write_file(study_dir / "study.json", json.dumps({"cells": listed}, indent=1), "output_dir")


def kept_cells(study_dir: Path, cells: list[dict]) -> list[dict]:
    """study.json's cells for this grid: `cells`, each done one with the comparisons it was in before as well,
    then the earlier grid's done or running cells that this grid leaves out (see the module docstring)."""
    if not (study_dir / "study.json").exists():
        return cells
    try:
        before = {c["id"]: c for c in read_cells(study_dir)}
    except PtuneError:  # damaged: named by check_study_record, written again from this grid
        return cells
    out = []
    for cell in cells:
        old = before.pop(cell["id"], None)
        if old is not None and results_of(cell_dir(study_dir, cell["id"])) is not None:
            cell = {**cell, "parts": [*cell["parts"], *(p for p in old["parts"] if p not in cell["parts"])]}
        out.append(cell)
    return out + [c for c in before.values() if state(cell_dir(study_dir, c["id"])) in ("done", "running")]


REMEDY = "run `ptune study CONFIG` with output_dir there to write it again"
TASK_TYPES = ("classification", "token_classification", "generation")
# what each cell of study.json holds (prepare.describe), checked where read: key -> check
CELL_KEYS = {
    "id": name,
    "parts": list_of(text),
    "model": text,
    "method": text,
    "prompt_length": count,
    "init": one_of("", *INITS),
    "task": text,
    "seed": count,
}
CELL_OPTIONAL = {"task_type": (one_of(*TASK_TYPES), "classification"), "preset": (one_of("", *PRESETS), "")}


def read_cells(study_dir: Path) -> list[dict]:
    """study.json's cells, each key checked with its type and domain (CELL_KEYS), or an error naming the
    file, the cell and the key."""
    path = Path(study_dir) / "study.json"
    record = read_record(path, "a study description `ptune study` writes", REMEDY)
    cells = value(record, "cells", list_of(mapping), path, REMEDY)
    out, seen = [], set()
    for i, cell in enumerate(cells):
        where = f"{path}: cell {i}" + (f" ({cell['id']})" if isinstance(cell.get("id"), str) else "")
        got = {**cell, **{k: value(cell, k, check, where, REMEDY) for k, check in CELL_KEYS.items()}}
        got.update({k: value(cell, k, check, where, REMEDY, default=d) for k, (check, d) in CELL_OPTIONAL.items()})
        if got["id"] in seen:
            raise PtuneError(f"{where}: id {got['id']!r} is listed twice; {REMEDY}")
        seen.add(got["id"])
        out.append(got)
    return out
