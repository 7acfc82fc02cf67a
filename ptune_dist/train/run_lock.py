"""One `ptune train` per output_dir: an advisory lock on output_dir/.ptune-lock, held by the main rank.

Two runs on one folder would delete each other's half-written checkpoints (a save's temporary folder
looks, to the other run, like a crash's leftover). The lock is an flock(2) on the file: the kernel
drops it when the holder exits or is killed, so a lock left by a killed run is stale by construction
and the next run takes it; the file only says who holds it now (pid, host, start time, command) for
the message the second run prints. Taking it also proves the folder is writable, before any work.
flock(2) holds across machines where the filesystem honours it (local disks, NFSv4; some parallel
filesystems need a `flock` mount option).

The file is opened with O_NOFOLLOW: a .ptune-lock that is a symbolic link (or not a regular file) is
refused by name, never written through. `check_free` (`ptune launch` before starting ranks, `ptune study
status` for each cell) only looks (checkpoint/live.py): it creates and writes nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import sys
import time
from pathlib import Path

from ptune_dist.checkpoint.live import NAME, holder, is_held
from ptune_dist.errors import PtuneError
from ptune_dist.nofollow import open_fd


def _open(out: Path) -> int:
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = open_fd(out / NAME, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK)
    except FileExistsError:
        raise PtuneError(f"output_dir={str(out)!r} is a file, not a folder") from None
    except OSError as e:
        raise PtuneError(f"output_dir={str(out)!r}: cannot write there ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PtuneError(
            f"{out / NAME} is not a regular file; ptune keeps its run lock there: remove it, or "
            "choose another output_dir (nothing was written)"
        )
    return fd


def _in_use(out: Path, who: str) -> PtuneError:
    return PtuneError(
        f"output_dir={str(out)!r} is in use by another ptune train: {who}. Two runs in one folder "
        "would destroy each other's checkpoints; wait for it to end, or choose another output_dir"
    )


class RunLock:
    """`with RunLock(out, held=is_main):` holds the lock for the block (ranks other than the main one
    take nothing)."""

    def __init__(self, out, held: bool = True):
        self.out, self.held, self.fd = Path(out), held, None

    def __enter__(self):
        if not self.held:
            return self
        fd = _open(self.out)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = holder(fd)
            os.close(fd)
            raise _in_use(self.out, who) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race a waiting run)
            self.fd = None
        return False


def check_free(out) -> None:
    """Raise the same error RunLock would, without holding or writing anything (no file or folder is made,
    no link followed)."""
    who = is_held(out)
    if who:
        raise _in_use(Path(out), who)
