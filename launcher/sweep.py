"""`ptune sweep`: a grid (model x method x prompt length x seed, or any keys) as one run per cell.

    sweep_dir/sweep.json            the grid and its cells
    sweep_dir/cells/NNN/launch.yaml a cell's complete config (its output_dir is the cell folder)
    sweep_dir/results.csv, .md      the gathered table (`ptune gather`, run by a dependent Slurm job)

On Slurm the cells are one job array, and a job that depends on it (afterany) gathers the table,
so a failed cell shows up as a row marked failed instead of blocking the table. Locally the cells
run one after another.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import os
from pathlib import Path

from ptune_dist.config import load_config, to_yaml
from ptune_dist.errors import ConfigError

from . import local, slurm


def grid_cells(grid: dict) -> list[list[str]]:
    """Every combination of the grid's values as a list of key=value overrides."""
    if not grid:
        raise ConfigError("sweep.grid is empty: give keys and values, e.g. --grid method.name=prompt_tuning,prefix_tuning")
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(grid[k] for k in keys))]


def check_grid(grid: dict, backend: str) -> None:
    for key in grid:
        if key == "output_dir" or key.startswith("sweep."):
            raise ConfigError(f"sweep.grid.{key}: not a per-cell setting (every cell gets its own folder)")
        if backend == "slurm" and key.startswith("launch."):
            raise ConfigError(f"sweep.grid.{key}: the cells of a Slurm sweep share one job array and its "
                              "#SBATCH settings; set launch.* outside the grid (or run separate sweeps)")


def prepare(files, overrides, grid_args=(), write: bool = True) -> tuple[object, Path, list[dict]]:
    """Resolve every cell's config and (unless `write` is False: --dry-run) write them; returns
    (base cfg, sweep folder, cells)."""
    cfg = load_config(files, overrides)
    grid = dict(cfg.sweep.grid)
    for item in grid_args:  # --grid key=v1,v2
        key, _, values = item.partition("=")
        if not key or not values:
            raise ConfigError(f"--grid {item!r}: expected dotted.key=value1,value2")
        grid[key] = values.split(",")
    check_grid(grid, cfg.launch.backend)
    cfg = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, grid=grid))
    sweep_dir = Path(cfg.output_dir).resolve()
    cells, configs = [], []
    for i, cell in enumerate(grid_cells(grid)):  # every cell validated before anything is written
        folder = sweep_dir / "cells" / f"{i:03d}"
        cell_cfg = load_config(files, list(overrides) + cell + [f"output_dir={folder}"])
        configs.append(to_yaml(dataclasses.replace(cell_cfg, sweep=dataclasses.replace(cell_cfg.sweep, grid={}))))
        cells.append({"id": f"{i:03d}", "overrides": cell, "dir": str(folder)})
    if write:
        for cell, text in zip(cells, configs):
            Path(cell["dir"]).mkdir(parents=True, exist_ok=True)
            (Path(cell["dir"]) / "launch.yaml").write_text(text)
        (sweep_dir / "sweep.json").write_text(json.dumps({"grid": cfg.sweep.grid, "cells": cells}, indent=1))
    return cfg, sweep_dir, cells


def array_script(cfg, sweep_dir: Path, n: int) -> str:
    cells = slurm.quote(sweep_dir / "cells")
    expr = f'{cells}/"$(printf %03d "$SLURM_ARRAY_TASK_ID")"/launch.yaml'
    return slurm.train_script(cfg, sweep_dir, log_name="%x-%A_%a.out", array=f"0-{n - 1}", config_expr=expr)


def submit(cfg, sweep_dir: Path, cells: list[dict]) -> dict:
    folder = slurm.log_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "array.sbatch").write_text(array_script(cfg, sweep_dir, len(cells)))
    array_job = slurm.sbatch(folder / "array.sbatch")
    (folder / "gather.sbatch").write_text(slurm.gather_script(cfg, sweep_dir, array_job))
    gather_job = slurm.sbatch(folder / "gather.sbatch")
    record = {"kind": "sweep", "job_id": array_job, "gather_job_id": gather_job, "cells": len(cells),
              "output_dir": str(sweep_dir), "log_dir": str(folder)}
    slurm.write_record(folder, record)
    return record


def run_locally(cfg, cells: list[dict]) -> int:
    failed = 0
    for cell in cells:
        cell_cfg = load_config([Path(cell["dir"]) / "launch.yaml"])
        failed += local.run(cell_cfg, Path(cell["dir"]) / "launch.yaml") != 0
    return failed


def gather(sweep_dir) -> Path:
    """Collect every cell's results.json into results.csv and results.md (a missing one is a failed row)."""
    sweep_dir = Path(sweep_dir)
    try:
        meta = json.loads((sweep_dir / "sweep.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{sweep_dir}: no readable sweep.json ({type(e).__name__}); not a sweep folder") from None
    keys = list(meta["grid"])
    rows = []
    for cell in meta["cells"]:
        values = dict(item.split("=", 1) for item in cell["overrides"])
        base = {"cell": cell["id"], **{k: values[k] for k in keys}}
        try:
            results = json.loads((Path(cell["dir"]) / "results.json").read_text())
        except (OSError, ValueError):
            rows.append({**base, "status": "failed"})
            continue
        for task, metrics in results.get("final", {}).items():
            row = {**base, "status": "done", "task": task, **metrics}
            for k, v in results.get("baseline", {}).get(task, {}).items():
                row[f"baseline_{k}"] = v
            rows.append(row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    _write(sweep_dir / "results.csv", buf.getvalue())
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    _write(sweep_dir / "results.md", "\n".join(md) + "\n")
    return sweep_dir / "results.csv"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
