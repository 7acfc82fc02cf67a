"""The step-N folders of a run's checkpoints/: listing them newest first, the newest complete one, and
pruning all but the newest few. Complete means its manifest holds (atomic.py); what is inside is read.py's
business.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .atomic import is_valid, verify

STEP_DIR = re.compile(r"step-([0-9]+)")  # used with fullmatch: \d and $ would let in other digits, a newline


def step_dirs(checkpoints: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders under `checkpoints`, newest first (complete or not)."""
    if not Path(checkpoints).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(checkpoints).iterdir() if (m := STEP_DIR.fullmatch(p.name))]
    return sorted(found, reverse=True)


def step_dir(checkpoints: Path, step: int) -> Path:
    return Path(checkpoints) / f"step-{step}"


def latest_complete(checkpoints: Path) -> Path | None:
    for _, path in step_dirs(checkpoints):
        if is_valid(path):
            return path
    return None


def resume_point(resume: str, checkpoints: Path) -> Path | None:
    """train.resume: auto = the newest complete checkpoint (if any), never = none, else that folder."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_complete(checkpoints)
    verify(Path(resume))
    return Path(resume)


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints that have a manifest (were completely written)."""
    complete = [p for _, p in step_dirs(checkpoints) if (p / "manifest.json").is_file()]
    for path in complete[keep:]:
        shutil.rmtree(path, ignore_errors=True)
