"""A peer rank that died or stopped answering: found, named in one line, and this rank ends resumable.

    start(env, timeout_s)     after the process group is made (world > 1): this rank's heartbeat begins
    at(step, phase)           where the loop is (host values, a dict update: no device access, no sync)
    with watched(): ...       a failed collective becomes RankFault (the line); the heartbeat stops on exit
    leave(fault) -> 97        the exit status of a rank that lost a peer; the line also into PTUNE_STOP_RECORD
    write_fault / read_faults FOLDER/fault-R: the line of rank R, for the launcher that restarts the ranks

Heartbeat. Each rank of a multi-rank run has a daemon thread that writes `ptune/beat/<run>/<rank>` to the
rendezvous TCPStore (its own client connection to MASTER_ADDR:MASTER_PORT, the store the process group was
made on: torchrun's agent, or rank 0 without one) every `interval(timeout_s)` seconds: a counter, the
rank's step and phase, its host and pid, and its state (up; done, failed: it left; fault: it lost a peer
itself). A beat is a few dozen bytes over TCP, on the host; the loop only updates a dict.

Who did not answer. A rank learns of a lost peer in one of two ways:
- a collective raises: gloo's "Timed out waiting Nms" after distributed.timeout_s (a stopped peer), or
  "Connection reset/closed by peer" at once (a dead one); NCCL and the store raise torch.distributed
  DistError. `watched` then watches the others' beats for WINDOW beats (less when the thread below was
  already watching): the peers whose counter stood still and that had not left are the silent ones;
  without one, a peer that left with its own error is named; a store that stops answering is named as
  rank 0 when rank 0 holds it (no torchrun agent). Every survivor marks itself `fault` first, so a
  survivor that ends sooner is never named by another. The beats are the evidence, not the error text:
  gloo names a peer's address, not its rank, and NCCL's watchdog names neither.
- the loop has not moved (step and phase unchanged) for about distributed.timeout_s while a peer's counter
  stood still for at least half of it: the thread ends the rank itself (os._exit, after the line), for a
  main thread that no error reaches, e.g. on NCCL, where the host runs ahead and blocks in a later copy, and
  the watchdog (TORCH_NCCL_ASYNC_ERROR_HANDLING, train/dist.py) would tear the process down without a line.
A peer alive but slow (a long evaluation or save) keeps beating, so it is never called silent.

The end. Every surviving rank writes one line (the rank(s) that did not answer, their host, their last step,
this rank's step, distributed.timeout_s) and exits RANK_FAULT (97) directly, also under `ptune launch`: a
resumable status. Nothing is saved on the way out; checkpoint writes are atomic (checkpoint/atomic.py), so
a save cut short by a lost peer leaves no folder that looks complete.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from . import preempt
from .preempt import RANK_FAULT, STOP_RECORD_ENV

KEY = "distributed.timeout_s"
WINDOW = 3  # beats a peer's counter must stand still, while watched, to be called silent
GLOO_SIGNS = ("gloo/", "Timed out waiting", "Connection reset by peer", "Connection closed by peer")

_where = {"step": 0, "phase": "start", "moved": time.monotonic()}
_current = {"beats": None}


class RankFault(Exception):
    """A peer died or stopped answering; str(self) is the line (without the command's prefix)."""


def interval(timeout_s: float) -> float:
    """Seconds between beats: a twentieth of the wait, at least 0.5 s, at most 5 s."""
    return min(5.0, max(0.5, timeout_s / 20))


def at(step: int, phase: str = "train") -> None:
    """Where this rank's loop is; a rank whose place has not changed for timeout_s is stalled."""
    if step != _where["step"] or phase != _where["phase"]:
        _where.update(step=step, phase=phase, moved=time.monotonic())


def is_peer_failure(e: BaseException) -> bool:
    """A collective or the store failed (a peer gone or silent), not this rank's own error."""
    from torch.distributed import DistError

    return isinstance(e, DistError) or (isinstance(e, RuntimeError) and any(s in str(e) for s in GLOO_SIGNS))


def start(env, timeout_s: float, store=None) -> Heartbeats | None:
    """Begin this rank's heartbeat (world > 1); None when the rendezvous store cannot be reached (a failure is
    then still one line, without names)."""
    stop_beats()
    _where.update(step=0, phase="start", moved=time.monotonic())
    if env.world < 2:
        return None
    try:
        if store is None:
            from torch.distributed import TCPStore

            store = TCPStore(
                env.master_addr,
                env.master_port,
                is_master=False,
                wait_for_workers=False,
                timeout=timedelta(seconds=max(2.0, 2 * interval(timeout_s))),
            )
        beats = Heartbeats(env.rank, env.world, timeout_s, store, env.master_addr)
    except (RuntimeError, OSError):
        return None
    _current["beats"] = beats
    return beats


def stop_beats(state: str = "done") -> None:
    beats, _current["beats"] = _current["beats"], None
    if beats is not None:
        beats.stop(state)


@contextmanager
def watched():
    """Around a run: a collective that fails because a peer is gone raises RankFault naming it; any other
    way out tells the peers this rank left (done, or failed with its own error) and stops the heartbeat."""
    try:
        yield
    except BaseException as e:
        from . import dist  # imports torch: not at the top (cli imports this module before torch)

        beats = _current["beats"]
        # a second Ctrl-C, this rank's own error, or one process alone (no peer to lose): as it is
        if preempt.aborted() or not dist.active() or not is_peer_failure(e):
            stop_beats("done" if isinstance(e, (preempt.Preempted, KeyboardInterrupt)) else "failed")
            raise
        fault = beats.diagnose(e) if beats else RankFault(line([], None, e, None, None))
        stop_beats("fault")
        raise fault from None
    stop_beats("done")


class Heartbeats:
    def __init__(self, rank: int, world: int, timeout_s: float, store, master_addr: str = "?"):
        self.rank, self.world, self.timeout_s, self.store = rank, world, timeout_s, store
        self.every, self.master_addr = interval(timeout_s), master_addr
        self.agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun holds the store
        run = f"{os.environ.get('TORCHELASTIC_RUN_ID', '')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        self.prefix, self.host, self.seq, self.state = f"ptune/beat/{run}/", socket.gethostname(), 0, "up"
        self.seen, self.moved, self.store_down = {}, {}, None  # peer -> last beat; peer -> when it last moved
        self.lock, self.ending, self.halt = threading.Lock(), threading.Lock(), threading.Event()
        self.beat()
        self.thread = threading.Thread(target=self._run, name="ptune-heartbeat", daemon=True)
        self.thread.start()

    def beat(self) -> None:
        self.seq += 1
        value = json.dumps(
            {
                "seq": self.seq,
                "step": _where["step"],
                "phase": _where["phase"],
                "host": self.host,
                "pid": os.getpid(),
                "state": self.state,
            }
        )
        with self.lock:
            self.store.set(self.prefix + str(self.rank), value)

    def observe(self) -> None:
        """Read every peer's beat once; a counter that changed moves that peer's time."""
        peers = [r for r in range(self.world) if r != self.rank]
        now = time.monotonic()
        with self.lock:
            try:
                keys = [self.prefix + str(r) for r in peers]
                got = [json.loads(self.store.get(k)) if self.store.check([k]) else None for k in keys]
            except (RuntimeError, OSError, ValueError):
                self.store_down = self.store_down or now
                return
            self.store_down = None
            for r, beat in zip(peers, got):
                beat = beat or {"seq": None, "state": "up"}
                if r not in self.moved or beat.get("seq") != self.seen[r].get("seq"):
                    self.moved[r] = now
                self.seen[r] = beat

    def silent(self, for_s: float) -> list[int]:
        now = time.monotonic()
        if self.store_down is not None and now - self.store_down >= for_s:
            return self.store_holder()
        return sorted(r for r, t in self.moved.items() if now - t >= for_s and self.seen[r].get("state") == "up")

    def store_holder(self) -> list[int]:
        """[0] when rank 0 holds the store (no torchrun agent) and the store stopped answering: rank 0 with it."""
        if self.store_down is None or self.agent or self.rank == 0:
            return []
        beat = self.seen.setdefault(0, {"state": "up"})
        beat.setdefault("host", self.master_addr)
        beat["store"] = True
        self.moved[0] = min(self.moved.get(0, self.store_down), self.store_down)
        return [0]

    def diagnose(self, error: BaseException) -> RankFault:
        """After a failed collective: who did not answer, watched for up to WINDOW beats."""
        with self.ending:
            self.state = "fault"
            deadline = time.monotonic() + WINDOW * self.every
            while True:
                try:
                    self.beat()
                except (RuntimeError, OSError):
                    pass
                self.observe()
                named = self.silent(WINDOW * self.every)
                if named or time.monotonic() >= deadline:
                    break
                time.sleep(self.every / 2)
            if not named:  # nobody silent for the whole window: a store that stopped answering, or a peer that
                named = self.store_holder() or sorted(  # left with its own error
                    r for r, b in self.seen.items() if b.get("state") == "failed"
                )
            return RankFault(line(named, self.seen, error, self.timeout_s, self.moved))

    def _run(self) -> None:
        while not self.halt.wait(self.every):
            try:
                self.beat()
            except (RuntimeError, OSError):
                pass
            if self.state != "up":  # diagnose() watches now, or the rank is leaving
                continue
            stalled = time.monotonic() - _where["moved"]
            if stalled < self.timeout_s / 2:
                with self.lock:
                    self.moved.clear()  # not stalled: the next stall is watched from its start
                continue
            self.observe()
            named = self.silent(self.timeout_s / 2)
            if named and stalled >= self.timeout_s - 2 * self.every and self.ending.acquire(blocking=False):
                fault = RankFault(line(named, self.seen, None, self.timeout_s, self.moved))
                print(f"ptune train: {fault}", file=sys.stderr, flush=True)
                os._exit(leave(fault))  # the main thread waits where no error reaches it

    def stop(self, state: str) -> None:
        self.halt.set()
        self.state = state
        try:
            self.beat()  # the last word: this rank left (or saw the fault), so no peer names it
        except (RuntimeError, OSError):
            pass


def line(
    named: list[int], seen: dict | None, error: BaseException | None, timeout_s: float | None, moved: dict | None
) -> str:
    """The one line: who did not answer (rank, host, pid, last step), where this rank was, the key."""
    now, parts = time.monotonic(), []
    for r in named:
        b = (seen or {}).get(r, {})
        where = f"last heard at step {b['step']} ({b['phase']})" if "step" in b else "never heard from"
        quiet = f", silent for {now - moved[r]:.0f} s" if moved and r in moved and b.get("state") == "up" else ""
        pid = f", pid {b['pid']}" if "pid" in b else ""
        store = ", the rendezvous store it holds silent too" if b.get("store") else ""
        parts.append(f"rank {r} (host {b.get('host', '?')}{pid}, {where}{quiet}{store})")
    gone = [(seen or {}).get(r, {}).get("state") for r in named]
    if not named and seen is None:
        who = "a peer rank did not answer (before the heartbeats began, so none is named)"
    elif not named:
        who = "no peer rank was found silent (every heartbeat moved)"
    elif all(s == "failed" for s in gone):
        who = f"{', '.join(parts)} ended with its own error (its output says which)"
    else:
        who = f"{', '.join(parts)} stopped answering"
    waited = f" up to {KEY}={timeout_s:g} s" if timeout_s else f" ({KEY} bounds the wait)"
    why = f" ({_short(error)})" if error is not None else ""
    return (
        f"{who}; this rank waited at step {_where['step']} ({_where['phase']}){waited}{why}; ending with "
        f"status {RANK_FAULT}, resumable: nothing after the newest checkpoint was saved, rerun to resume from it"
    )


def _short(error: BaseException) -> str:
    """gloo's text without its source path and its advice: `Timed out waiting 8000ms for recv operation`."""
    text = " ".join(str(error).split())
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    text = text.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}: {text[:160]}"


def leave(fault: RankFault) -> int:
    """RANK_FAULT, after writing the line to PTUNE_STOP_RECORD/fault-R when `ptune launch` set that folder."""
    folder = os.environ.get(STOP_RECORD_ENV)
    if folder:
        try:
            write_fault(Path(folder), int(os.environ.get("RANK", "0")), str(fault))
        except (OSError, ValueError):
            pass
    return RANK_FAULT


def write_fault(folder: Path, rank: int, text: str) -> None:
    """FOLDER/fault-R: rank R's line, written without following a link (as preempt.leave writes rank-R)."""
    fd = os.open(Path(folder) / f"fault-{int(rank)}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(" ".join(text.split()) + "\n")


def read_faults(folder: Path) -> dict[int, str]:
    """{rank: line} of every fault-R in `folder`; unreadable or misnamed files are left out."""
    found = {}
    for path in Path(folder).glob("fault-*"):
        try:
            found[int(path.name.split("-", 1)[1])] = path.read_text().strip()
        except (OSError, ValueError):
            continue
    return dict(sorted(found.items()))
