"""`ptune sweep`: a grid (model x method x prompt length x seed, or any keys) as one run per cell.

    sweep_dir/sweep.json            the grid and its cells
    sweep_dir/cells/NNN/launch.yaml a cell's complete config (its output_dir is the cell folder)
    sweep_dir/results.csv, .md      the gathered table (`ptune gather`, run by a dependent Slurm job)

On Slurm the cells are one job array, and a job that depends on it (afterany) gathers the table,
so a failed cell shows up as a row marked failed instead of blocking the table. Locally the cells
run one after another.

The grid. Each key is given once (a second --grid for a key is refused, not merged; a --grid key
replaces the same key of the config's sweep.grid), each value once and not empty, and no two cells may
resolve to the same config (0.1 and 0.10). A grid varies what each cell trains, never how the sweep is
started: output_dir, sweep.* and launch.* are refused on either backend, since the cells share one
launch (on Slurm one job array with one set of #SBATCH lines).

Writing. The cells' launch.yaml first, sweep.json last, each file atomically; on Slurm the jobs are
submitted after that. A failed sbatch leaves a complete sweep that was not submitted (the same command
submits it); a gathering job refused after the array was submitted leaves the array recorded in
job.json, and the error says so.

The folder rules are in sweep_folder.py (the cells' own: grid_cells.py); gathering the table in sweep_table.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from ptune_dist.config import load_config, to_yaml
from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import ConfigError, PtuneError

from . import grid_queue, local, slurm
from .files import check_dir, make_dir, write_file
from .sweep_folder import check_folder, write_sweep
from .sweep_table import gather  # noqa: F401  (ptune sweep prints the table it gathers)


# -- the grid --------------------------------------------------------------------------------
def grid_cells(grid: dict) -> list[list[str]]:
    """Every combination of the grid's values as a list of key=value overrides."""
    if not grid:
        raise ConfigError("sweep.grid is empty: give keys and values, e.g. --grid train.lr=0.01,0.03")
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(grid[k] for k in keys))]


def merge_grid(config_grid: dict, grid_args) -> dict:
    """The config's sweep.grid with each --grid key=v1,v2 replacing that key; a key given twice on the
    command line, an empty value or a value given twice is refused."""
    grid = {key: [str(v) for v in values] for key, values in config_grid.items()}
    given = set()
    for item in grid_args:
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"--grid {item!r}: expected dotted.key=value1,value2")
        if key in given:
            raise ConfigError(
                f"--grid {key}=... is given twice: a later one would replace the earlier values; "
                f"give all of them in one, e.g. --grid {key}=a,b,c"
            )
        given.add(key)
        grid[key] = values.split(",")
    for key, values in grid.items():
        check_values(key, values)
    return grid


def check_values(key: str, values: list[str]) -> None:
    where = f"sweep.grid.{key}"
    if not values:
        raise ConfigError(f"{where}: no values; give at least one")
    if any(not v.strip() for v in values):
        raise ConfigError(f"{where}={','.join(values)!r}: an empty value; give each value between commas")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise ConfigError(
            f"{where}: {', '.join(map(repr, twice))} given twice (two cells would be the same run); "
            "give each value once"
        )


def check_grid(grid: dict) -> None:
    """One rule for both backends: the grid varies what a cell trains, not where its output goes or how
    the sweep is started."""
    for key in grid:
        if key == "output_dir" or key.startswith("sweep."):
            raise ConfigError(f"sweep.grid.{key}: not a per-cell setting (every cell gets its own folder)")
        if key.startswith("launch."):
            raise ConfigError(
                f"sweep.grid.{key}: a grid varies what each cell trains, not how the sweep is started; "
                "the cells share one launch (on Slurm one job array and its #SBATCH settings), so set "
                "launch.* outside the grid, or run separate sweeps"
            )


# -- the cells -------------------------------------------------------------------------------
def resolve_cells(files, overrides, grid: dict, sweep_dir: Path) -> tuple[list[dict], list]:
    """(cells, their configs): every cell validated by load_config; two cells with one config refused."""
    cells, configs, seen = [], [], {}
    for i, cell in enumerate(grid_cells(grid)):
        folder = sweep_dir / "cells" / f"{i:03d}"
        cfg = load_config(files, list(overrides) + cell + [f"output_dir={folder}"])
        cfg = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, grid={}))
        same = seen.setdefault(to_yaml(dataclasses.replace(cfg, output_dir="")), i)
        if same != i:
            raise ConfigError(
                f"sweep cells {same:03d} ({' '.join(cells[same]['overrides'])}) and {i:03d} "
                f"({' '.join(cell)}) are the same run: their configs are equal (one value written "
                "two ways?); give each value once"
            )
        cells.append({"id": f"{i:03d}", "overrides": cell, "dir": str(folder)})
        configs.append(cfg)
    return cells, configs


def check_launch(cfg: RunConfig, sweep_dir: Path, cells: list[dict], configs: list) -> None:
    """What run_locally or submit would refuse, refused now: each cell's command, or the scripts."""
    if cfg.launch.backend == "local":
        for cell, cell_cfg in zip(cells, configs):
            local.command(cell_cfg, Path(cell["dir"]) / "launch.yaml")
        return
    array_script(cfg, sweep_dir, len(cells))
    slurm.gather_script(cfg, sweep_dir, "1")
    check_dir(slurm.log_dir(cfg), "launch.log_dir")
    slurm.check_record(cfg, "sweep")


def prepare(files, overrides, grid_args=(), write: bool = True) -> tuple[object, Path, list[dict]]:
    """Resolve and check every cell's config and the sweep folder, then (unless `write` is False:
    --dry-run, which checks the same) write them; returns (base cfg, sweep folder, cells)."""
    from ptune_dist.train.run_lock import check_free

    cfg = load_config(files, overrides)
    grid = merge_grid(cfg.sweep.grid, grid_args)
    check_grid(grid)
    cfg = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, grid=grid))
    sweep_dir = check_dir(Path(cfg.output_dir).resolve(), "output_dir")  # before the log folder inside it
    cells, configs = resolve_cells(files, overrides, grid, sweep_dir)
    check_launch(cfg, sweep_dir, cells, configs)
    check_folder(sweep_dir, grid, cells, configs)
    if write:
        for cell in cells:
            check_free(cell["dir"])  # a cell being trained reads its launch.yaml again when it restarts
        write_sweep(sweep_dir, grid, cells, configs)
    return cfg, sweep_dir, cells


# -- running ---------------------------------------------------------------------------------
def array_script(cfg: RunConfig, sweep_dir: Path, n: int) -> str:
    cells = slurm.quote(sweep_dir / "cells")
    expr = f'{cells}/"$(printf %03d "$SLURM_ARRAY_TASK_ID")"/launch.yaml'
    return slurm.train_script(cfg, sweep_dir, log_name="%x-%A_%a.out", array=f"0-{n - 1}", config_expr=expr)


def submit(cfg: RunConfig, sweep_dir: Path, cells: list[dict]) -> dict:
    """The array job, then the job that gathers after it; job.json records whatever was submitted."""
    slurm.check_record(cfg, "sweep")
    folder = make_dir(slurm.log_dir(cfg), "launch.log_dir")
    record = {"kind": "sweep", "cells": len(cells), "output_dir": str(sweep_dir), "log_dir": str(folder)}
    array = write_file(folder / "array.sbatch", array_script(cfg, sweep_dir, len(cells)), "launch.log_dir")
    try:
        record["job_id"] = slurm.sbatch(array)
    except PtuneError as e:
        raise PtuneError(
            f"{e}; nothing was submitted: the sweep in {sweep_dir} is complete, the same command submits it"
        ) from None
    try:
        gather_text = slurm.gather_script(cfg, sweep_dir, record["job_id"])
        record["gather_job_id"] = slurm.sbatch(write_file(folder / "gather.sbatch", gather_text, "launch.log_dir"))
    except PtuneError as e:
        path = slurm.write_record(folder, record)
        raise PtuneError(
            f"{e}; the array job {record['job_id']} was submitted and is recorded in {path}: once it "
            f"ends, gather the table with `ptune gather {sweep_dir}` (or stop it with "
            f"`ptune cancel {sweep_dir}`)"
        ) from None
    slurm.write_record(folder, record)
    return record


def run_locally(cfg: RunConfig, cells: list[dict]) -> tuple[int, int | None]:
    """The cells on this machine through the grid's local queue (grid_queue.py: a done cell skipped, each start
    recorded in its attempts.json; a sweep retries a failed cell only when it is run again): (how many are not
    done, the exit status of a cell stopped by a signal (130 Ctrl-C, 99 TERM), after which no further cell
    starts; None when none was)."""
    sweep_dir = Path(cfg.output_dir).resolve()
    try:
        return len(grid_queue.run_queue(sweep_dir, cells, retries=0, command="ptune sweep")), None
    except grid_queue.Stopped as e:
        return len(cells), e.code
