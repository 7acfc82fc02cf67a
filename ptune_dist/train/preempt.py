"""Stopping on request: SIGUSR1 (Slurm's --signal before the time limit), SIGTERM (preemption) or
SIGINT (Ctrl-C).

A handler only raises a flag. At the end of every optimizer step the ranks agree (one all-reduce)
whether any of them got a signal, so they all stop at the same step, save the same checkpoint and
exit resumable:

    USR1, TERM   exit PREEMPTED (99); inside a Slurm job (which sets PTUNE_PREEMPT_MARKER) exit 0
                 instead, since srun --kill-on-bad-exit would kill the ranks still exiting, and the
                 main rank leaves the marker file; the batch script answers either with a requeue.
    INT          exit INTERRUPTED (130, the shell's status for Ctrl-C), no marker: a person stopped
                 the run, the scheduler must not start it again. A second Ctrl-C while it stops
                 raises KeyboardInterrupt at once (checkpoint writes are atomic, so that is safe).

When ranks disagree, USR1/TERM wins over INT: a preempted job must be requeued.

A signal can come before training's handler is installed (Slurm preempts a job that is still
importing torch). `catch_early()`, which `ptune train` calls first, records it; StopRequests adopts
it and the run stops before its first step. So this module must not import torch at its top.
"""

from __future__ import annotations

import os
import signal
import threading

PREEMPTED = 99
INTERRUPTED = 130  # 128 + SIGINT
SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
MARKER_ENV = "PTUNE_PREEMPT_MARKER"

# what catch_early() recorded (a signal number or None), and the handlers it replaced
_early = {"signum": None, "previous": {}}


class Preempted(Exception):
    """Raised on every rank once the ranks agree to stop. `step`: the step of the checkpoint saved (or
    resumed from); 0 or None when no step ran, so there is nothing new to save."""

    def __init__(self, step: int | None, is_main: bool = True, signum: int = signal.SIGTERM):
        self.step, self.is_main, self.signum = step, is_main, signum
        interrupted = signum == signal.SIGINT
        what = "interrupted (Ctrl-C)" if interrupted else "stopped on a signal"
        if step:
            tail = ("checkpoint saved; run the same command to resume from it" if interrupted
                    else "checkpoint saved, resume with the same command")
            super().__init__(f"{what} after step {step}; {tail}")
        else:
            super().__init__(f"{what} before training started; nothing to save: run the same command to start "
                             "(it resumes from the newest checkpoint, if any)")

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


def _is_main_rank() -> bool:
    # the session (which knows the rank) may not exist yet; the launchers' variables say it
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def _on_signal(current: int | None, signum: int, when: str) -> int:
    """Shared by both handlers: returns the new deciding signal, or raises on a repeated Ctrl-C."""
    if signum == signal.SIGINT and current is not None:
        raise KeyboardInterrupt  # Ctrl-C while already stopping: the person wants out now
    if signum == signal.SIGINT and _is_main_rank():
        # os.write, not print: a handler may run inside a print to the same stream (reentrant call)
        os.write(2, f"\nptune: interrupted; stopping {when} (Ctrl-C again stops at once)\n".encode())
    return _stronger(current, signum)


def _record_early(signum, frame):
    _early["signum"] = _on_signal(_early["signum"], signum, "before training starts")


def catch_early() -> None:
    """From now on USR1/TERM/INT only record the signal, until StopRequests adopts it (or
    `release_early()` puts the previous handlers back). Call it first thing in `ptune train`."""
    if threading.current_thread() is not threading.main_thread():
        return
    _early["signum"] = None
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
