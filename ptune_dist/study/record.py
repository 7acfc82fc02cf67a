"""The command that study array scripts written before the grid engine ran (`python -m ptune_dist.study.record
CELL/launch.yaml EVENT`): it records the attempt through launcher/grid_attempts.py, the one attempt record, so
an array submitted by an older ptune and still queued keeps its attempts.json."""

import sys

from ptune_dist.launcher.grid_attempts import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
