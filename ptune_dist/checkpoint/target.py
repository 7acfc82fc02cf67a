"""Where a command may write: the rule that keeps `ptune export`, `ptune import` (and `predict --output`)
from destroying what they did not create.

    - A target inside an input, or an input inside the target (`--out` is the run, its final/, the
      checkpoint, or a folder above them) is always refused: a command never writes into its own input.
    - A target that does not exist, or is an empty folder, is written.
    - Anything else (a folder holding files, a plain file, an earlier export) is refused unless the user
      says `--force`; then it is replaced and the command says what it replaced (one line on stderr).

`predict --output` is a file, checked the same way before the model loads (`check_output`) and written
atomically (`write_atomic`: a temporary file in the same folder, then os.replace).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ptune_dist.errors import DataError, PtuneError

from .atomic import umask


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


def check_output(output: str, input_file, force: bool = False) -> str:
    """Raise unless predict may write `output`. Returns how: "stream" (stdout, /dev/null, a pipe: written
    as they are), "new" (a file to create, or an empty one) or "replace" (a non-empty file, with force)."""
    if output == "-":
        return "stream"
    out = Path(output)
    if out.is_dir():
        raise DataError(f"--output {out} is a folder; give a file name (nothing was written)")
    if out.exists() and Path(input_file).exists() and os.path.samefile(out, input_file):
        raise DataError(f"--output {out} is the --input file; a command never writes into its own input "
                        "(nothing was written)")
    if out.exists() and not out.is_file():  # a device or a pipe: replacing it would be wrong
        return "stream"
    folder = out.absolute().parent
    if not folder.is_dir():
        raise DataError(f"--output {out}: {folder} is not an existing folder (nothing was written)")
    replaces = out.exists() and out.stat().st_size > 0
    if replaces and not force:
        raise DataError(f"--output {out} already exists ({out.stat().st_size} bytes); choose a new --output, or "
                        "pass --force to replace it (nothing was written)")
    try:  # can we create a file there? permissions, a read-only disk: better now than after the predictions
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"--output {out}: cannot write in {folder} ({e.strerror}) (nothing was written)") from None
    return "replace" if replaces else "new"


def write_atomic(out: Path, text: str) -> None:
    """`text` into `out` through a temporary file in the same folder and os.replace: all or nothing."""
    mode = out.stat().st_mode & 0o777 if out.exists() else 0o666 & ~umask()
    fd, tmp = tempfile.mkstemp(dir=out.absolute().parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600; the file should look like any other the user writes
        os.replace(tmp, out)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise DataError(f"--output {out}: cannot write ({e.strerror}); {out} was left as it was") from None
