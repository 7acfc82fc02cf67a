"""Which checkpoint folder a path given on the command line stands for (eval, predict, export)."""

from __future__ import annotations

from pathlib import Path

from ptune_dist.errors import CheckpointError

from .atomic import verify
from .state import latest_complete


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder as it is; a run folder: its final/, else its newest complete checkpoint."""
    p = Path(path)
    if (p / "manifest.json").exists() or (p / "trainable.safetensors").exists():
        verify(p)
        return p
    if (p / "final").is_dir():
        verify(p / "final")
        return p / "final"
    latest = latest_complete(p / "checkpoints")
    if latest is None:
        raise CheckpointError(f"{p}: neither a checkpoint nor a run folder with final/ or a complete checkpoint")
    return latest
