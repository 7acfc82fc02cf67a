"""Whether a sweep may be written into a folder, and writing it.

Nothing is written before every cell's config, the command or the sbatch scripts and the
folder itself have been checked. A folder that holds a sweep.json is reused only for the same sweep:
the same grid and cells, and cell configs that differ from the ones written before only in what a
resumed run may change (train/resume.py's RESUMABLE: steps, logging, where it runs). Rerunning a sweep
that way retries it: each cell's `ptune train` resumes from its own checkpoints (train.resume=auto) and
`gather` reads whatever results.json each cell holds. Another sweep there is refused, naming what
differs, since its cells' results would be gathered under this sweep's values; so is a folder without
sweep.json that holds anything ptune sweep did not create (checkpoint/folder_rule.py: cells/, a results
table, a training run, a user's files), and a cell that a `ptune train` is running in.

The cells' folders, their check and their writing are the grid engine's (grid_cells.py).
Writing: the cells' launch.yaml first, sweep.json last, each file atomically, so a sweep.json always
describes cells that are all there.
"""

from __future__ import annotations

import json
from pathlib import Path

from ptune_dist.checkpoint import folder_rule
from ptune_dist.errors import ConfigError

from . import grid_cells
from .files import write_file
from .grid_cells import NEW_OUTPUT_DIR, write_cells
from .sweep_table import read_meta


def check_folder(sweep_dir: Path, grid: dict, cells: list[dict], configs: list) -> None:
    """Raise unless this sweep may be written into sweep_dir, a folder or none yet (see the module's rules;
    the check itself is the grid engine's: grid_cells.check_folder)."""

    def same_sweep(meta_path: Path) -> None:
        differs = differences(read_meta(meta_path), grid, cells)
        if differs:
            raise ConfigError(
                f"output_dir={str(sweep_dir)!r} holds another sweep ({differs}); its cells' results "
                f"would be gathered under this sweep's values: {NEW_OUTPUT_DIR}"
            )

    grid_cells.check_folder(sweep_dir, "sweep.json", folder_rule.SWEEP, cells, configs, same_sweep)


def differences(old: dict, grid: dict, cells: list[dict]) -> str:
    """What tells the sweep in sweep.json from this one ("" when they are the same sweep)."""
    if list(old["grid"]) != list(grid):
        return f"grid keys {', '.join(old['grid'])} there, {', '.join(grid)} here"
    changed = [
        f"{k}: {','.join(old['grid'][k])} there, {','.join(grid[k])} here" for k in grid if old["grid"][k] != grid[k]
    ]
    if changed:
        reordered = all(sorted(old["grid"][k]) == sorted(grid[k]) for k in grid)
        return "; ".join(changed) + (" (the order of the values numbers the cells)" if reordered else "")
    mine = [(c["id"], c["overrides"]) for c in cells]
    theirs = [(c["id"], c["overrides"]) for c in old["cells"]]
    if mine != theirs:
        return f"other cells: {len(theirs)} there, {len(mine)} here"
    return ""


def write_sweep(sweep_dir: Path, grid: dict, cells: list[dict], configs: list) -> None:
    """Cells first, sweep.json last: a sweep.json always describes cells that are all there. cells/ and a
    cell's folder are ptune's: one that is a symbolic link is refused, not written through (grid_cells)."""
    write_cells(sweep_dir, cells, configs)
    write_file(sweep_dir / "sweep.json", json.dumps({"grid": grid, "cells": cells}, indent=1), "output_dir")
