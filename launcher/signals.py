"""Signals under the local launcher (`ptune launch`, and `ptune study`'s and `ptune sweep`'s local cells): one
Ctrl-C reaches every rank once, the ranks stop at a checkpoint, and this process waits for them.

torchrun (or the deepspeed launcher) starts in a session of its own, so a Ctrl-C at the terminal, or a
signal to this process's group, reaches this process only: torchrun never sees it (it would forward it a
second time, give its ranks 30 s, kill them and end with a traceback). This process forwards it itself,
to each rank directly: a descendant of the launcher that catches SIGUSR1, which `ptune train` does from
its first line on (train/preempt.py catch_early). A signal that comes while the ranks still start is held
and delivered when each rank is ready, so no rank meets a Ctrl-C before its handlers exist.

    Ctrl-C             forwarded: the ranks stop at the end of the step, with a checkpoint (exit 130)
    Ctrl-C again       after DUPLICATE_S (2 s) forwarded again: the ranks stop at once, without a new
                       checkpoint (the newest stays whole); within 2 s it is the same keypress delivered
                       twice, and dropped (the ranks apply the same rule)
    a third Ctrl-C     the ranks and their launcher are killed (SIGKILL): for ranks stuck where Python
                       cannot run a handler
    TERM, HUP          forwarded as TERM: checkpoint, exit PREEMPTED (99); a closed terminal included

Either way this process waits for the launcher to end, then returns (`wait`). When this process is killed
outright (SIGKILL), the launcher gets a TERM from the kernel (PR_SET_PDEATHSIG) and stops its ranks at a
checkpoint: nothing keeps running in the other session unseen.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ptune_dist.train.preempt import DUPLICATE_S

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READY = signal.SIGUSR1  # a rank catches it once its stop handlers are up


def _children() -> dict[int, list[int]]:
    """Every process's children, from /proc/PID/stat (field 4 is the parent; the name before it may hold
    spaces and parentheses, so the fields are read after its last `)`)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(root: int) -> list[int]:
    children, found, todo = _children(), [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            found.append(pid)
            todo.append(pid)
    return found


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt in /proc/PID/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError):
        pass
    return False


class Forwarder:
    """While active (a `with` block in the main thread), INT/TERM/HUP are held here and forwarded to the
    ranks under `root` by `deliver` (see the module docstring)."""

    def __init__(self):
        self.pending: list[int] = []  # the signals to forward, in order
        self.sent: set[tuple[int, int]] = set()  # (index in pending, pid) already delivered
        self.presses, self.last_press, self.kill = 0, None, False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in FORWARDED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    @property
    def signum(self) -> int | None:
        """The signal that decides how the command ends: TERM over INT (a preemption must be requeued)."""
        return signal.SIGTERM if signal.SIGTERM in self.pending else signal.SIGINT if self.pending else None

    def _handle(self, signum, frame):
        if signum != signal.SIGINT:
            self.pending.append(signal.SIGTERM)  # HUP: the terminal closed; stop resumable
            return
        now = time.monotonic()
        if self.last_press is not None and now - self.last_press < DUPLICATE_S:
            return  # the same keypress delivered twice
        self.presses, self.last_press = self.presses + 1, now
        if self.presses >= 3:
            self.kill = True
            os.write(2, b"\nptune: third Ctrl-C: killing the ranks\n")
        else:
            self.pending.append(signal.SIGINT)

    def deliver(self, root: int) -> None:
        """Forward what is pending to every rank under `root` that is ready for it; on a third Ctrl-C, kill
        everything under `root`, and `root` itself."""
        if self.kill:  # the launcher first, so that it ends by this signal and cannot start anything more
            for pid in [root, *descendants(root)]:
                _send(pid, signal.SIGKILL)
            return
        if not self.pending:
            return
        for pid in descendants(root):
            if not catches(pid, READY):
                continue
            for i, sig in enumerate(self.pending):
                if (i, pid) not in self.sent:
                    self.sent.add((i, pid))
                    _send(pid, sig)


def _send(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _term_with_parent() -> None:
    """In the launcher's child, before it runs: a TERM when this process dies (Linux PR_SET_PDEATHSIG), so a
    `ptune` killed outright (SIGKILL, the OOM killer) leaves no launcher and ranks running in their own
    session; they stop as on a preemption, at a checkpoint."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def stopped(pid: int) -> bool:
    """Whether process `pid` is stopped (SIGSTOP, a debugger): state T or t in /proc/PID/stat."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def wait(cmd: list[str], env: dict, faults: Path | None = None) -> tuple[int, int | None]:
    """Run `cmd` (torchrun or the deepspeed launcher) in a session of its own, forward the signals this
    process gets to its ranks, and wait for it to end. Returns its exit status and the signal this
    process was asked to stop by (None: none). Once a rank has reported a peer fault (a `fault-R` file in
    `faults`, train/peers.py), a rank that is stopped is killed: it cannot act on torchrun's TERM, and
    torchrun would wait its 30 s grace for it."""
    with Forwarder() as forward:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_term_with_parent)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    forward.deliver(proc.pid)
                    if faults is not None and any(faults.glob("fault-*")):
                        for pid in descendants(proc.pid):
                            if stopped(pid):
                                _send(pid, signal.SIGKILL)
        except BaseException:  # this process itself fails: its launcher must not outlive it unseen
            forward.kill = True
            forward.deliver(proc.pid)
            proc.wait()
            raise
    if forward.kill:
        print(
            "ptune: the ranks were killed; the newest checkpoint is whole: run the same command to resume",
            file=sys.stderr,
        )
    return rc, forward.signum
