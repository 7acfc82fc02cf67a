"""`ptune study CONFIG [...] [key=value ...]`: the study's cells resolved, checked and written (study/folder.py).

Every cell's config is built by load_config from the same files and overrides plus the cell's settings
(cells.Cell.overrides), then the study's method_overrides of its method, model_overrides of its model and of
'MODEL|METHOD' (in that order: a later setting wins), and its output_dir; then it keeps only its own task, and an
empty study and sweep section (a cell is a plain run).
With study.hardware.gpu_mem, the planner's resources for the cell (resources.py) go in before the study's
method and model overrides, which keep their word.
Everything is checked before anything is written, each cell as its own `ptune train` would check it before
loading a weight (precheck.py); --dry-run checks the same and writes nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ptune_dist.checkpoint import folder_rule
from ptune_dist.config import load_config
from ptune_dist.config.schema import RunConfig, StudyConfig, SweepConfig
from ptune_dist.errors import ConfigError
from ptune_dist.launcher import local, slurm
from ptune_dist.launcher.files import check_dir
from ptune_dist.launcher.grid_cells import cell_dir, check_folder

from . import resources
from .cells import Cell, expand
from .folder import check_study_record, write_study
from .precheck import check_cells


def user_overrides(cfg: RunConfig, cell: Cell) -> list[str]:
    """The study's settings for the cell: method_overrides of its method, model_overrides of its model and of
    'MODEL|METHOD', in that order."""
    by_model = cfg.study.model_overrides
    return [
        *cfg.study.method_overrides.get(cell.method, []),
        *by_model.get(cell.model, []),
        *by_model.get(f"{cell.model}|{cell.method}", []),
    ]


def cell_config(files, overrides, cfg: RunConfig, cell: Cell, study_dir: Path, planned=()) -> RunConfig:
    """The cell's run config; `planned`: its resources (resources.py), which the user's settings override."""
    where = f"study cell {cell.id}"
    try:
        c = load_config(
            files,
            [
                *overrides,
                *cell.overrides(),
                *planned,
                *user_overrides(cfg, cell),
                f"output_dir={cell_dir(study_dir, cell.id)}",
            ],
        )
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return dataclasses.replace(c, tasks=[c.tasks[cell.task]], study=StudyConfig(), sweep=SweepConfig())


def planned_settings(
    files, overrides, cfg: RunConfig, cell: Cell, study_dir: Path, cluster: resources.Cluster
) -> tuple[resources.Planned, list[str]]:
    """The planner's setup for the cell, and its key=value settings, from the cell's config as the user set it."""
    plain = cell_config(files, overrides, cfg, cell, study_dir)
    fixed = resources.user_keys([*overrides, *user_overrides(cfg, cell)])
    planned, req = resources.plan_cell(plain, cell.id, cell.model, fixed, cluster)
    return planned, resources.settings(planned, req, plain, fixed)


def cell_configs(files, overrides, cfg: RunConfig, expanded, cells: list[dict], study_dir: Path) -> list[RunConfig]:
    """Every cell's run config; with study.hardware.gpu_mem, each with its planned resources (recorded in its
    study.json entry). Cells that differ only in seed or init share a plan."""
    cluster = resources.cluster_of(cfg)
    if cluster is None:
        return [cell_config(files, overrides, cfg, cell, study_dir) for cell, _ in expanded]
    plans, out = {}, []
    for (cell, _), entry in zip(expanded, cells):
        key = (cell.model, cell.method, cell.prompt_length, cell.task)
        if key not in plans:
            plans[key] = planned_settings(files, overrides, cfg, cell, study_dir, cluster)
        planned, settings = plans[key]
        entry["resources"] = planned.describe()
        out.append(cell_config(files, overrides, cfg, cell, study_dir, settings))
    return out


def describe(cell: Cell, parts, task) -> dict:
    return {
        "id": cell.id,
        "parts": list(parts),
        "model": cell.model,
        "method": cell.method,
        "prompt_length": cell.prompt_length,
        "init": cell.init,
        "task": cell.task_name,
        "seed": cell.seed,
        "task_type": task.type,
        "preset": task.preset,
    }


def resolve_study(files, overrides, write: bool = True) -> tuple[RunConfig, Path, list[dict], list[RunConfig]]:
    """(the study's config, its folder, its cells as study.json lists them, their run configs)."""
    cfg = load_config(files, overrides)
    study_dir = check_dir(Path(cfg.output_dir).resolve(), "output_dir")
    cfg = dataclasses.replace(cfg, output_dir=str(study_dir))
    expanded = expand(cfg)
    cells = [describe(cell, parts, cfg.tasks[cell.task]) for cell, parts in expanded]
    configs = cell_configs(files, overrides, cfg, expanded, cells, study_dir)
    if cfg.launch.backend == "local":
        for cell, cell_cfg in zip(cells, configs):
            local.command(cell_cfg, cell_dir(study_dir, cell["id"]) / "launch.yaml")  # what the queue would refuse
    else:
        from ptune_dist.launcher.grid_arrays import scripts

        scripts(cfg, study_dir, cells, configs)  # every array's sbatch script, checked
        slurm.gather_script(cfg, study_dir, "1", command="study report")
        slurm.check_record(cfg, "study")
    check_folder(study_dir, "study.json", folder_rule.STUDY, cells, configs, check_study_record)
    check_cells(cells, configs, cfg.launch.backend)  # what each cell's run checks before it loads
    if write:
        write_study(study_dir, cfg, cells, configs)
    return cfg, study_dir, cells, configs
