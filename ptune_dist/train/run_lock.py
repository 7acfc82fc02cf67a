"""One `ptune train` per output_dir: an advisory lock on output_dir/.ptune-lock, held by the main rank.

Two runs on one folder would delete each other's half-written checkpoints (a save's temporary folder
looks, to the other run, like a crash's leftover). The lock is an flock(2) on the file: the kernel
drops it when the holder exits or is killed, so a lock left by a killed run is stale by construction
and the next run takes it; the file only says who holds it now (pid, host, start time, command) for
the message the second run prints. Taking it also proves the folder is writable, before any work.
`ptune launch` checks it before starting ranks (`check_free`). flock(2) holds across machines where
the filesystem honours it (local disks, NFSv4; some parallel filesystems need a `flock` mount option).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ptune_dist.errors import PtuneError

NAME = ".ptune-lock"


def _open(out: Path) -> int:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return os.open(out / NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except FileExistsError:
        raise PtuneError(f"output_dir={str(out)!r} is a file, not a folder") from None
    except OSError as e:
        raise PtuneError(f"output_dir={str(out)!r}: cannot write there ({e.strerror})") from None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']} since {since} ({info['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


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
            holder = _holder(fd)
            os.close(fd)
            raise PtuneError(f"output_dir={str(self.out)!r} is in use by another ptune train: {holder}. Two runs "
                             "in one folder would destroy each other's checkpoints; wait for it to end, or "
                             "choose another output_dir") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)[:300]}
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
    """Raise the same error RunLock would, without holding anything (no folder is created)."""
    if (Path(out) / NAME).is_file():
        with RunLock(out):
            pass
