"""The local queue of a grid (`ptune sweep`, `ptune study` on launch.backend=local): the cells one after
another on this machine, each as `ptune launch` would run it (local.py: torchrun with launch.nproc_per_node
ranks).

A done cell is skipped, so a rerun after a kill (or a crash, or a preemption) finishes only what is missing;
a cell that was cut short resumes from its own checkpoints; a cell another process is training is left to it.
A cell that fails is started again up to `retries` more times; each start and how it ended is recorded in its
attempts.json (grid_attempts.py, as a Slurm array task records it). Returns the cells still not done.

A Ctrl-C (or TERM) reaches the running cell's ranks once (signals.py): they save a checkpoint and stop, the
cell is recorded as stopped at a checkpoint ("requeued": pending, not failed, and not retried), and the queue
stops there with `Stopped` (130 after a Ctrl-C, 99 after TERM); the next run of the same command resumes the
cell from that checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ptune_dist.config import load_config
from ptune_dist.train.preempt import INTERRUPTED, PREEMPTED

from . import local
from .grid_attempts import record
from .grid_cells import cell_dir, state


class Stopped(Exception):
    """The queue stopped on a signal in cell `cell_id`; `code`: the exit status (130 Ctrl-C, 99 TERM)."""

    def __init__(self, cell_id: str, code: int):
        self.cell_id, self.code = cell_id, code
        what = "interrupted (Ctrl-C)" if code == INTERRUPTED else "stopped on a signal"
        super().__init__(
            f"{what} in cell {cell_id}, which keeps its checkpoint; run the same command to resume "
            "from there (nothing was gathered)"
        )


def run_cell(folder: Path, retries: int) -> bool:
    """Start the cell until it is done or has failed 1 + retries times in this call; True when done. Raises
    Stopped when a signal stopped it."""
    path = folder / "launch.yaml"
    cfg = load_config([path])
    for _ in range(1 + retries):
        record(folder, "start")
        rc = local.run(cfg, path)
        if rc in (INTERRUPTED, PREEMPTED):  # stopped at a checkpoint by a person or a preemption: not a failure
            record(folder, "requeued")
            raise Stopped(folder.name, rc)
        record(folder, str(rc))
        if state(folder) == "done":
            return True
    return False


def run_queue(root: Path, cells: list[dict], retries: int, command: str = "ptune") -> list[str]:
    """Run every cell of root that is not done (nor running elsewhere); the ids of those still not done.
    `command` names the grid in the lines on stderr."""
    missing = []
    for i, cell in enumerate(cells):
        folder = cell_dir(root, cell["id"])
        now = state(folder)
        if now == "done":
            continue
        if now == "running":
            print(f"{command}: {cell['id']} is being trained by another process; left to it", file=sys.stderr)
            missing.append(cell["id"])
            continue
        print(f"{command}: cell {i + 1} of {len(cells)}: {cell['id']}", file=sys.stderr, flush=True)
        if not run_cell(folder, retries):
            missing.append(cell["id"])
    return missing
