"""Where a run continues from, decided once by the main rank and shared with every rank.

Only the main rank repairs folders a crash left half-replaced and reads the checkpoint list, so ranks
cannot race on the same renames or see different "newest" checkpoints while one is being written.
"""

from __future__ import annotations

from pathlib import Path

from ptune_dist.checkpoint import state as ckpt
from ptune_dist.checkpoint.atomic import recover_all
from ptune_dist.errors import CheckpointError

from . import dist


def agreed_resume_point(resume: str, out: Path, is_main: bool) -> Path | None:
    """train.resume resolved on the main rank (auto: the newest complete checkpoint); its answer, or its
    error, on every rank. A collective: every rank calls it."""
    answer = None
    if is_main:
        try:
            for folder in (out, out / "checkpoints"):
                recover_all(folder)
            answer = ("ok", ckpt.resume_point(resume, out / "checkpoints"))
        except CheckpointError as e:
            answer = ("error", str(e))
    kind, value = dist.broadcast_object(answer)
    if kind == "error":
        raise CheckpointError(value)
    return value
