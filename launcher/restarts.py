"""Recovery without a person: which failures of a run's ranks restart the run, within launch.max_restarts,
and the record each restart leaves.

A rank fault is retried: a rank killed by a signal (the OOM killer, a kill, a crash in native code), or
ranks that ended with train.preempt.RANK_FAULT (97: a peer died or stopped answering within
distributed.timeout_s). A restart starts every rank again from the newest complete checkpoint
(train.resume=auto; checkpoint writes are atomic, so a rank killed during a save leaves the previous
checkpoint whole). Never retried: a config or data error (a PtuneError: exit 2, with its own line), an
ordinary error (exit 1, its traceback), a non-finite stop (a PtuneError), Ctrl-C (130) and a preemption
(99: on Slurm the batch script requeues it); those end the launch with their status.

Each restart is one line on stderr and one record in the run's metrics.jsonl (train/metrics_file.py
append_event: never through a link, a torn last line ended first):

    {"event": "restart", "attempt": k, "of": max_restarts, "rank": r, "host": h, "why": ..., "status": s}

`rank` is None when the ranks that reported the fault cannot tell which peer it was (they name it on
stderr). When the budget is spent the launch ends with one line and the last failure's status: 128 + N
for a rank killed by signal N, else the rank's exit status. The budget counts restarts of one launch;
a Slurm job counts its requeues after a lost node and its in-allocation restarts together (`main`, run
by slurm/train.sbatch, keeps the count in a file of the job's log folder).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ptune_dist.nofollow import write_atomic
from ptune_dist.train.metrics_file import NAME as METRICS
from ptune_dist.train.metrics_file import RESTART, append_event
from ptune_dist.train.preempt import RANK_FAULT

FAILURES_ENV = "PTUNE_FAILURES"  # where launcher/torchrun.py writes the ranks torchrun saw fail (JSON)
CONFIG_ERROR = 2  # cli.main's status for a PtuneError: a config, data or checkpoint error, a non-finite stop


@dataclass
class Failure:
    """How an attempt failed: `status` the launch ends with when it does not restart; `retry`: a rank fault."""

    status: int
    retry: bool
    why: str
    rank: int | None = None
    host: str = ""

    def line(self) -> str:
        who = f"rank {self.rank}" if self.rank is not None else "a rank"
        return f"{who} on {self.host or '?'}: {self.why}"


def signal_of(status: int) -> int | None:
    """The signal an exit status says a process died of: -N (Python's returncode), 128+N (a shell's, srun's)
    or 256-N (sys.exit(-N), the deepspeed launcher's); None for an ordinary exit."""
    if status < 0:
        return -status
    if 128 < status <= 128 + 64 and status != 128 + signal.SIGINT:
        return status - 128
    if 256 - 64 <= status < 256:
        return 256 - status
    return None


def signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def classify_status(status: int, rank: int | None = None, host: str = "") -> Failure:
    """One failed rank's (or a launcher's) exit status as a Failure."""
    host = host or socket.gethostname()
    sig = signal_of(status)
    if sig is not None:
        return Failure(128 + sig, True, f"killed by signal {sig} ({signal_name(sig)})", rank, host)
    if status == RANK_FAULT:
        return Failure(
            RANK_FAULT,
            True,
            f"ended with the rank-fault status {RANK_FAULT}: a peer rank died or stopped "
            "answering (the line above names it)",
            rank,
            host,
        )
    if status == CONFIG_ERROR:
        return Failure(
            status, False, "ended with a config or data error (exit 2, its line above says which)", rank, host
        )
    return Failure(status, False, f"ended with exit status {status} (an error, not a rank fault)", rank, host)


def classify(rc: int, failures: list[dict] | None, world: int | None = None) -> Failure:
    """The failure of one attempt: `rc` the launcher's (torchrun's) exit status, `failures` what
    launcher/torchrun.py wrote (the ranks torchrun saw fail first: rank, exitcode, time, host), `world` the
    number of ranks when they all run here. Only the failures seen before torchrun stopped the others
    (`first`) can be the cause; among them a rank killed by a signal, else the ranks that reported a rank
    fault, else the first failure, with torchrun's own SIGTERM last."""
    if not failures:
        return classify_status(rc)
    failures = sorted([f for f in failures if f.get("first", True)] or failures, key=lambda f: f.get("time", 0))
    failures.sort(key=lambda f: f["exitcode"] == -signal.SIGTERM)  # stable: by time within each kind
    killed = [f for f in failures if signal_of(f["exitcode"]) is not None]
    if killed and (killed[0] is failures[0] or killed[0]["exitcode"] != -signal.SIGTERM):
        return classify_status(killed[0]["exitcode"], killed[0]["rank"], killed[0].get("host", ""))
    faults = [f for f in failures if f["exitcode"] == RANK_FAULT]
    if faults:
        reporters = sorted({f["rank"] for f in faults})
        others = sorted(set(range(world)) - set(reporters)) if world else []
        suspect = others[0] if len(others) == 1 else None  # all but one reported it: that one stopped answering
        failure = classify_status(RANK_FAULT, suspect, faults[0].get("host", ""))
        failure.why = (
            (
                f"stopped answering or died: rank(s) {', '.join(map(str, reporters))} ended with the "
                f"rank-fault status {RANK_FAULT}"
            )
            if suspect is not None
            else failure.why
        )
        return failure
    first = failures[0]
    return classify_status(first["exitcode"], first["rank"], first.get("host", ""))


NAMED = re.compile(r"rank (\d+) \(host ([^,)]+)")  # how train/peers.py `line` names a silent rank


def with_faults(failure: Failure, faults: dict[int, str]) -> Failure:
    """`failure` told with what the surviving ranks said about it (`faults`: rank -> its line, from
    train/peers.py). When the failure is only their status (97), the rank they named and its host are the
    failure's and their line its reason; when a rank was seen killed (by a signal, or by signals.wait once it
    was stopped), that stays the reason and their line is added."""
    if not faults or not failure.retry:
        return failure
    reporter, said = next(iter(faults.items()))
    if failure.status != RANK_FAULT:
        failure.why = f"{failure.why}; rank {reporter} reported: {said}"
        return failure
    named = NAMED.search(said)
    if named:
        failure.rank, failure.host = int(named.group(1)), named.group(2)
    failure.why = f"rank {reporter} reported: {said}"
    return failure


def read_failures(path: Path) -> list[dict] | None:
    """What launcher/torchrun.py wrote to `path`; None when it wrote nothing (no rank failed, or the
    deepspeed launcher ran the ranks) or something that is not its list."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(data, list) and all(
        isinstance(f, dict) and isinstance(f.get("rank"), int) and isinstance(f.get("exitcode"), int) for f in data
    )
    return data if ok else None


def record(output_dir, attempt: int, of: int, failure: Failure) -> None:
    """The restart's record in output_dir/metrics.jsonl and its line on stderr."""
    append_event(
        Path(output_dir) / METRICS,
        {
            "event": RESTART,
            "attempt": attempt,
            "of": of,
            "rank": failure.rank,
            "host": failure.host,
            "why": failure.why,
            "status": failure.status,
        },
    )
    print(
        f"ptune: {failure.line()}; restarting every rank from the newest checkpoint (restart {attempt} of {of}, "
        "launch.max_restarts)",
        file=sys.stderr,
        flush=True,
    )


def spent(failure: Failure, of: int) -> str:
    return (
        f"ptune: {failure.line()}; the restart budget is spent (launch.max_restarts={of}, {of} restart(s) made): "
        "the newest checkpoint is whole, run the same command to resume from it"
    )


def run(attempt: Callable[[int], int | Failure], max_restarts: int, output_dir) -> int:
    """Run `attempt(k)` (k: the restarts made so far; k > 0 resumes) until it returns a status (the run
    ended: done, stopped, preempted), fails with what is not retried, or the budget is spent."""
    made = 0
    while True:
        result = attempt(made)
        if isinstance(result, int):
            return result
        if not result.retry:
            print(f"ptune: {result.line()}; not restarted", file=sys.stderr, flush=True)
            return result.status
        if made >= max_restarts:
            print(spent(result, max_restarts), file=sys.stderr, flush=True)
            return result.status
        made += 1
        record(output_dir, made, max_restarts, result)


# -- inside a Slurm job (slurm/train.sbatch, through launcher/slurm_restart.py) --------------------------------

SRUN_TASK = re.compile(r"srun: error: (\S+): tasks? ([0-9,-]+): (.*)")


def srun_failure(rc: int, log: Path | None) -> Failure:
    """The failure of an srun step from its exit status and its stderr (`log`): srun says
    `srun: error: HOST: task N: Killed` (or `Exited with exit code C`) for the task that failed first."""
    failure = classify_status(rc, host="?")
    try:
        lines = Path(log).read_text(errors="replace").splitlines() if log else []
    except OSError:
        lines = []
    for line in lines:
        m = SRUN_TASK.search(line)
        if not m:
            continue
        host, tasks, what = m.groups()
        rank = int(re.split("[,-]", tasks)[0])
        code = re.search(r"exit code (\d+)", what)
        if "Killed" in what or "Terminated" in what or code:
            status = int(code.group(1)) if code else 128 + signal.SIGKILL if "Killed" in what else 128 + 15
            if code is None or int(code.group(1)) != 0:
                found = classify_status(status, rank, host)
                if found.retry or not failure.retry:
                    return found
    return failure


def _count(path: Path) -> int:
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def main(argv: list[str]) -> int:
    """`restarts step RC OUTPUT_DIR MAX COUNT_FILE [SRUN_LOG]`: after an srun step that ended with RC: 0 when it
    is a rank fault within the budget (recorded: run the step again), else 1 (a line says why when it was a
    rank fault over the budget).
    `restarts requeue OUTPUT_DIR MAX COUNT_FILE`: the job was requeued by Slurm (its allocation was lost, a
    node failed): 0 to go on within the budget (recorded), else 1 with the budget line."""
    kind, rest = argv[0], argv[1:]
    if kind == "step":
        failure = srun_failure(int(rest[0]), Path(rest[4]) if len(rest) > 4 else None)
        rest = rest[1:]
    else:
        failure = Failure(
            0, True, "the job's allocation was lost (a node failed) and Slurm requeued it", None, socket.gethostname()
        )
    output_dir, of, count = Path(rest[0]), int(rest[1]), Path(rest[2])
    if not failure.retry:
        print(f"ptune: {failure.line()}; not restarted", file=sys.stderr, flush=True)
        return 1
    made = _count(count)
    if made >= of:
        print(spent(failure, of), file=sys.stderr, flush=True)
        return 1
    write_atomic(count, f"{made + 1}\n")
    record(output_dir, made + 1, of, failure)
    return 0
