"""A grid's cells on disk, shared by `ptune sweep` and `ptune study`: the cell folders, the check that a
folder may take them again, writing them, and each cell's state.

    ROOT/cells/<id>/launch.yaml     a cell's complete run config (its output_dir is the cell folder)
    ROOT/cells/<id>/attempts.json   how often it was started and how the last start ended (grid_attempts.py)
    ROOT/cells/<id>/...             the run itself: results.json, final/, checkpoints/, metrics.jsonl

A cell written before may come back only with what a resumed run may change (train/resume.py's RESUMABLE:
steps, logging, where it runs); rerunning a grid that way retries it: each cell's `ptune train` resumes from
its own checkpoints. cells/ and a cell's folder are ptune's: one that is a symbolic link is refused, not
written through. The grid's own description (sweep.json, study.json) is written by its command after the
cells, so it always describes cells that are all there.

A cell is done when its results.json is complete (grid_table.results_of), running while a `ptune train` holds
its lock, failed when a start ended without results (and was not requeued at a checkpoint), else pending.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from pathlib import Path

from ptune_dist.checkpoint import folder_rule
from ptune_dist.config import from_yaml, to_yaml
from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import ConfigError, PtuneError
from ptune_dist.nofollow import refuse_link

from .files import make_dir, write_file
from .grid_attempts import attempts
from .grid_table import results_of

STATES = ("done", "running", "failed", "pending")
NEW_OUTPUT_DIR = "choose another output_dir (nothing was written)"


def cell_dir(root: Path, cell_id: str) -> Path:
    return Path(root) / "cells" / cell_id


def check_cell_config(root: Path, cell: dict, cfg: RunConfig) -> None:
    """A cell written before (cell["dir"]/launch.yaml) may come back with the changes a resumed run takes,
    nothing else."""
    from ptune_dist.train.resume import RESUMABLE
    from ptune_dist.train.resume import flat_config as flat

    path = Path(cell["dir"]) / "launch.yaml"
    if not path.exists():
        return
    try:
        old = flat(from_yaml(path.read_text()))
    except (OSError, ConfigError) as e:
        raise ConfigError(
            f"output_dir={str(root)!r}: {path} is not a readable cell config ({e}); {NEW_OUTPUT_DIR}"
        ) from None
    new = flat(cfg)
    refused = [
        f"{k}: {old.get(k)!r} there, {new.get(k)!r} here"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k) and not any(fnmatchcase(k, pat) for pat in RESUMABLE)
    ]
    if refused:
        raise ConfigError(
            f"output_dir={str(root)!r} holds this grid's cell {cell['id']} with other settings "
            f"({'; '.join(refused[:4])}{'; ...' if len(refused) > 4 else ''}); its results belong to "
            f"those: put the old values back, or {NEW_OUTPUT_DIR}"
        )


def check_cell_configs(root: Path, cells: list[dict], configs: list[RunConfig]) -> None:
    """Every cell already written under root checked against its config here (check_cell_config)."""
    for cell, cfg in zip(cells, configs):
        check_cell_config(root, {"id": cell["id"], "dir": str(cell_dir(root, cell["id"]))}, cfg)


def check_folder(root: Path, record: str, kind, cells: list[dict], configs: list[RunConfig], same_grid) -> None:
    """Raise unless this grid may be written into root: a new or empty folder (checkpoint/folder_rule.py `kind`:
    anything there the command did not create is refused), or one whose description `record` (sweep.json,
    study.json) `same_grid(path)` accepts (it raises otherwise) and whose cells written before have these
    configs but for what a resumed run may change (check_cell_configs)."""
    if not (Path(root) / record).exists():
        folder_rule.check_folder(root, kind)
        return
    same_grid(Path(root) / record)
    check_cell_configs(root, cells, configs)


def write_cells(root: Path, cells: list[dict], configs: list[RunConfig]) -> None:
    """Each cell's launch.yaml, atomically, in a folder of its own; a link for cells/ or a cell is refused."""
    for cell, cfg in zip(cells, configs):
        refuse_link(Path(root) / "cells")
        folder = make_dir(refuse_link(cell_dir(root, cell["id"])), "output_dir")
        write_file(folder / "launch.yaml", to_yaml(cfg), "output_dir")


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
