"""Stopping on request: SIGUSR1 (Slurm's --signal before the time limit) or SIGTERM (preemption).

A handler only raises a flag. At the end of every optimizer step the ranks agree (one all-reduce)
whether any of them got a signal, so they all stop at the same step, save the same checkpoint and
exit with PREEMPTED. Inside a Slurm job (which sets PTUNE_PREEMPT_MARKER) the ranks exit 0 instead,
since srun --kill-on-bad-exit would kill the ranks still exiting, and the main rank leaves the marker
file; the batch script answers either with a requeue.
"""

from __future__ import annotations

import os
import signal
import threading

import torch

from . import dist

PREEMPTED = 99
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


MARKER_ENV = "PTUNE_PREEMPT_MARKER"


class Preempted(Exception):
    def __init__(self, step: int, is_main: bool = True):
        super().__init__(f"stopped on a signal after step {step}; checkpoint saved, resume with the same command")
        self.step, self.is_main = step, is_main

    def exit_code(self) -> int:
        marker = os.environ.get(MARKER_ENV)
        if not marker:
            return PREEMPTED
        if self.is_main:
            with open(marker, "w") as f:
                f.write(f"{self.step}\n")
        return 0


class StopRequests:
    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            # once stopping, a repeated signal (Slurm may send more) must not kill the exit in progress
            signal.signal(sig, signal.SIG_IGN if self.requested else handler)
        return False

    def _handle(self, signum, frame):
        self.requested = True

    def agreed(self) -> bool:
        """True on every rank when any rank was asked to stop (a collective: every rank calls it)."""
        if not dist.active():
            return self.requested
        flag = torch.tensor([1.0 if self.requested else 0.0])
        return bool(dist.all_reduce_sum(flag) > 0)
