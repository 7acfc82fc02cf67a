"""A grid on Slurm: the cells that are not done (nor running) as job arrays, one per resource shape, with
attempt records, and one job that gathers the table once they have all ended.

A cell's shape is what its job asks Slurm for (its launch section: nodes, tasks, GPUs, CPUs, memory, time,
partition and the rest), so a 70B cell and a 1B cell never share an array. Array k reads its cells'
launch.yaml paths from LOG_DIR/array-k.txt, line SLURM_ARRAY_TASK_ID + 1. Each task is the training job of
`ptune launch` (slurm/train.sbatch: USR1 before the time limit, checkpoint, requeue, resume) and records its
start and end in the cell's attempts.json (grid_attempts.py). The gathering job depends on every array
(afterany), so failed cells show up as failed rows rather than blocking it; running the same command again
submits what is still missing. The job record (job.json: the arrays' ids, the gathering job's) is in the log
folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import PtuneError

from . import slurm
from .files import make_dir, write_file
from .grid_cells import cell_dir, state

SHAPE_FREE = ("backend", "launcher", "node_rank", "rdzv_endpoint", "log_dir", "job_name")  # not the job's resources


def shape(cfg: RunConfig) -> tuple:
    return tuple((k, str(v)) for k, v in sorted(dataclasses.asdict(cfg.launch).items()) if k not in SHAPE_FREE)


def groups(root: Path, cells: list[dict], configs: list[RunConfig]) -> list[tuple[RunConfig, list[str]]]:
    """(a config of the shape, the cell ids of that shape), for the cells neither done nor running."""
    out: dict[tuple, tuple[RunConfig, list[str]]] = {}
    for cell, cfg in zip(cells, configs):
        if state(cell_dir(root, cell["id"])) in ("pending", "failed"):
            out.setdefault(shape(cfg), (cfg, []))[1].append(cell["id"])
    return list(out.values())


def array_script(grid: RunConfig, cfg: RunConfig, list_path: Path, n: int, k: int) -> str:
    """Array k over the n cells listed in list_path; its logs with the grid's (grid's launch.log_dir)."""
    job = dataclasses.replace(
        cfg,
        output_dir=grid.output_dir,
        launch=dataclasses.replace(
            cfg.launch, log_dir=str(slurm.log_dir(grid)), job_name=f"{grid.launch.job_name}-{k}"
        ),
    )
    expr = f'"$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {slurm.quote(list_path)})"'
    record = f"{slurm.common_values(job)['python']} -m ptune_dist.launcher.grid_attempts {expr}"
    return slurm.train_script(
        job, list_path, log_name="%x-%A_%a.out", array=f"0-{n - 1}", config_expr=expr, record=record
    )


def scripts(grid: RunConfig, root: Path, cells: list[dict], configs: list[RunConfig]) -> list[tuple]:
    """[(list file, its text, script file, its text)] of each array, checked, nothing written."""
    folder = slurm.log_dir(grid)
    out = []
    for k, (cfg, ids) in enumerate(groups(root, cells, configs)):
        listing = folder / f"array-{k}.txt"
        text = "".join(f"{cell_dir(root, i) / 'launch.yaml'}\n" for i in ids)
        out.append((listing, text, folder / f"array-{k}.sbatch", array_script(grid, cfg, listing, len(ids), k)))
    return out


def submit(
    grid: RunConfig, root: Path, cells: list[dict], configs: list[RunConfig], kind: str, gather: str, gather_file: str
) -> dict:
    """Submit the arrays, then the job that runs `ptune <gather> ROOT` after them (its script `gather_file`);
    job.json (of kind `kind`: slurm.KINDS) records whatever was submitted."""
    slurm.check_record(grid, kind)
    planned = scripts(grid, root, cells, configs)
    folder = make_dir(slurm.log_dir(grid), "launch.log_dir")
    record = {"kind": kind, "output_dir": str(root), "log_dir": str(folder), "job_ids": [], "arrays": []}
    if not planned:
        record["note"] = "every cell is done or running"
        slurm.write_record(folder, record)
        return record
    try:
        for listing, text, script, script_text in planned:
            write_file(listing, text, "launch.log_dir")
            job = slurm.sbatch(write_file(script, script_text, "launch.log_dir"))
            record["job_ids"].append(job)
            record["arrays"].append({"job_id": job, "cells": text.count("\n"), "list": str(listing)})
        after = slurm.gather_script(grid, root, ":".join(record["job_ids"]), command=gather)
        record["gather_job_id"] = slurm.sbatch(write_file(folder / gather_file, after, "launch.log_dir"))
    except PtuneError as e:
        path = slurm.write_record(folder, record)
        raise PtuneError(
            f"{e}; submitted so far: {record['job_ids'] or 'nothing'} (recorded in {path}); run the same "
            f"`ptune {kind}` once they end to submit the rest, or `ptune cancel` {root}"
        ) from None
    slurm.write_record(folder, record)
    return record
