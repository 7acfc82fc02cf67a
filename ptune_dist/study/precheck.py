"""What each study cell's own `ptune train` checks before it loads a weight, run on every cell before the study
is written or submitted, and by `--dry-run`: train/session.py `prepare`, the same call the run makes (the
model's config read and model.kind resolved, the tokenizer, each task resolved with its labels and data files,
every row encoded within data.max_length with the cell's virtual tokens, a deep prefix's room). The config
itself was validated when each cell's config was built (prepare.cell_config).

Cells whose checks are the same (same model, data and task sections, prompt depth and length: they differ in
seed, init or optimizer settings) are checked once; an error names the cells and is the run's own message,
which names the key. On Slurm a model this machine cannot read (offline, or a folder only the cluster has) is
left to its cells' jobs, said once on stderr; with the local queue the cells run here, so it is an error.
"""

from __future__ import annotations

import sys

from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import ConfigError, DataError, PtuneError
from ptune_dist.methods import method_class


def check_key(cfg: RunConfig) -> str:
    """What the pre-load checks of a cell depend on."""
    placement = method_class(cfg.method.name).placement
    length = placement.prompt_tokens(cfg.method.num_virtual_tokens)
    return repr((cfg.model, cfg.data, cfg.tasks, placement.name, length))


def check_cells(cells: list[dict], configs: list[RunConfig], backend: str) -> None:
    """Run each distinct cell's pre-load checks; a ConfigError naming the cells (ids) and the run's message."""
    from ptune_dist.model.inspect import load_hf_config
    from ptune_dist.train.session import prepare as run_checks

    groups: dict[str, list[tuple[dict, RunConfig]]] = {}
    for cell, cfg in zip(cells, configs):
        groups.setdefault(check_key(cfg), []).append((cell, cfg))
    unreadable: set[str] = set()  # models this machine cannot read (Slurm only)
    for members in groups.values():
        cfg = members[0][1]
        ids = [c["id"] for c, _ in members]
        where = f"study cell {ids[0]}" + (
            f" (and {len(ids) - 1} more of the same model, task and prompt: "
            f"{', '.join(ids[1:3])}{', ...' if len(ids) > 3 else ''})"
            if len(ids) > 1
            else ""
        )
        name = cfg.model.name_or_path
        if name in unreadable:
            continue
        if backend == "slurm":
            try:
                load_hf_config(name)
            except ConfigError as e:
                unreadable.add(name)
                print(
                    f"ptune study: {e}: not readable on this machine, so its cells' data and lengths are "
                    "checked when their jobs start",
                    file=sys.stderr,
                )
                continue
        try:
            run_checks(cfg)
        except PtuneError as e:
            raise (type(e) if type(e) in (ConfigError, DataError) else PtuneError)(f"{where}: {e}") from None
