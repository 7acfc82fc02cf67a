"""How a job is spread over processes and nodes (imported as ptune_dist.launcher).

`launch()` (launch.py) resolves the config once, writes it to output_dir/launch.yaml, and starts the ranks:
on this machine (local.py: torchrun or the deepspeed launcher) or as a Slurm job (slurm.py); `ptune sweep`
runs a grid of them (sweep.py). What it writes goes through files.py.
"""

from .files import resolved
from .launch import launch

__all__ = ["launch", "resolved"]
