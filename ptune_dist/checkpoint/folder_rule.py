"""The folder rule: every command that writes a folder (`ptune train`, `launch`, `sweep`, `study`) checks it
here, before it writes anything there.

A folder that holds files this command did not create is refused, naming them, unless it is this
command's own earlier run (then the command goes on with it: a resume, a rerun, a retried sweep or study,
each checking its own records further). What "own earlier run" means, and what ptune puts in a folder
before that run's record exists, is each command's `Kind`:

    ptune train / launch   own run: final/manifest.json, checkpoints/, or metrics.jsonl (its first file)
                           (what `ptune train` or `ptune import --out` wrote); made before it: .ptune-lock,
                           launch.yaml (ptune launch, a sweep's or a study's cell), slurm/, attempts.json
    ptune sweep            own run: sweep.json; made before it: slurm/
    ptune study            own run: study.json; made before it: slurm/

Hidden leftovers of ptune's own atomic writes (.NAME.tmp, .NAME.old-XXXXXXXX, .NAME.XXXXXXXX.tmp) count as
ptune's. Anything else (a user's config.yaml, results.csv, notes, a .git folder) makes the folder someone
else's: the command would write its config.yaml, results, report/ over files of the same names, or mix its
files with theirs. A folder that does not exist, or is empty, is always written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ptune_dist.errors import ConfigError

HIDDEN_LEFTOVER = re.compile(r"\..+\.(?:tmp|probe|old-[0-9a-f]{8}|tmp-[0-9a-f]{8})")


@dataclass(frozen=True)
class Kind:
    command: str  # "ptune train", for the message
    own: Callable[[Path], bool]  # the folder is this command's own earlier run
    made: tuple[str, ...]  # what ptune puts there before that run's record exists
    writes: str  # what the command writes there, for the message


def _file(p: Path) -> bool:
    return p.is_file() and not p.is_symlink()


def _train_run(folder: Path) -> bool:
    return (
        _file(folder / "final" / "manifest.json")
        or (folder / "checkpoints").is_dir()
        or _file(folder / "metrics.jsonl")
    )  # the train loop's first file, opened before its config.yaml


TRAIN = Kind(
    "ptune train",
    _train_run,
    (".ptune-lock", "launch.yaml", "slurm", "attempts.json"),
    "config.yaml, metrics.jsonl, checkpoints/, final/, results.json",
)
SWEEP = Kind(
    "ptune sweep", lambda f: _file(f / "sweep.json"), ("slurm",), "sweep.json, cells/, results.csv, results.md"
)
STUDY = Kind(
    "ptune study",
    lambda f: _file(f / "study.json"),
    ("slurm",),
    "config.yaml, study.json, cells/, results.csv, report/, ensembles/",
)


def foreign(folder, kind: Kind) -> list[str]:
    """The entries of `folder` that make it someone else's ([] : the command may write there)."""
    folder = Path(folder)
    if not folder.is_dir() or kind.own(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name not in kind.made and not HIDDEN_LEFTOVER.fullmatch(name))


def check_folder(folder, kind: Kind, key: str = "output_dir") -> None:
    """Raise unless `kind`'s command may write `folder` (see the module's rule); nothing is written."""
    names = foreign(folder, kind)
    if names:
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        raise ConfigError(
            f"{key}={str(folder)!r} holds {shown}: files {kind.command} did not create, and no "
            f"earlier run of it; it writes {kind.writes} there, over files of the same names: choose a new "
            f"or empty {key}, or move those files away (nothing was written)"
        )
