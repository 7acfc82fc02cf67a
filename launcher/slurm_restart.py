"""`python -m ptune_dist.launcher.slurm_restart step|requeue ...`: slurm/train.sbatch's call into
restarts.main (the budget, the record, the line). A module of its own because the launcher package imports
restarts.py, and running an imported module with `-m` makes runpy warn."""

import sys

from .restarts import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
