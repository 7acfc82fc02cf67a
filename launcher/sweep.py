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

The folder. Nothing is written before every cell's config, the command or the sbatch scripts and the
folder itself have been checked. A folder that holds a sweep.json is reused only for the same sweep:
the same grid and cells, and cell configs that differ from the ones written before only in what a
resumed run may change (train/resume.py's RESUMABLE: steps, logging, where it runs). Rerunning a sweep
that way retries it: each cell's `ptune train` resumes from its own checkpoints (train.resume=auto) and
`gather` reads whatever results.json each cell holds. Another sweep there is refused, naming what
differs, since its cells' results would be gathered under this sweep's values; so is a folder without
sweep.json that holds cells/ or a results table, and a cell that a `ptune train` is running in.

Writing. The cells' launch.yaml first, sweep.json last, each file atomically; on Slurm the jobs are
submitted after that. A failed sbatch leaves a complete sweep that was not submitted (the same command
submits it); a gathering job refused after the array was submitted leaves the array recorded in
job.json, and the error says so.

Gathering. A sweep.json that is not what `ptune sweep` writes is one error naming the file. A cell
without results.json is a `failed` row; one whose results.json is damaged is a `damaged` row with a
note (and a line on stderr), and the other cells are gathered. An unwritable table is one error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import sys
from fnmatch import fnmatchcase
from pathlib import Path

from ptune_dist.config import from_yaml, load_config, to_yaml
from ptune_dist.errors import ConfigError, PtuneError

from . import check_dir, local, make_dir, slurm, write_file

TABLES = ("results.csv", "results.md")
NEW_OUTPUT_DIR = "choose another output_dir (nothing was written)"


# -- the grid --------------------------------------------------------------------------------
def grid_cells(grid: dict) -> list[list[str]]:
    """Every combination of the grid's values as a list of key=value overrides."""
    if not grid:
        raise ConfigError("sweep.grid is empty: give keys and values, e.g. --grid method.name=prompt_tuning,prefix_tuning")
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
            raise ConfigError(f"--grid {key}=... is given twice: a later one would replace the earlier values; "
                              f"give all of them in one, e.g. --grid {key}=a,b,c")
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
        raise ConfigError(f"{where}: {', '.join(map(repr, twice))} given twice (two cells would be the same run); "
                          "give each value once")


def check_grid(grid: dict) -> None:
    """One rule for both backends: the grid varies what a cell trains, not where its output goes or how
    the sweep is started."""
    for key in grid:
        if key == "output_dir" or key.startswith("sweep."):
            raise ConfigError(f"sweep.grid.{key}: not a per-cell setting (every cell gets its own folder)")
        if key.startswith("launch."):
            raise ConfigError(f"sweep.grid.{key}: a grid varies what each cell trains, not how the sweep is started; "
                              "the cells share one launch (on Slurm one job array and its #SBATCH settings), so set "
                              "launch.* outside the grid, or run separate sweeps")


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
            raise ConfigError(f"sweep cells {same:03d} ({' '.join(cells[same]['overrides'])}) and {i:03d} "
                              f"({' '.join(cell)}) are the same run: their configs are equal (one value written "
                              "two ways?); give each value once")
        cells.append({"id": f"{i:03d}", "overrides": cell, "dir": str(folder)})
        configs.append(cfg)
    return cells, configs


def check_launch(cfg, sweep_dir: Path, cells: list[dict], configs: list) -> None:
    """What run_locally or submit would refuse, refused now: each cell's command, or the scripts."""
    if cfg.launch.backend == "local":
        for cell, cell_cfg in zip(cells, configs):
            local.command(cell_cfg, Path(cell["dir"]) / "launch.yaml")
        return
    array_script(cfg, sweep_dir, len(cells))
    slurm.gather_script(cfg, sweep_dir, "1")
    check_dir(slurm.log_dir(cfg), "launch.log_dir")
    slurm.check_record(cfg, "sweep")


# -- the folder ------------------------------------------------------------------------------
def check_folder(sweep_dir: Path, grid: dict, cells: list[dict], configs: list) -> None:
    """Raise unless this sweep may be written into sweep_dir, a folder or none yet (see the module's rules)."""
    meta_path = sweep_dir / "sweep.json"
    if meta_path.exists():
        differs = differences(read_meta(meta_path), grid, cells)
        if differs:
            raise ConfigError(f"output_dir={str(sweep_dir)!r} holds another sweep ({differs}); its cells' results "
                              f"would be gathered under this sweep's values: {NEW_OUTPUT_DIR}")
        for cell, cell_cfg in zip(cells, configs):
            check_cell_config(sweep_dir, cell, cell_cfg)
    else:
        held = [name for name in ("cells", *TABLES) if (sweep_dir / name).exists()]
        if held:
            raise ConfigError(f"output_dir={str(sweep_dir)!r} holds {', '.join(held)} but no sweep.json: not a sweep "
                              f"this command can reuse, and its files would be mixed with this one's: {NEW_OUTPUT_DIR}")


def differences(old: dict, grid: dict, cells: list[dict]) -> str:
    """What tells the sweep in sweep.json from this one ("" when they are the same sweep)."""
    if list(old["grid"]) != list(grid):
        return f"grid keys {', '.join(old['grid'])} there, {', '.join(grid)} here"
    changed = [f"{k}: {','.join(old['grid'][k])} there, {','.join(grid[k])} here"
               for k in grid if old["grid"][k] != grid[k]]
    if changed:
        reordered = all(sorted(old["grid"][k]) == sorted(grid[k]) for k in grid)
        return "; ".join(changed) + (" (the order of the values numbers the cells)" if reordered else "")
    mine = [(c["id"], c["overrides"]) for c in cells]
    theirs = [(c["id"], c["overrides"]) for c in old["cells"]]
    if mine != theirs:
        return f"other cells: {len(theirs)} there, {len(mine)} here"
    return ""


def check_cell_config(sweep_dir: Path, cell: dict, cfg) -> None:
    """A cell written before may come back with the changes a resumed run takes, nothing else."""
    from ptune_dist.train.resume import RESUMABLE
    from ptune_dist.train.resume import _flat as flat

    path = Path(cell["dir"]) / "launch.yaml"
    if not path.exists():
        return
    try:
        old = flat(from_yaml(path.read_text()))
    except (OSError, ConfigError) as e:
        raise ConfigError(f"output_dir={str(sweep_dir)!r}: {path} is not a readable cell config ({e}); "
                          f"{NEW_OUTPUT_DIR}") from None
    new = flat(cfg)
    refused = [f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not any(fnmatchcase(k, pat) for pat in RESUMABLE)]
    if refused:
        raise ConfigError(f"output_dir={str(sweep_dir)!r} holds this sweep's cell {cell['id']} with other settings "
                          f"({'; '.join(refused[:4])}{'; ...' if len(refused) > 4 else ''}); its results belong to "
                          f"those: put the old values back, or {NEW_OUTPUT_DIR}")


def write_sweep(sweep_dir: Path, grid: dict, cells: list[dict], configs: list) -> None:
    """Cells first, sweep.json last: a sweep.json always describes cells that are all there."""
    for cell, cfg in zip(cells, configs):
        folder = make_dir(cell["dir"], "output_dir")
        write_file(folder / "launch.yaml", to_yaml(cfg), "output_dir")
    write_file(sweep_dir / "sweep.json", json.dumps({"grid": grid, "cells": cells}, indent=1), "output_dir")


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
def array_script(cfg, sweep_dir: Path, n: int) -> str:
    cells = slurm.quote(sweep_dir / "cells")
    expr = f'{cells}/"$(printf %03d "$SLURM_ARRAY_TASK_ID")"/launch.yaml'
    return slurm.train_script(cfg, sweep_dir, log_name="%x-%A_%a.out", array=f"0-{n - 1}", config_expr=expr)


def submit(cfg, sweep_dir: Path, cells: list[dict]) -> dict:
    """The array job, then the job that gathers after it; job.json records whatever was submitted."""
    slurm.check_record(cfg, "sweep")
    folder = make_dir(slurm.log_dir(cfg), "launch.log_dir")
    record = {"kind": "sweep", "cells": len(cells), "output_dir": str(sweep_dir), "log_dir": str(folder)}
    array = write_file(folder / "array.sbatch", array_script(cfg, sweep_dir, len(cells)), "launch.log_dir")
    try:
        record["job_id"] = slurm.sbatch(array)
    except PtuneError as e:
        raise PtuneError(f"{e}; nothing was submitted: the sweep in {sweep_dir} is complete, the same command "
                         "submits it") from None
    try:
        gather_text = slurm.gather_script(cfg, sweep_dir, record["job_id"])
        record["gather_job_id"] = slurm.sbatch(write_file(folder / "gather.sbatch", gather_text, "launch.log_dir"))
    except PtuneError as e:
        path = slurm.write_record(folder, record)
        raise PtuneError(f"{e}; the array job {record['job_id']} was submitted and is recorded in {path}: once it "
                         f"ends, gather the table with `ptune gather {sweep_dir}` (or stop it with "
                         f"`ptune cancel {sweep_dir}`)") from None
    slurm.write_record(folder, record)
    return record


def run_locally(cfg, cells: list[dict]) -> int:
    failed = 0
    for cell in cells:
        cell_cfg = load_config([Path(cell["dir"]) / "launch.yaml"])
        failed += local.run(cell_cfg, Path(cell["dir"]) / "launch.yaml") != 0
    return failed


# -- gathering -------------------------------------------------------------------------------
def read_meta(path: Path) -> dict:
    """sweep.json as `ptune sweep` writes it, or a ConfigError naming the file and what is wrong."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path.parent}: no readable sweep.json ({type(e).__name__}); not a sweep folder") from None
    problem = meta_problem(meta)
    if problem:
        raise ConfigError(f"{path}: {problem}; not the sweep description `ptune sweep` writes (damaged or edited): "
                          "restore it, or run the sweep again into another output_dir")
    return meta


def meta_problem(meta) -> str:
    if not isinstance(meta, dict):
        return "expected a JSON object with grid and cells"
    grid, cells = meta.get("grid"), meta.get("cells")
    if not isinstance(grid, dict) or not grid or not all(
            isinstance(v, list) and v and all(isinstance(x, str) for x in v) for v in grid.values()):
        return '"grid" is not {"dotted.key": ["value", ...]}'
    if not isinstance(cells, list) or not cells:
        return '"cells" is not a list of cells'
    for i, cell in enumerate(cells):
        problem = cell_problem(cell, grid)
        if problem:
            return f"cells[{i}]: {problem}"
    ids = [c["id"] for c in cells]
    if len(set(ids)) != len(ids):
        return "two cells with one id"
    return ""


def cell_problem(cell, grid: dict) -> str:
    if not isinstance(cell, dict):
        return "not a JSON object"
    for key in ("id", "dir"):
        if not isinstance(cell.get(key), str) or not cell[key]:
            return f'no "{key}"'
    overrides = cell.get("overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o for o in overrides):
        return '"overrides" is not a list of "key=value"'
    values = dict(o.split("=", 1) for o in overrides)
    if sorted(values) != sorted(grid) or len(values) != len(overrides):
        return f"overrides {overrides} do not set each of the grid's keys ({', '.join(grid)}) once"
    wrong = [f"{k}={v}" for k, v in values.items() if v not in grid[k]]
    return f"{wrong[0]} is not one of the grid's values" if wrong else ""


def results_problem(results) -> str:
    """What keeps a cell's results.json from being rows ("" when nothing)."""
    metrics = '{"task": {"metric": value}}'
    if not isinstance(results, dict):
        return "not a JSON object"
    final = results.get("final")
    if not isinstance(final, dict) or not final or not all(isinstance(m, dict) for m in final.values()):
        return f'"final" is not {metrics}'
    baseline = results.get("baseline", {})
    if not isinstance(baseline, dict) or not all(isinstance(m, dict) for m in baseline.values()):
        return f'"baseline" is not {metrics}'
    return ""


def cell_rows(sweep_dir: Path, cell: dict, keys: list[str]) -> list[dict]:
    """A cell's rows: one per task of its results.json, or one marked failed (no results) or damaged."""
    values = dict(item.split("=", 1) for item in cell["overrides"])
    base = {"cell": cell["id"], **{k: values[k] for k in keys}}
    path = sweep_dir / cell["dir"] / "results.json"  # an absolute dir (as written) stays as it is
    if not path.exists():
        return [{**base, "status": "failed"}]
    try:
        results = json.loads(path.read_text())
        problem = results_problem(results)
    except (OSError, ValueError) as e:
        problem = f"not readable as JSON ({type(e).__name__})"
    if problem:
        print(f"ptune gather: cell {cell['id']}: {path}: {problem}; its row says damaged", file=sys.stderr)
        return [{**base, "status": "damaged", "note": f"results.json: {problem}"}]
    rows = []
    for task, metrics in results["final"].items():
        row = {**base, "status": "done", "task": task}
        row.update({k if k not in row else f"metric_{k}": v for k, v in metrics.items()})
        for k, v in results.get("baseline", {}).get(task, {}).items():
            row[f"baseline_{k}"] = v
        rows.append(row)
    return rows


def gather(sweep_dir) -> Path:
    """Collect every cell's results.json into results.csv and results.md (a missing one is a failed row,
    a damaged one a damaged row)."""
    sweep_dir = Path(sweep_dir)
    meta = read_meta(sweep_dir / "sweep.json")
    keys = list(meta["grid"])
    rows = [row for cell in meta["cells"] for row in cell_rows(sweep_dir, cell, keys)]
    columns = list(dict.fromkeys(k for r in rows for k in r if k != "note"))
    columns += ["note"] if any("note" in r for r in rows) else []  # why a row is damaged: last
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    for name in TABLES:  # both written, or neither
        if (sweep_dir / name).is_dir():
            raise PtuneError(f"{sweep_dir / name} is a folder, not a file; move it away (nothing was written)")
    for name, text in zip(TABLES, (buf.getvalue(), "\n".join(md) + "\n")):
        write_file(sweep_dir / name, text)
    return sweep_dir / "results.csv"
