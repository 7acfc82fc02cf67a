"""Stopping on request: SIGUSR1 (Slurm's --signal before the time limit), SIGTERM (preemption) or
SIGINT (Ctrl-C).

A handler only raises a flag. At the end of every optimizer step the ranks agree (one all-reduce)
whether any of them got a signal, so they all stop at the same step, save the same checkpoint and
exit resumable:

    USR1, TERM   exit PREEMPTED (99); inside a Slurm job (which sets PTUNE_PREEMPT_MARKER) exit 0
                 instead, since srun --kill-on-bad-exit would kill the ranks still exiting, and the
                 main rank leaves the marker file; the batch script answers either with a requeue.
    INT          exit INTERRUPTED (130, the shell's status for Ctrl-C), no marker: a person stopped
                 the run, the scheduler must not start it again.

Ctrl-C pressed again. One keypress can reach a rank more than once: the terminal signals the whole
foreground process group, and a launcher in it (torchrun or deepspeed started by hand, srun, a wrapper
script) may forward the same Ctrl-C to a rank that already got it, milliseconds later. The rule: a
SIGINT that comes less than DUPLICATE_S (2 s) after the Ctrl-C that started the stop is the same
keypress and changes nothing; one that comes later is a second press, and the person wants out now: the
handler raises KeyboardInterrupt at once (nothing is saved after the last checkpoint; checkpoint writes
are atomic, so the newest one stays whole), and `ptune train` ends with one line and exit 130, never a
traceback (cli.main; `aborted()` tells it that an error which follows, such as a collective whose peer
left, is part of that stop). A press during a stop on USR1/TERM is the first Ctrl-C, not a second.
`ptune launch` and `ptune study` (launcher/signals.py) apply the same window before they forward a
Ctrl-C, and kill the ranks on a third press.

Under `ptune launch` (local backend) the launcher sets PTUNE_STOP_RECORD to a folder of its own: a rank
stopped by a signal writes its exit status to FOLDER/rank-R and exits 0 (`leave`), so torchrun sees
ranks that ended well rather than a failure to report, and the launcher exits with the status the ranks
wrote (`recorded`).

When ranks disagree, USR1/TERM wins over INT: a preempted job must be requeued.

A signal can come before training's handler is installed (Slurm preempts a job that is still
importing torch). `catch_early()`, which `ptune train` calls first, records it; StopRequests adopts
it and the run stops before its first step. So this module must not import torch at its top. A
process that catches SIGUSR1 has its handlers up: launcher/signals.py forwards to a rank only then.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

PREEMPTED = 99
RANK_FAULT = 97  # a peer rank died or stopped answering: resumable from the newest checkpoint (issue 22)
INTERRUPTED = 130  # 128 + SIGINT
SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
MARKER_ENV = "PTUNE_PREEMPT_MARKER"
STOP_RECORD_ENV = "PTUNE_STOP_RECORD"
DUPLICATE_S = 2.0  # a SIGINT this soon after the first Ctrl-C is the same keypress delivered twice

# what catch_early() recorded (a signal number or None), and the handlers it replaced
_early = {"signum": None, "previous": {}}
# the first Ctrl-C's time (time.monotonic) while a stop is under way, and whether a second press stopped at once
_ctrl_c = {"first": None, "aborted": False}


class Preempted(Exception):
    """Raised on every rank once the ranks agree to stop. `step`: the step of the checkpoint saved (or
    resumed from); 0 or None when no step ran, so there is nothing new to save."""

    def __init__(self, step: int | None, is_main: bool = True, signum: int = signal.SIGTERM):
        self.step, self.is_main, self.signum = step, is_main, signum
        interrupted = signum == signal.SIGINT
        what = "interrupted (Ctrl-C)" if interrupted else "stopped on a signal"
        if step:
            tail = (
                "checkpoint saved; run the same command to resume from it"
                if interrupted
                else "checkpoint saved, resume with the same command"
            )
            super().__init__(f"{what} after step {step}; {tail}")
        else:
            super().__init__(
                f"{what} before training started; nothing to save: run the same command to start "
                "(it resumes from the newest checkpoint, if any)"
            )

    def exit_code(self) -> int:
        if self.signum == signal.SIGINT:
            return INTERRUPTED
        marker = os.environ.get(MARKER_ENV)
        if not marker:
            return PREEMPTED
        if self.is_main:
            with open(marker, "w") as f:
                f.write(f"{self.step or 0}\n")
        return 0


def _stronger(old: int | None, new: int) -> int:
    """The signal that decides how the run ends: the first one, except that USR1/TERM (requeue me)
    overrides INT (a person's Ctrl-C can coincide with a preemption; the requeue must not be lost)."""
    if old is None or (old == signal.SIGINT and new != signal.SIGINT):
        return new
    return old


def is_main_rank() -> bool:
    # the session (which knows the rank) may not exist yet; the launchers' variables say it
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _on_signal(current: int | None, signum: int, when: str) -> int:
    """Shared by both handlers: returns the new deciding signal, or raises on a second Ctrl-C."""
    if signum == signal.SIGINT:
        first, now = _ctrl_c["first"], time.monotonic()
        if first is not None and now - first < DUPLICATE_S:
            return current  # the same keypress, delivered again (terminal and launcher): nothing new
        if first is not None:
            _ctrl_c["aborted"] = True
            raise KeyboardInterrupt  # a second press while already stopping: the person wants out now
        _ctrl_c["first"] = now
        if is_main_rank():
            # os.write, not print: a handler may run inside a print to the same stream (reentrant call)
            os.write(
                2,
                f"\nptune: interrupted; stopping {when} (Ctrl-C again, after {DUPLICATE_S:g} s, stops at "
                "once)\n".encode(),
            )
    return _stronger(current, signum)


def aborted() -> bool:
    """Whether a second Ctrl-C stopped this process at once (its KeyboardInterrupt is on the way up)."""
    return _ctrl_c["aborted"]


def leave(code: int) -> int:
    """The exit status of a rank stopped by a signal (`code`: INTERRUPTED, PREEMPTED, or 0 under Slurm's
    marker). Under `ptune launch` (PTUNE_STOP_RECORD set) the status goes to FOLDER/rank-R and the rank
    exits 0; when the record cannot be written the rank exits with `code` itself."""
    folder = os.environ.get(STOP_RECORD_ENV)
    if not code or not folder:
        return code
    rank = os.environ.get("RANK", "0")
    try:
        fd = os.open(Path(folder) / f"rank-{int(rank)}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{code}\n")
    except (OSError, ValueError):
        return code
    return 0


def recorded(folder: Path) -> int | None:
    """What the ranks wrote through `leave` into `folder`: PREEMPTED when any rank was preempted (the
    job must be requeued), else INTERRUPTED when any was interrupted, else None (no rank stopped)."""
    codes = set()
    for path in Path(folder).glob("rank-*"):
        try:
            codes.add(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return PREEMPTED if PREEMPTED in codes else INTERRUPTED if codes else None


def _record_early(signum, frame):
    _early["signum"] = _on_signal(_early["signum"], signum, "before training starts")


def catch_early() -> None:
    """From now on USR1/TERM/INT only record the signal, until StopRequests adopts it (or
    `release_early()` puts the previous handlers back). Call it first thing in `ptune train`."""
    if threading.current_thread() is not threading.main_thread():
        return
    _early["signum"] = None
    _ctrl_c.update(first=None, aborted=False)
    for sig in SIGNALS:
        previous = signal.signal(sig, _record_early)
        _early["previous"].setdefault(sig, previous)  # twice: keep the handlers from before the first call


def release_early() -> None:
    """Put back the handlers catch_early() replaced, when no StopRequests took them over (the command
    ended before training; an in-process caller, such as a test, must get its Ctrl-C back)."""
    previous, _early["previous"] = _early["previous"], {}
    for sig, handler in previous.items():
        signal.signal(sig, handler)
    _early["signum"] = None


class StopRequests:
    def __init__(self):
        self.signum = None  # the signal that decides how the run ends; None: keep going
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                found = signal.signal(sig, self._handle)
                # catch_early's handler is a stand-in: on exit restore what was there before it
                self._previous[sig] = _early["previous"].pop(sig, found)
        if _early["signum"] is not None:  # a signal came during the imports: stop before the first step
            self.signum = _stronger(self.signum, _early["signum"])
            _early["signum"] = None
        else:
            _ctrl_c.update(first=None, aborted=False)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            # once stopping, a repeated USR1/TERM (Slurm may send more) must not kill the exit in
            # progress; Ctrl-C gets its usual meaning back
            stopping = self.requested and sig != signal.SIGINT
            signal.signal(sig, signal.SIG_IGN if stopping else handler)
        return False

    def _handle(self, signum, frame):
        self.signum = _on_signal(self.signum, signum, "at the end of this step, with a checkpoint")

    def agreed(self) -> bool:
        """True on every rank when any rank was asked to stop (a collective: every rank calls it).
        A rank that got no signal itself takes the deciding one of the others."""
        from . import dist  # imports torch: not at the top (see catch_early)

        if not dist.active():
            return self.requested
        import torch

        got = torch.tensor([float(self.requested), float(self.requested and self.signum != signal.SIGINT)])
        got = dist.all_reduce_sum(got)
        if got[0] == 0:
            return False
        if got[1] > 0 and self.signum in (None, signal.SIGINT):
            self.signum = signal.SIGTERM  # another rank was preempted: this one ends the same way
        elif self.signum is None:
            self.signum = signal.SIGINT
        return True
