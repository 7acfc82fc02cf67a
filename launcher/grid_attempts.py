"""A grid cell's attempt record, attempts.json: {"starts": n, "last_rc": exit status or "requeued"}.

Kept the same way by both grids (`ptune sweep`, `ptune study`) on both backends: the local queue
(grid_queue.py) records each start and how it ended through `record`; a Slurm array task runs
`python -m ptune_dist.launcher.grid_attempts CELL/launch.yaml EVENT` before training (start), when the job is
requeued at a checkpoint (requeued: not a failure) and after it (the exit status). The command never fails the
job: a record it cannot write is said on stderr. grid_cells.state reads it: a start without results, not
requeued and not running, is a failed cell.

A damaged attempts.json is named on stderr once and read as no start (the next start writes it again).
(Study array scripts written before this module existed run `python -m ptune_dist.study.record`, which is this
`main` under its old name, so their attempts are still recorded.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ptune_dist.errors import PtuneError
from ptune_dist.read_back import count, read_record, value

from .files import write_file

NAME = "attempts.json"
_said: set[str] = set()  # damaged records already named on stderr (a cell's state is asked many times a command)


def say_once(line: str) -> None:
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr, flush=True)


def attempts(folder: Path) -> dict:
    """attempts.json as far as it holds its keys; {} when there is none or it is damaged (named on stderr)."""
    path = Path(folder) / NAME
    remedy = "read as no start; the cell's next start writes it again"
    try:
        record = read_record(path, "a cell's attempt record", remedy, missing_ok=True) or {}
        checks = {"starts": count, "last_rc": _exit_status}
        return {k: value(record, k, check, path, remedy) for k, check in checks.items() if k in record}
    except PtuneError as e:
        say_once(f"ptune: {e}")
        return {}


def _exit_status(v):
    if v == "requeued" or (isinstance(v, int) and not isinstance(v, bool) and -255 <= v <= 255):
        return v
    raise ValueError("an exit status (a whole number in [-255, 255]) or 'requeued'")


def record(folder: Path, event: str) -> dict:
    """One more start ("start"), a stop at a checkpoint ("requeued") or an exit status ("3"), written atomically."""
    now = attempts(folder)
    if event == "start":
        now = {**now, "starts": now.get("starts", 0) + 1}
        now.pop("last_rc", None)
    else:
        now["last_rc"] = event if event == "requeued" else int(event)
    write_file(Path(folder) / NAME, json.dumps(now))
    return now


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not (argv[1] in ("start", "requeued") or argv[1].lstrip("-").isdigit()):
        print(
            "usage: python -m ptune_dist.launcher.grid_attempts CELL/launch.yaml start|requeued|EXIT_STATUS",
            file=sys.stderr,
        )
        return 2
    try:
        record(Path(argv[0]).parent, argv[1])
    except (PtuneError, OSError) as e:
        print(f"ptune: attempt not recorded: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
