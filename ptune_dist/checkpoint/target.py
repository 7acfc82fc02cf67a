"""Where a command may write: the rule that keeps `ptune export`, `ptune import` (and `predict --output`)
from destroying what they did not create.

    - A target inside an input, or an input inside the target (`--out` is the run, its final/, the
      checkpoint, or a folder above them) is always refused: a command never writes into its own input.
    - A target that does not exist, or is an empty folder, is written.
    - Anything else (a folder holding files, a plain file, an earlier export) is refused unless the user
      says `--force`; then it is replaced and the command says what it replaced (one line on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

from ptune_dist.errors import PtuneError


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def describe(path: Path) -> str:
    if path.is_symlink() or path.is_file():
        return f"the file {path}"
    entries = sorted(p.name for p in path.iterdir())
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    return f"the folder {path} ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown})"


def check_target(out, inputs, force: bool, option: str = "--out") -> str | None:
    """Raise unless `out` may be written; returns what writing it will replace (None: nothing)."""
    out = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        where = ("is" if out == source else "is inside" if _inside(out, source) else
                 "holds" if _inside(source, out) else None)
        if where:
            raise PtuneError(f"{option} {out} {where} the input {source}: a command never writes into its own "
                             "input; choose another folder (nothing was written)")
    if not (out.exists() or out.is_symlink()):
        return None
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return None
    what = describe(out)
    if not force:
        raise PtuneError(f"{option} {out}: {what} already exists; choose a new {option}, or pass --force to "
                         "replace it (nothing was written)")
    return what


def say_replaced(command: str, what: str | None) -> None:
    if what:
        print(f"ptune {command}: replaced {what}", file=sys.stderr)
