"""metrics.jsonl: append-only, one JSON object per line; `read_metrics` turns it into one history.

Writing (`open_metrics`): the file is never rewritten, so whatever a run wrote stays byte for byte.
A run that continues a file first ends a torn last line (a record cut by a kill mid-write) with a
newline, then writes a resume marker {"event": "resume", "step": N}: "the history goes on from step
N". N is the checkpoint's step; 0 when a run starts over in a folder that already has a log. The launcher
appends a restart record {"event": "restart", ...} between the failed attempt and the next one
(`append_event`: a torn last line ended first, like open_metrics).

Reading (`read_metrics`):
- a resume marker at step N drops the records before it with step > N (the interrupted part after
  the checkpoint, which the resumed run does again); a marker at step 0 drops everything before it.
  Records at step <= N stay, so each step appears once.
- a line that is not JSON is skipped when it is torn: the last line of the file without its newline,
  or a line the writer followed with a resume marker (it resumed after the cut). Any other bad line
  or a line followed by a restart record (the launcher's, after the rank that wrote it died). Any other
  bad line raises MetricsFileError naming the file and line: that is damage, not an interrupted write.
- restart records stay whatever the markers drop: they tell what happened to the run, not a step.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ptune_dist.errors import PtuneError
from ptune_dist.nofollow import open_append

NAME = "metrics.jsonl"


class MetricsFileError(PtuneError, ValueError):
    pass


def open_metrics(path: Path, start_step: int):
    """The file opened for appending, ready for the next record (call on the writing rank only); one that
    is a symbolic link is refused."""
    path = Path(path)
    f = open_append(path)  # never through a link (refused, naming it)
    size = _end_torn_line(f, path)
    if size or start_step:
        f.write(json.dumps({"time": round(time.time(), 3), "event": "resume", "step": start_step}) + "\n")
        f.flush()
    return f


def _end_torn_line(f, path: Path) -> int:
    """End a torn last line of `path` (open for appending as `f`) with a newline; returns the file's size."""
    size = os.fstat(f.fileno()).st_size
    if size:
        with open(path, "rb") as tail:
            tail.seek(size - 1)
            if tail.read(1) != b"\n":
                f.write("\n")  # a torn last line: the next record must stand on a line of its own
    return size


def append_event(path: Path, record: dict) -> None:
    """Append one record (e.g. the launcher's restart record) to `path`, never through a link, on a line of
    its own; call it only while no rank writes the file."""
    path = Path(path)
    with open_append(path) as f:
        _end_torn_line(f, path)
        f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


RESTART = "restart"


def _is_marker(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("event") in ("resume", RESTART)


def read_metrics(path) -> list[dict]:
    """The records of `path` as one history (see the module's rules)."""
    path = Path(path)
    text = path.read_text(errors="replace")  # a torn line may end inside a multi-byte character
    lines = text.split("\n")  # the last item is what follows the last newline ("" when the file ends whole)
    history: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            torn = i == len(lines) - 1 or (i + 1 < len(lines) and _is_marker(lines[i + 1]))
            if torn:
                continue
            raise MetricsFileError(
                f"{path}: line {i + 1} is not a JSON record ({e}); "
                "the file is damaged, not just cut by an interrupted write"
            ) from None
        if record.get("event") == "resume":
            n = record.get("step", 0)
            history = [r for r in history if r.get("event") == RESTART or (n and r.get("step", 0) <= n)]
        history.append(record)
    return history
