"""The folders and files the launcher writes (output_dir, launch.yaml, the Slurm log folder, sweep tables).

`check_dir`, `make_dir` and `write_file`: a path that is a file where a folder belongs (or below a file),
or a place that cannot be written, is one error naming the config key and the path, never a traceback.
`write_file` never writes through a symbolic link (nofollow.py): a file name that is a link is
refused, naming it.
`resolved`: the run config with an absolute output_dir (ranks and Slurm jobs may start elsewhere).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ptune_dist.checkpoint.target import existing_above
from ptune_dist.config import load_config
from ptune_dist.errors import PtuneError
from ptune_dist.nofollow import write_atomic


def resolved(files, overrides):
    """The run config with an absolute output_dir (ranks and Slurm jobs may start elsewhere)."""
    cfg = load_config(files, overrides)
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).resolve()))


def check_dir(path, key: str) -> Path:
    """Raise unless `path` is a folder or can be made one: not a file, not below a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PtuneError(f"{key}={str(path)!r} is a file, not a folder; choose another {key}")
    above = existing_above(path)
    if not above.is_dir():
        raise PtuneError(f"{key}={str(path)!r}: {above} is a file, not a folder; choose another {key}")
    return path


def make_dir(path, key: str) -> Path:
    """`path` as a folder (made with its parents when missing), or a PtuneError naming `key`."""
    path = check_dir(path, key)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise PtuneError(f"{key}={str(path)!r}: cannot make that folder ({e.strerror}); choose another {key}") from None
    return path


def write_file(path, text: str, key: str = "") -> Path:
    """Write `text` to `path` atomically (a temporary file beside it, then a rename), never through a link;
    an error names the path and the config key that chose it."""
    path = Path(path)
    remedy = f", or choose another {key}" if key else ""
    if path.is_dir() and not path.is_symlink():
        raise PtuneError(f"{path} is a folder, not a file; move it away{remedy}")
    try:
        write_atomic(path, text)
    except OSError as e:
        raise PtuneError(f"cannot write {path} ({e.strerror}){remedy.replace(', or', ';')}") from None
    return path
