"""The study on Slurm: the cells that are not done as job arrays, one per resource shape, and a job that
gathers the report once they have all ended.

A cell's shape is what its job asks Slurm for (its launch section: nodes, tasks, GPUs, CPUs, memory, time,
partition and the rest; model_overrides set them per model size), so a 70B cell and a 1B cell never share an
array. Array k reads its cells' launch.yaml paths from slurm/array-k.txt, line SLURM_ARRAY_TASK_ID + 1. Each
task is the training job of `ptune launch` (slurm/train.sbatch: USR1 before the time limit, checkpoint,
requeue, resume). The report job (`ptune study report`) depends on every array (afterany), so failed cells
show up in the report as failed rather than blocking it; running the same `ptune study` again submits what is
still missing. Logs and the job record (job.json: the arrays' ids, the report job's) are in study_dir/slurm.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import PtuneError
from ptune_dist.launcher import slurm
from ptune_dist.launcher.files import make_dir, write_file

from .folder import cell_dir, state

SHAPE_FREE = ("backend", "launcher", "node_rank", "rdzv_endpoint", "log_dir", "job_name")  # not the job's resources


def shape(cfg: RunConfig) -> tuple:
    return tuple((k, str(v)) for k, v in sorted(dataclasses.asdict(cfg.launch).items()) if k not in SHAPE_FREE)


def groups(study_dir: Path, cells: list[dict], configs: list[RunConfig]) -> list[tuple[RunConfig, list[str]]]:
    """(a config of the shape, the cell ids of that shape), for the cells neither done nor running."""
    out: dict[tuple, tuple[RunConfig, list[str]]] = {}
    for cell, cfg in zip(cells, configs):
        if state(cell_dir(study_dir, cell["id"])) in ("pending", "failed"):
            out.setdefault(shape(cfg), (cfg, []))[1].append(cell["id"])
    return list(out.values())


def array_script(study: RunConfig, cfg: RunConfig, list_path: Path, n: int, k: int) -> str:
    """Array k over the n cells listed in list_path; its logs with the study's (study_dir/slurm)."""
    job = dataclasses.replace(cfg, output_dir=study.output_dir,
                              launch=dataclasses.replace(cfg.launch, log_dir=str(slurm.log_dir(study)),
                                                         job_name=f"{study.launch.job_name}-{k}"))
    expr = f'"$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {slurm.quote(list_path)})"'
    record = f"{slurm.common_values(job)['python']} -m ptune_dist.study.record {expr}"  # attempts.json (record.py)
    return slurm.train_script(job, list_path, log_name="%x-%A_%a.out", array=f"0-{n - 1}", config_expr=expr,
                              record=record)


def scripts(study: RunConfig, study_dir: Path, cells: list[dict], configs: list[RunConfig]) -> list[tuple]:
    """[(list file, its text, script file, its text)] of each array, checked, nothing written."""
    folder = slurm.log_dir(study)
    out = []
    for k, (cfg, ids) in enumerate(groups(study_dir, cells, configs)):
        listing = folder / f"array-{k}.txt"
        text = "".join(f"{cell_dir(study_dir, i) / 'launch.yaml'}\n" for i in ids)
        out.append((listing, text, folder / f"array-{k}.sbatch", array_script(study, cfg, listing, len(ids), k)))
    return out


def submit(study: RunConfig, study_dir: Path, cells: list[dict], configs: list[RunConfig]) -> dict:
    """Submit the arrays, then the report job after them; job.json records whatever was submitted."""
    slurm.check_record(study, "study")
    planned = scripts(study, study_dir, cells, configs)
    folder = make_dir(slurm.log_dir(study), "launch.log_dir")
    record = {"kind": "study", "output_dir": str(study_dir), "log_dir": str(folder), "job_ids": [], "arrays": []}
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
        report = slurm.gather_script(study, study_dir, ":".join(record["job_ids"]), command="study report")
        record["gather_job_id"] = slurm.sbatch(write_file(folder / "report.sbatch", report, "launch.log_dir"))
    except PtuneError as e:
        path = slurm.write_record(folder, record)
        raise PtuneError(f"{e}; submitted so far: {record['job_ids'] or 'nothing'} (recorded in {path}); run the same "
                         "`ptune study` once they end to submit the rest, or `ptune cancel` the study folder") from None
    slurm.write_record(folder, record)
    return record
