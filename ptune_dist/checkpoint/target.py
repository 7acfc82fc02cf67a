"""Where a command may write: the rule that keeps `ptune export`, `ptune import` (and `predict --output`)
from destroying what they did not create.

    - A target inside an input, or an input inside the target (`--out` is the run, its final/, the
      checkpoint, or a folder above them) is always refused: a command never writes into its own input.
    - A target that does not exist, or is an empty folder, is written.
    - Anything else (a folder holding files, a plain file, an earlier export) is refused unless the user
      says `--force`; then it is replaced and the command says what it replaced (one line on stderr).

A target that is a symbolic link is refused (replacing it would replace the link, not what it points
to), so is one that holds the folder the command runs in, and one below a plain file. `--force` never
removes a run a `ptune train` is writing now, or anything inside it: a target that is such a run, lies
inside one, or holds one (its .ptune-lock held; probed without writing, live.py) is refused, saying so.

`predict --output` is a file, checked the same way before the model loads (`check_output`) and written
atomically (`write_atomic`: a temporary file in the same folder, then os.replace); a device or a pipe
(/dev/null, /dev/stdout) is written as it is.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from ptune_dist import nofollow
from ptune_dist.errors import DataError, PtuneError

from .live import held_runs


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def describe(path: Path) -> str:
    if path.is_symlink() or path.is_file():
        return f"the file {path}"
    entries = sorted(p.name for p in path.iterdir())
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    return f"the folder {path} ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {shown})"


def run_of(checkpoint) -> Path:
    """The run folder a checkpoint belongs to (RUN for RUN/final and RUN/checkpoints/step-N)."""
    p = Path(checkpoint).resolve()
    if p.name == "final" or p.parent.name == "checkpoints":
        return p.parent if p.name == "final" else p.parent.parent
    return p


def _not_into_inputs(out: Path, inputs, option: str) -> None:
    """Refuse a target that is, is inside, or holds an input, or holds the current folder (a rename
    of it away would fail half-way). Compared with links resolved."""
    real = out.resolve()
    named = [(Path(given).resolve(), f"the input {Path(given).resolve()}") for given in inputs]
    for source, what in [*named, (Path.cwd().resolve(), "the current folder")]:
        where = (
            "is"
            if real == source
            else "is inside"
            if _inside(real, source)
            else "holds"
            if _inside(source, real)
            else None
        )
        if where == "is inside" and what == "the current folder":
            continue  # a new folder below the one the command runs in: the usual case
        if where:
            raise PtuneError(
                f"{option} {out} {where} {what}: a command never writes into its own input or "
                "over the folder it runs in; choose another path (nothing was written)"
            )


def existing_above(path: Path) -> Path:
    """The nearest path above `path` that exists (a folder, or a file a path cannot be made under)."""
    above = Path(path).parent
    while not above.exists() and above != above.parent:
        above = above.parent
    return above


def _writable_place(out: Path, option: str) -> None:
    """The nearest existing folder above `out` must be a folder (not a file)."""
    above = existing_above(out)
    if not above.is_dir():
        raise PtuneError(f"{option} {out}: {above} is a file, not a folder (nothing was written)")


def refuse_live(out: Path, option: str) -> None:
    """Refuse to replace `out` when a running `ptune train` holds it, a folder above it, or one inside it."""
    live = held_runs(out)
    if live:
        run, who = live[0]
        where = "is a run" if run == out else f"is inside {run}, a run" if _inside(out, run) else f"holds {run}, a run"
        raise PtuneError(
            f"{option} {out} {where} that a ptune train is writing now ({who}); --force never removes "
            f"a running run or anything inside it: wait for it to end, or choose another {option} "
            "(nothing was written)"
        )


def check_target(out, inputs, force: bool, option: str = "--out") -> str | None:
    """Raise unless `out` may be written; returns what writing it will replace (None: nothing)."""
    out = Path(os.path.abspath(out))
    if out.is_symlink():  # replacing would replace the link, not what it points to: never what was meant
        raise PtuneError(
            f"{option} {out} is a symbolic link (to {os.readlink(out)}); give the real path (nothing was written)"
        )
    _not_into_inputs(out, list(inputs), option)
    _writable_place(out, option)
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        return None
    refuse_live(out, option)
    what = describe(out)
    if not force:
        raise PtuneError(
            f"{option} {out}: {what} already exists; choose a new {option}, or pass --force to "
            "replace it (nothing was written)"
        )
    return what


def cannot_write(out, e: OSError, option: str = "--out") -> PtuneError:
    """The error for a write the operating system refused (a read-only disk, /proc, permissions)."""
    return PtuneError(f"{option} {out}: cannot write there ({e.strerror or e}); what was there is unchanged")


def say_replaced(command: str, what: str | None) -> None:
    if what:
        print(f"ptune {command}: replaced {what}", file=sys.stderr)


def check_output(output: str, input_file, force: bool = False, inputs=()) -> str:
    """Raise unless predict may write `output` (`inputs`: the run or checkpoint it reads). Returns how:
    "stream" (stdout, /dev/null, a pipe: written as they are), "new" (a file to create, or an empty one)
    or "replace" (a non-empty file, with force)."""
    if output == "-":
        return "stream"
    out = Path(os.path.abspath(output))
    if out.exists() and not out.is_file() and not out.is_dir():  # a device or a pipe: written, never replaced
        return "stream"
    if out.is_symlink():
        raise DataError(
            f"--output {out} is a symbolic link (to {os.readlink(out)}); give the real path (nothing was written)"
        )
    if out.is_dir():
        raise DataError(f"--output {out} is a folder; give a file name (nothing was written)")
    if out.exists() and Path(input_file).exists() and os.path.samefile(out, input_file):
        raise DataError(
            f"--output {out} is the --input file; a command never writes into its own input (nothing was written)"
        )
    try:
        _not_into_inputs(out, list(inputs), "--output")
    except PtuneError as e:
        raise DataError(str(e)) from None
    folder = out.parent
    if not folder.is_dir():
        raise DataError(f"--output {out}: {folder} is not an existing folder (nothing was written)")
    replaces = out.exists() and out.stat().st_size > 0
    if out.exists():
        try:
            refuse_live(out, "--output")
        except PtuneError as e:
            raise DataError(str(e)) from None
    if replaces and not force:
        raise DataError(
            f"--output {out} already exists ({out.stat().st_size} bytes); choose a new --output, or "
            "pass --force to replace it (nothing was written)"
        )
    try:  # can we create a file there? permissions, a read-only disk: better now than after the predictions
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"--output {out}: cannot write in {folder} ({e.strerror}) (nothing was written)") from None
    return "replace" if replaces else "new"


def write_atomic(out: Path, text: str) -> None:
    """`text` into `out`, all or nothing (nofollow.write_atomic); an OSError is the DataError naming --output."""
    try:
        nofollow.write_atomic(out, text)
    except OSError as e:
        raise DataError(f"--output {out}: cannot write ({e.strerror}); {out} was left as it was") from None
