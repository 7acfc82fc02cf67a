"""Atomic checkpoint folders: write into a hidden temporary folder, fsync, rename into place (nofollow.publish,
the one rename of the source).

The last file written is manifest.json (every file's size and SHA-256). A folder without a valid
manifest is not a checkpoint: resume skips it and a user who names it gets a CheckpointError. A
crash at any moment leaves either the previous folder or the new complete one, never half of one.

A `final` that is a symbolic link is refused (nofollow.py): ptune replaces only what it made.

Every file and folder of it gets the mode the umask gives a plain new file (0o666 & ~umask, folders
0o777 & ~umask), like everything else a run writes: safetensors creates its files 0600, which
would leave the weights, alone, unreadable to the group that can read the rest of the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

from ptune_dist.errors import CheckpointError
from ptune_dist.nofollow import fsync_path, publish, refuse_link, umask

MANIFEST = "manifest.json"
LEFTOVER = re.compile(r"\.(.+)\.(?:old|tmp)-[0-9a-f]{8}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain_modes(folder: Path) -> None:
    """chmod `folder` and everything in it to what the umask gives new files and folders."""
    mask = umask()
    for p in [folder, *folder.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def recover(final: Path) -> None:
    """Finish what a crash interrupted: put back a replaced folder whose successor never arrived, and
    remove temporary folders left behind."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    olds = sorted(final.parent.glob(f".{final.name}.old-*"))
    if olds and not final.exists():
        publish(olds.pop(), final)
    for stale in [*olds, *final.parent.glob(f".{final.name}.tmp-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def recover_all(parent: Path) -> None:
    """`recover` every folder in `parent` that a crash left half-written or half-replaced."""
    parent = Path(parent)
    if parent.is_dir():
        for name in sorted({m.group(1) for p in parent.iterdir() if (m := LEFTOVER.fullmatch(p.name))}):
            recover(parent / name)


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yields a temporary folder; on success it becomes `final` (replacing an older one).

    Only one writer per folder (the main rank). Between the two renames `final` is briefly absent;
    `recover` (called by the next writer, and by the main rank before a run resumes) puts the old one
    back if a crash hits there. Readers never move anything: several ranks read at once.
    """
    final = refuse_link(Path(final))  # a link there was not made by ptune: refused, never replaced
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _plain_modes(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
        (tmp / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))
        for p in [*files, tmp / MANIFEST, tmp]:
            fsync_path(p)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            publish(final, old, sync=False)
        publish(tmp, final)  # and the folder fsynced
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def verify(folder: Path) -> None:
    """Raise CheckpointError unless every file the manifest lists is there, whole and unchanged."""
    folder = Path(folder)
    if not folder.is_dir():
        interrupted = (
            " (a save was interrupted: `ptune train` on this run puts the previous one back)"
            if any(folder.parent.glob(f".{folder.name}.old-*"))
            else ""
        )
        raise CheckpointError(f"checkpoint {folder}: not a folder{interrupted}")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())["files"]
        if not all(
            isinstance(m, dict) and isinstance(m.get("bytes"), int) and isinstance(m.get("sha256"), str)
            for m in manifest.values()
        ):
            raise ValueError("an entry lacks its bytes or sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"checkpoint {folder}: no readable {MANIFEST} ({type(e).__name__}); "
            "it is incomplete or not a ptune checkpoint"
        ) from None
    for name, meta in manifest.items():
        p = folder / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint {folder}: {name} is missing")
        if p.stat().st_size != meta["bytes"] or _sha256(p) != meta["sha256"]:
            raise CheckpointError(
                f"checkpoint {folder}: {name} is damaged (size or checksum differs from the manifest)"
            )


def is_valid(folder: Path) -> bool:
    try:
        verify(folder)
        return True
    except CheckpointError:
        return False
