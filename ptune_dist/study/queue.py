"""The local queue: the study's cells one after another on this machine, each as `ptune launch` would run it
(launcher/local.py: torchrun with launch.nproc_per_node ranks).

A done cell is skipped, so a rerun after a kill (or a crash, or a preemption) finishes only what is missing;
a cell that was cut short resumes from its own checkpoints. A cell that fails is started again up to
study.retries more times; each start is counted in its attempts.json. Returns the cells still not done.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ptune_dist.config import load_config
from ptune_dist.launcher import local

from .folder import cell_dir, state
from .record import record


def run_cell(folder: Path, retries: int) -> bool:
    """Start the cell until it is done or has failed 1 + retries times in this call; True when done."""
    path = folder / "launch.yaml"
    cfg = load_config([path])
    for _ in range(1 + retries):
        record(folder, "start")  # attempts.json, as a Slurm array task keeps it too
        record(folder, str(local.run(cfg, path)))
        if state(folder) == "done":
            return True
    return False


def run_queue(study_dir: Path, cells: list[dict], retries: int) -> list[str]:
    """Run every cell that is not done (nor running elsewhere); the ids of those that are still not done."""
    missing = []
    for i, cell in enumerate(cells):
        folder = cell_dir(study_dir, cell["id"])
        now = state(folder)
        if now == "done":
            continue
        if now == "running":
            print(f"ptune study: {cell['id']} is being trained by another process; left to it", file=sys.stderr)
            missing.append(cell["id"])
            continue
        print(f"ptune study: cell {i + 1} of {len(cells)}: {cell['id']}", file=sys.stderr, flush=True)
        if not run_cell(folder, retries):
            missing.append(cell["id"])
    return missing
