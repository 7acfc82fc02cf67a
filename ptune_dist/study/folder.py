"""The study folder: what `ptune study` writes, and the state of each cell.

    study_dir/config.yaml             the study's resolved config (its base run and study section)
    study_dir/study.json              the cells: id, the comparisons it belongs to, its settings
    study_dir/cells/<id>/launch.yaml  a cell's complete run config (its output_dir is the cell folder)
    study_dir/cells/<id>/attempts.json  how often it was started (local queue or Slurm array task: record.py)
                                      and the last exit status ("requeued": stopped at a checkpoint)
    study_dir/cells/<id>/...          the run itself: results.json, final/, checkpoints/, metrics.jsonl
    study_dir/results.csv             one row per cell and task (study/gather.py)
    study_dir/report/                 report.md and its plots (study/report.py, study/plots.py)

Written the sweep's way (launcher/sweep_folder.py): every cell config first, study.json last, each file
atomically. A rerun reuses the folder: cells already there must have the same config but for what a resumed
run may change, new cells are added, and each cell's `ptune train` resumes from its own checkpoints.

A cell is done when its results.json is complete (what `ptune gather` reads), running while a `ptune train`
holds its lock, failed when a start ended without results (and was not requeued at a checkpoint), else
pending.
"""

from __future__ import annotations

import json
from pathlib import Path

from ptune_dist.checkpoint import folder_rule
from ptune_dist.config import to_yaml
from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import PtuneError
from ptune_dist.launcher.files import make_dir, write_file
from ptune_dist.launcher.gather import results_problem
from ptune_dist.launcher.sweep_folder import check_cell_config

STATES = ("done", "running", "failed", "pending")


def cell_dir(study_dir: Path, cell_id: str) -> Path:
    return study_dir / "cells" / cell_id


def check_folder(study_dir: Path, cells: list[dict], configs: list[RunConfig]) -> None:
    """Raise unless the study may be written here: a new or empty folder, or this study's (cells with their
    configs); a folder holding anything else `ptune study` did not create is refused (checkpoint/folder_rule.py)."""
    if not (study_dir / "study.json").exists():
        folder_rule.check_folder(study_dir, folder_rule.STUDY)
        return
    read_cells(study_dir)  # a damaged study.json is refused by name
    for cell, cfg in zip(cells, configs):
        check_cell_config(study_dir, {"id": cell["id"], "dir": str(cell_dir(study_dir, cell["id"]))}, cfg)


def write_study(study_dir: Path, cfg: RunConfig, cells: list[dict], configs: list[RunConfig]) -> None:
    """Cells first, study.json last (keeping cells an earlier, larger study wrote, so their rows stay)."""
    for cell, cell_cfg in zip(cells, configs):
        folder = make_dir(cell_dir(study_dir, cell["id"]), "output_dir")
        write_file(folder / "launch.yaml", to_yaml(cell_cfg), "output_dir")
    write_file(study_dir / "config.yaml", to_yaml(cfg), "output_dir")
    write_file(study_dir / "study.json", json.dumps({"cells": cells}, indent=1), "output_dir")


def read_cells(study_dir: Path) -> list[dict]:
    """study.json's cells, or an error naming the file."""
    path = Path(study_dir) / "study.json"
    try:
        cells = json.loads(path.read_text())["cells"]
        assert isinstance(cells, list) and all(isinstance(c, dict) and isinstance(c.get("id"), str) for c in cells)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise PtuneError(f"{path}: not a study description `ptune study` writes (missing, damaged or edited); "
                         "run `ptune study CONFIG` with output_dir there to write it again") from None
    return cells


def results_of(folder: Path) -> dict | None:
    """The cell's results.json when complete, else None."""
    try:
        results = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return None if results_problem(results) else results


def attempts(folder: Path) -> dict:
    try:
        record = json.loads((folder / "attempts.json").read_text())
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def state(folder: Path) -> str:
    """done | running | failed | pending (see the module docstring)."""
    from ptune_dist.train.run_lock import check_free

    if results_of(folder) is not None:
        return "done"
    try:
        check_free(folder)
    except PtuneError:
        return "running"
    record = attempts(folder)
    return "failed" if record.get("starts") and record.get("last_rc") != "requeued" else "pending"
