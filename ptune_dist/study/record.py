"""A study cell's attempt record (attempts.json) as a Slurm array task keeps it: the array script runs
`python -m ptune_dist.study.record CELL/launch.yaml EVENT` before training (start: one more start), when the
job is requeued at a checkpoint (requeued: not a failure) and after it (the exit status). The local queue
records its starts through the same `record` (queue.py). folder.state reads it: a start without results, not
requeued and not running, is a failed cell. Never fails the job: a record it cannot write is said on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ptune_dist.errors import PtuneError
from ptune_dist.launcher.files import write_file

from .folder import attempts


def record(folder: Path, event: str) -> dict:
    now = attempts(folder)
    if event == "start":
        now = {**now, "starts": now.get("starts", 0) + 1}
        now.pop("last_rc", None)
    else:
        now["last_rc"] = event if event == "requeued" else int(event)
    write_file(folder / "attempts.json", json.dumps(now))
    return now


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not (argv[1] in ("start", "requeued") or argv[1].lstrip("-").isdigit()):
        print("usage: python -m ptune_dist.study.record CELL/launch.yaml start|requeued|EXIT_STATUS", file=sys.stderr)
        return 2
    try:
        record(Path(argv[0]).parent, argv[1])
    except (PtuneError, OSError) as e:
        print(f"ptune study: attempt not recorded: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
