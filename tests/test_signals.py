"""Signals: Ctrl-C stops at the end of a step with a checkpoint and exit 130 (the same keypress delivered
again within 2 s changes nothing; a second press later stops at once); a TERM during the imports, before
training's handler exists, still ends resumable (99). Under the launchers: test_signals_launch.py."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptune_dist.checkpoint import state as ckpt
from ptune_dist.train import preempt
from ptune_dist.train.metrics_file import read_metrics
from ptune_dist.train.preempt import INTERRUPTED, PREEMPTED, Preempted, StopRequests

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
TINY = [
    "method.num_virtual_tokens=4",
    "data.max_train_examples=64",
    "data.max_eval_examples=8",
    "data.batch_size=4",
    "train.log_every=1",
    "train.progress_bar=false",
    "train.eval_baseline=false",
    "train.tensorboard=false",
    "train.eval_every=0",
]


def command(out, steps):
    return [
        sys.executable,
        "-m",
        "ptune_dist.cli",
        "train",
        QUICKSTART,
        f"output_dir={out}",
        f"train.steps={steps}",
        *TINY,
    ]


def train_steps(metrics) -> list:
    return [r["step"] for r in read_metrics(metrics) if "loss" in r and "split" not in r]


@pytest.fixture
def handlers():
    """Whatever a test does to this process's handlers is undone."""
    saved = {sig: signal.getsignal(sig) for sig in preempt.SIGNALS}
    yield
    preempt.release_early()
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def deliver(sig):
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # Python runs the handler at the next bytecode boundary of the main thread


def test_preempt_imports_no_torch():
    """cli.py imports preempt before catch_early() can run: torch must not load with it."""
    code = "import sys, ptune_dist.cli, ptune_dist.train.preempt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_exit_codes_follow_the_signal(tmp_path, monkeypatch):
    monkeypatch.delenv(preempt.MARKER_ENV, raising=False)
    assert Preempted(5, signum=signal.SIGTERM).exit_code() == PREEMPTED
    assert Preempted(5, signum=signal.SIGINT).exit_code() == INTERRUPTED == 130
    marker = tmp_path / "marker"
    monkeypatch.setenv(preempt.MARKER_ENV, str(marker))
    assert Preempted(5, signum=signal.SIGINT).exit_code() == 130 and not marker.exists()  # no requeue for a person
    assert Preempted(5, signum=signal.SIGUSR1).exit_code() == 0 and marker.read_text() == "5\n"
    assert "interrupted (Ctrl-C) after step 5; checkpoint saved" in str(Preempted(5, signum=signal.SIGINT))
    assert "before training started; nothing to save" in str(Preempted(0, signum=signal.SIGTERM))


def test_second_ctrl_c_raises_and_term_overrides_int(handlers, monkeypatch):
    ctrl_c = signal.getsignal(signal.SIGINT)
    with StopRequests() as stop:
        deliver(signal.SIGINT)
        assert stop.signum == signal.SIGINT
        deliver(signal.SIGINT)  # the same keypress, delivered again (terminal and torchrun): nothing new
        assert stop.signum == signal.SIGINT and not preempt.aborted()
        monkeypatch.setattr(preempt, "DUPLICATE_S", 0.0)  # as if the person pressed again 2 s later
        with pytest.raises(KeyboardInterrupt):
            deliver(signal.SIGINT)
        assert preempt.aborted()
    monkeypatch.undo()
    with StopRequests() as stop:
        deliver(signal.SIGINT)
        deliver(signal.SIGTERM)  # a preemption coinciding with a Ctrl-C: the job must still be requeued
        assert stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is ctrl_c  # stopped: Ctrl-C has its usual meaning again


def test_a_signal_caught_early_is_adopted_and_handlers_come_back(handlers):
    before = {sig: signal.getsignal(sig) for sig in preempt.SIGNALS}
    preempt.catch_early()
    deliver(signal.SIGTERM)
    with StopRequests() as stop:
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # stopping: a repeated TERM must not kill the exit
    before = {sig: signal.getsignal(sig) for sig in preempt.SIGNALS}
    preempt.catch_early()
    preempt.release_early()  # the command ended before training: nothing adopted, handlers as they were
    assert {sig: signal.getsignal(sig) for sig in preempt.SIGNALS} == before


def test_ctrl_c_saves_a_checkpoint_exits_130_and_the_rerun_resumes(tmp_path):
    """umask 027 on the way: every file of the run (safetensors included) gets 0640, folders 0750."""
    run = tmp_path / "run"
    metrics = run / "metrics.jsonl"
    proc = subprocess.Popen(
        command(run, 400), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, umask=0o027
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (metrics.exists() and '"loss"' in metrics.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == INTERRUPTED, err[-2000:]
    stopped = max(train_steps(metrics))
    assert "ptune: interrupted; stopping at the end of this step" in err
    assert f"interrupted (Ctrl-C) after step {stopped}; checkpoint saved" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{stopped}"]
    ckpt.verify(run / "checkpoints" / f"step-{stopped}")
    done = subprocess.run(command(run, stopped + 1), capture_output=True, text=True, timeout=300, umask=0o027)
    assert done.returncode == 0, done.stderr[-2000:]
    assert train_steps(metrics) == list(range(1, stopped + 2))  # one history, each step once
    assert [r["step"] for r in read_metrics(metrics) if r.get("event") == "resume"] == [stopped]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in [run, *run.rglob("*")]}
    assert modes == {name: oct(0o750 if (tmp_path / name).is_dir() else 0o640) for name in modes}
    assert "run/final/trainable.safetensors" in modes and "run/results.json" in modes


def test_term_during_the_imports_ends_resumable_before_training(tmp_path):
    """Needs cli.main to call preempt.catch_early() before it imports the training code."""
    proc = subprocess.Popen(command(tmp_path, 400), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not catches(proc.pid, signal.SIGTERM):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # the first handler is up: the imports of torch and the model code follow
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED, err[-2000:]
    assert "stopped on a signal before training started" in err
    assert not (tmp_path / "checkpoints").exists()
    assert not (tmp_path / "metrics.jsonl").exists() or not train_steps(tmp_path / "metrics.jsonl")


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False
