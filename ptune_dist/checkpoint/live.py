"""Whether a running `ptune train` holds a folder: its .ptune-lock probed without writing anything.

The lock itself is train/run_lock.py's (an flock(2) on output_dir/.ptune-lock, taken by the main rank,
the holder's pid, host, start and command written in the file). Here it is only looked at, as read-only
commands and `--force` need: the file is opened O_RDONLY|O_NOFOLLOW (never created, never written, never
through a link) and asked for a shared lock without waiting; a run holding its exclusive lock refuses that.
The shared lock, when granted, is dropped at once.

`held_runs(path)`: the live runs that replacing `path` would reach: a run in `path` itself, in a folder
above it (`path` is inside a live run) or in a folder below it (`path` holds a live run).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import time
from pathlib import Path

NAME = ".ptune-lock"


def holder(fd: int) -> str:
    """Who holds the lock, from the record in the file (a PtuneError message's words)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']} since {since} ({info['command']})"
    except (ValueError, KeyError, TypeError, OSError, OverflowError):
        return "another process"


def is_held(folder) -> str | None:
    """Who holds `folder`'s run lock now (None: nobody; no file, a link, or not a regular file: nobody,
    since `ptune train` never locks through those)."""
    try:
        fd = os.open(Path(folder) / NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def held_runs(path) -> list[tuple[Path, str]]:
    """(run folder, holder) for every live run at `path`, above it, or inside it (links not followed)."""
    path = Path(os.path.abspath(path))
    found = [(p, h) for p in [path, *path.parents] if (h := is_held(p))]
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):  # os.walk does not follow links to folders
            if NAME in files and Path(root) != path and (h := is_held(root)):
                found.append((Path(root), h))
    return found
