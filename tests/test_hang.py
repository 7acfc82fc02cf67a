"""A rank that stops answering (SIGSTOP: a stuck call, a dead NIC, a swapping node) or dies (SIGKILL) under
`ptune launch` with 2 gloo ranks: the survivor ends within distributed.timeout_s plus a small margin with one
line naming the silent rank, its host, the step and the key, and no traceback of ptune's; the launcher returns
(train/peers.py). The line and the launcher's record (fault-R) and the naming itself (a real TCPStore, a peer
whose heartbeat stops, one that left with its own error) are checked in-process."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import tiny_llama
from ptune_dist.launcher import signals
from ptune_dist.rank_env import free_port
from ptune_dist.train import peers
from ptune_dist.train.preempt import RANK_FAULT, STOP_RECORD_ENV

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
TIMEOUT_S = 8
TINY = [
    "method.num_virtual_tokens=4",
    "data.max_train_examples=64",
    "data.max_eval_examples=8",
    "data.batch_size=4",
    "data.max_length=64",
    "train.log_every=1",
    "train.progress_bar=false",
    "train.eval_baseline=false",
    "train.tensorboard=false",
    "train.eval_every=0",
    "train.device=cpu",
    "train.steps=100000",
    "launch.nproc_per_node=2",
    "launch.threads_per_proc=1",
    f"distributed.timeout_s={TIMEOUT_S}",
    "launch.max_restarts=0",
]  # the survivors' end is what is watched here; the restart: the last test
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), hidden=64, intermediate=128, layers=2, heads=4)


class Launch:
    """`ptune launch` in a session of its own, its output read line by line with the time each line came."""

    def __init__(self, out, tiny, *more):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ptune_dist.cli",
                "launch",
                QUICKSTART,
                f"output_dir={out}",
                f"model.name_or_path={tiny}",
                *TINY,
                *more,
            ],
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines, self.metrics = [], Path(out) / "metrics.jsonl"
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def ranks(self) -> dict:
        """{rank: pid} of the ranks, once both train (a loss is logged)."""
        deadline = time.time() + 240
        while time.time() < deadline and self.proc.poll() is None:
            if self.metrics.exists() and '"loss"' in self.metrics.read_text():
                found = {}
                for pid in signals.descendants(self.proc.pid):
                    try:
                        env = dict(
                            e.split("=", 1) for e in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in e
                        )
                        cmd = Path(f"/proc/{pid}/cmdline").read_text()
                    except OSError:
                        continue
                    if "RANK" in env and "ptune_dist.cli" in cmd:
                        found[int(env["RANK"])] = pid
                if len(found) == 2:
                    return found
            time.sleep(0.2)
        raise AssertionError("\n".join(line for _, line in self.lines[-40:]))

    def end(self, pids):
        for pid in pids:  # a stopped rank is cleaned up, whatever the test found
            for sig in (signal.SIGCONT, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def the_line(lines, rank: int) -> list:
    return [(t, line) for t, line in lines if f"ptune train: rank {rank} (host {HOST}" in line]


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, victim, more",
    [
        (signal.SIGSTOP, 1, []),
        (signal.SIGKILL, 0, []),
        # ZeRO-3 (its collectives go through torch.distributed), saving every step: a kill lands in or near a save
        (signal.SIGKILL, 1, ["distributed.engine=deepspeed", "distributed.zero_stage=3", "train.save_every=1"]),
    ],
    ids=["stop-rank-1", "kill-rank-0", "kill-rank-1-zero3-saving"],
)
def test_a_silent_or_dead_rank_is_named_by_the_survivor_within_the_timeout(tmp_path, tiny, sig, victim, more):
    run = Launch(tmp_path / "run", tiny, *more)
    ranks = {}
    try:
        ranks = run.ranks()
        time.sleep(2 * peers.interval(TIMEOUT_S))  # a beat or two after the first steps: the line's last step
        os.kill(ranks[victim], sig)
        sent = time.monotonic()
        run.proc.wait(timeout=TIMEOUT_S + 60)  # the launcher returns: the survivor ended, torchrun ended the rest
    finally:
        run.end(ranks.values())
    time.sleep(0.5)  # the reader's last lines
    text = "\n".join(line for _, line in run.lines)
    named = the_line(run.lines, victim)
    assert len(named) == 1, text[-4000:]
    when, line = named[0]
    assert f"pid {ranks[victim]}" in line and "this rank waited at step " in line
    assert int(re.search(r"last heard at step (\d+) \((train|save)\)", line)[1]) > 0, line
    assert f"distributed.timeout_s={TIMEOUT_S} s" in line and f"status {RANK_FAULT}, resumable" in line
    if sig == signal.SIGSTOP:
        assert "stopped answering" in line and "Timed out" in line, line
        assert when - sent < TIMEOUT_S + 6, (when - sent, line)  # the wait, a step and the heartbeat's window
    else:
        assert "stopped answering" in line and when - sent < 6, (when - sent, line)  # the error comes at once
    assert run.proc.returncode != 0
    assert not [line for _, line in run.lines if "ptune_dist/" in line and 'File "' in line], text[-4000:]
    assert not [line for _, line in run.lines if line.startswith("RuntimeError")], text[-4000:]
    if (tmp_path / "run" / "checkpoints").exists():  # nothing written with a peer missing looks complete
        for folder in (tmp_path / "run" / "checkpoints").iterdir():
            from ptune_dist.checkpoint import state as ckpt

            ckpt.verify(folder)


def test_a_peer_whose_heartbeat_stops_is_named_one_that_failed_is_named_as_such(tmp_path, monkeypatch):
    from torch.distributed import TCPStore

    port = free_port()
    server = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=5))
    client = lambda: TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5))  # noqa: E731
    monkeypatch.setattr(peers, "WINDOW", 2)
    timeout = 1.0  # beats every 0.5 s
    mine = peers.Heartbeats(0, 3, timeout, client())
    quiet = peers.Heartbeats(1, 3, timeout, client())  # rank 1 beats, then stops as a SIGSTOP would stop it
    failed = peers.Heartbeats(2, 3, timeout, client())
    try:
        peers.at(7)
        time.sleep(1.2)
        quiet.halt.set()  # no more beats, state still "up"
        failed.stop("failed")
        fault = mine.diagnose(
            RuntimeError(
                "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
                "waiting 1000ms for recv operation to complete"
            )
        )
    finally:
        for beats in (mine, quiet, failed):
            beats.halt.set()
    line = str(fault)
    assert (
        line.startswith(f"rank 1 (host {HOST}, pid {os.getpid()}, last heard at step ") and "stopped answering" in line
    )
    assert "rank 2" not in line and "this rank waited at step 7 (train) up to distributed.timeout_s=1 s" in line
    assert "(RuntimeError: Timed out waiting 1000ms for recv operation to complete)" in line and "\n" not in line
    del server

    # nobody silent: the peer that left with its own error is named, as such
    only = {2: {"step": 3, "phase": "train", "host": "n2", "state": "failed"}}
    assert peers.line([2], only, RuntimeError("Connection reset by peer"), 300, {}).startswith(
        "rank 2 (host n2, last heard at step 3 (train)) ended with its own error"
    )
    assert peers.line([], {}, RuntimeError("x"), None, None).startswith("no peer rank was found silent")
    assert peers.line([], None, RuntimeError("x"), None, None).startswith("a peer rank did not answer (before the")


class DeadStore:
    """A rendezvous store that stopped answering (rank 0 held it, and rank 0 stopped)."""

    def __init__(self):
        self.up = True

    def set(self, key, value=None):
        if not self.up:
            raise RuntimeError("Socket Timeout")

    def check(self, keys):
        self.set(keys)
        return False  # rank 0 has not beaten yet

    get = set


def test_a_store_that_stops_answering_names_rank_0_which_holds_it(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)  # srun: rank 0 holds the store
    store = DeadStore()
    beats = peers.Heartbeats(1, 2, 1.0, store, master_addr="node-0")
    try:
        store.up = False
        line = str(
            beats.diagnose(RuntimeError("[gloo/transport/tcp/pair.cc:1] Connection closed by peer [10.0.0.1]:5"))
        )
    finally:
        beats.halt.set()
    assert line.startswith("rank 0 (host node-0, never heard from, silent for ") and "stopped answering" in line
    assert "the rendezvous store it holds silent too" in line and "(RuntimeError: Connection closed by peer" in line


def test_a_fault_line_is_recorded_for_the_launcher_and_the_status_is_97(tmp_path, monkeypatch):
    fault = peers.RankFault("rank 1 (host a) stopped answering;\nmore")
    monkeypatch.setenv(STOP_RECORD_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert peers.leave(fault) == RANK_FAULT == 97
    peers.write_fault(tmp_path, 0, "rank 1 (host a) stopped answering")
    (tmp_path / "fault-x").write_text("not a rank")
    (tmp_path / "rank-0").write_text("99\n")  # preempt.leave's records are not faults
    assert peers.read_faults(tmp_path) == {
        0: "rank 1 (host a) stopped answering",
        1: "rank 1 (host a) stopped answering; more",
    }
    monkeypatch.delenv(STOP_RECORD_ENV)
    assert peers.leave(fault) == RANK_FAULT  # without ptune launch: the status alone


def test_only_a_collective_or_store_failure_is_a_peer_fault():
    from torch.distributed import DistBackendError

    assert peers.is_peer_failure(DistBackendError("NCCL watchdog: collective timed out"))
    assert peers.is_peer_failure(
        RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer")
    )
    assert not peers.is_peer_failure(RuntimeError("CUDA out of memory"))
    assert not peers.is_peer_failure(ValueError("Timed out waiting"))
    assert peers.interval(300) == 5 and peers.interval(8) == 0.5


def test_cli_ends_a_rank_fault_with_one_line_and_97(tmp_path, monkeypatch, capsys):
    from ptune_dist import cli

    def lost(ns):
        raise peers.RankFault("rank 1 (host a, last heard at step 3 (train)) stopped answering")

    monkeypatch.setattr(cli, "cmd_train", lost)
    monkeypatch.setenv(STOP_RECORD_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["train", "x.yaml"]) == RANK_FAULT
    assert capsys.readouterr().err == "ptune train: rank 1 (host a, last heard at step 3 (train)) stopped answering\n"
    assert peers.read_faults(tmp_path) == {0: "rank 1 (host a, last heard at step 3 (train)) stopped answering"}


def test_a_main_thread_that_no_error_reaches_is_ended_by_the_heartbeat_with_the_line(tmp_path):
    """As on NCCL, where the host blocks in a copy and only the watchdog would end it: the heartbeat thread sees
    the loop stalled for about timeout_s and a peer silent, writes the line and the record, and exits 97."""
    code = textwrap.dedent(f"""
        import json, time
        from datetime import timedelta
        from torch.distributed import TCPStore
        from ptune_dist.train import peers
        store = TCPStore("127.0.0.1", {free_port()}, is_master=True, wait_for_workers=False,
                         timeout=timedelta(seconds=5))
        store.set("ptune/beat//0/1", json.dumps({{"seq": 1, "step": 4, "phase": "train", "host": "n1", "pid": 7,
                                                 "state": "up"}}))  # rank 1 beat once, then nothing
        peers.at(5)
        peers.Heartbeats(0, 2, 2.0, store)
        time.sleep(60)  # blocked, no error comes
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC")}
    env.update(RANK="0", **{STOP_RECORD_ENV: str(tmp_path)})
    begun = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - begun
    assert done.returncode == RANK_FAULT, done.stderr[-3000:]
    line = (
        r"ptune train: rank 1 \(host n1, pid 7, last heard at step 4 \(train\), silent for \d s\) stopped answering; "
        r"this rank waited at step 5 \(train\) up to distributed.timeout_s=2 s; ending with status 97"
    )
    assert re.match(line, done.stderr) and done.stderr.count("\n") == 1, done.stderr
    assert peers.read_faults(tmp_path)[0] == done.stderr.removeprefix("ptune train: ").strip()
    assert took < 15, took  # torch's import, then about timeout_s


@pytest.mark.slow
def test_a_stopped_rank_is_named_killed_and_the_restart_finishes_the_run(tmp_path, tiny):
    """SIGSTOP of rank 1: the survivor names it within the timeout, the launcher kills the stopped rank (it
    cannot act on torchrun's TERM), records the restart with the rank and host the survivor named, and the
    restarted ranks finish from the newest checkpoint."""
    run = Launch(tmp_path / "run", tiny, "train.steps=120", "train.save_every=10", "launch.max_restarts=1")
    ranks = {}
    try:
        ranks = run.ranks()
        time.sleep(2 * peers.interval(TIMEOUT_S))
        os.kill(ranks[1], signal.SIGSTOP)
        sent = time.monotonic()
        run.proc.wait(timeout=180)
    finally:
        run.end(ranks.values())
    text = "\n".join(line for _, line in run.lines)
    assert run.proc.returncode == 0, text[-4000:]
    restarts = [json.loads(r) for r in run.metrics.read_text().splitlines() if '"restart"' in r]
    assert len(restarts) == 1 and restarts[0]["rank"] == 1 and restarts[0]["host"] == HOST, restarts
    assert "stopped answering" in restarts[0]["why"], restarts
    restarted = [t for t, line in run.lines if "restart" in line.lower() and "rank 1" in line]
    assert restarted and restarted[0] - sent < TIMEOUT_S + 15, text[-4000:]  # no 30 s wait for torchrun's grace
    assert (tmp_path / "run" / "final" / "manifest.json").is_file()
