"""How a job is spread over processes and nodes (imported as ptune_dist.launcher).

`launch()` resolves the config once, writes it to output_dir/launch.yaml, and starts the ranks: on
this machine (local.py: torchrun or the deepspeed launcher) or as a Slurm job (slurm.py). A dry run
prints the command shell-quoted (shlex.join) or the sbatch script, and starts nothing.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

from ptune_dist.config import load_config, to_yaml


def resolved(files, overrides):
    """The run config with an absolute output_dir (ranks and Slurm jobs may start elsewhere)."""
    cfg = load_config(files, overrides)
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).resolve()))


def launch(files, overrides, dry_run: bool = False) -> int:
    from ptune_dist.train.run_lock import check_free

    from . import local, slurm

    cfg = resolved(files, overrides)
    config_path = Path(cfg.output_dir) / "launch.yaml"
    if dry_run:
        print(shlex.join(local.command(cfg, config_path)) if cfg.launch.backend == "local"
              else slurm.train_script(cfg, config_path))
        return 0
    check_free(cfg.output_dir)  # a run in progress there reads launch.yaml again when it restarts: keep it
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    config_path.write_text(to_yaml(cfg))
    if cfg.launch.backend == "local":
        return local.run(cfg, config_path)
    record = slurm.submit_train(cfg, config_path)
    print(f"submitted job {record['job_id']}; log: {record['log']}; follow with `ptune status {cfg.output_dir}`")
    return 0
