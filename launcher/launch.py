"""`ptune launch`: resolve the config once, write it to output_dir/launch.yaml, start the ranks.

On this machine (local.py: torchrun or the deepspeed launcher) or as a Slurm job (slurm.py). A dry run
prints the command shell-quoted (shlex.join) or the sbatch script, checks the folders as a real launch
would, and writes nothing. output_dir follows `ptune train`'s folder rule (checkpoint/folder_rule.py),
checked here before anything is written or submitted.

This is the face of the launcher folder (ptune_dist.launcher, a namespace portion: no __init__.py), which
spreads a job over processes and nodes; `ptune sweep` and `ptune study` run grids of such runs on its grid
engine (grid_*.py). What it writes goes through files.py.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ptune_dist.checkpoint import folder_rule
from ptune_dist.config import to_yaml

from . import local, slurm
from .files import check_dir, make_dir, resolved, write_file


def launch(files, overrides, dry_run: bool = False) -> int:
    from ptune_dist.train.run_lock import check_free

    cfg = resolved(files, overrides)
    check_dir(cfg.output_dir, "output_dir")
    folder_rule.check_folder(cfg.output_dir, folder_rule.TRAIN)  # the ranks' `ptune train` would refuse it
    config_path = Path(cfg.output_dir) / "launch.yaml"
    # the command or the script, rendered (and so validated) before anything is written
    shown = (
        shlex.join(local.command(cfg, config_path))
        if cfg.launch.backend == "local"
        else slurm.train_script(cfg, config_path)
    )
    if cfg.launch.backend == "slurm":
        check_dir(slurm.log_dir(cfg), "launch.log_dir")
        slurm.check_record(cfg, "train")
    if dry_run:
        print(shown)
        return 0
    check_free(cfg.output_dir)  # a run in progress there reads launch.yaml again when it restarts: keep it
    make_dir(cfg.output_dir, "output_dir")
    write_file(config_path, to_yaml(cfg), "output_dir")
    if cfg.launch.backend == "local":
        return local.run(cfg, config_path)
    record = slurm.submit_train(cfg, config_path)
    print(f"submitted job {record['job_id']}; log: {record['log']}; follow with `ptune status {cfg.output_dir}`")
    return 0
