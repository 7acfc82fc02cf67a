"""Ctrl-C under the launchers: one SIGINT to `ptune launch`'s process group reaches each of 2 torchrun ranks
once, they save one checkpoint (every rank's part) and the launcher exits 130 after its children, without a
traceback, and the rerun resumes bit-exactly; a repeated Ctrl-C within 2 s is the same keypress, a later one
stops at once with one line, a third kills (launcher/signals.py, train/preempt.py); `ptune study` records a
cell stopped by Ctrl-C as stopped at a checkpoint, not failed, and stops its queue with 130."""

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import read_jsonl
from ptune_dist.checkpoint import state as ckpt
from ptune_dist.launcher import signals
from ptune_dist.train.preempt import INTERRUPTED

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
    "train.device=cpu",
    "launch.nproc_per_node=2",
    "launch.threads_per_proc=1",
]


def start(*args):
    """`ptune ...` as a shell starts a foreground job: a process group of its own (killpg reaches it all)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.Popen(
        [sys.executable, "-m", "ptune_dist.cli", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def launch(out, steps, *more):
    return start("launch", QUICKSTART, f"output_dir={out}", f"train.steps={steps}", *TINY, *more)


def train_losses(run) -> dict:
    from ptune_dist.train.metrics_file import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "split" not in r}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_one_sigint_to_launch_checkpoints_every_rank_exits_130_and_resumes_bit_exactly(tmp_path):
    run = tmp_path / "run"
    proc = launch(run, 400)
    deadline, ranks = time.time() + 300, []
    while time.time() < deadline and proc.poll() is None and not train_losses_logged(run):
        ranks = [p for p in signals.descendants(proc.pid) if signals.catches(p, signal.SIGUSR1)] or ranks
        time.sleep(0.2)
    assert len(ranks) == 2, ranks  # torchrun's two ranks, each with its stop handlers up
    tree = signals.descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what one Ctrl-C at the terminal does
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and "ChildFailedError" not in out, out[-3000:]
    assert not [p for p in tree if alive(p)]  # the launcher returned after its whole tree
    stopped = max(train_losses(run))
    assert out.count(f"interrupted (Ctrl-C) after step {stopped}; checkpoint saved") == 2  # each rank, once
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{stopped}"]
    ckpt.verify(run / "checkpoints" / f"step-{stopped}")
    assert sorted(load_file(run / "checkpoints" / f"step-{stopped}" / "rng.safetensors")) == ["rank0", "rank1"]

    resumed, reference = launch(run, stopped + 2), launch(tmp_path / "ref", stopped + 2)
    for p in (resumed, reference):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "resume"] == [stopped]
    assert train_losses(run) == train_losses(tmp_path / "ref")  # every step's loss, bit for bit
    a = load_file(run / "final" / "trainable.safetensors")
    b = load_file(tmp_path / "ref" / "final" / "trainable.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train_losses_logged(run) -> bool:
    path = run / "metrics.jsonl"
    return path.exists() and '"loss"' in path.read_text()


# a stand-in for `ptune train` under a launcher: stop handlers up (it catches USR1), one line per INT received
RANK = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGUSR1, lambda *a: None)
    signal.signal(signal.SIGTERM, lambda *a: (print("TERM", flush=True), sys.exit(0)))
    signal.signal(signal.SIGINT, lambda *a: print("INT", flush=True))
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
""")
# the launcher's side: signals.wait over a launcher (like torchrun) whose child is the rank
LAUNCHER = textwrap.dedent("""
    import sys
    from ptune_dist.launcher import signals
    rc, asked = signals.wait([sys.executable, "-c", "import subprocess, sys; "
                              "sys.exit(subprocess.run([sys.executable, sys.argv[1]]).returncode)", sys.argv[1]], {})
    print("launcher", rc, asked, flush=True)
""")


def forwarding(tmp_path):
    (tmp_path / "rank.py").write_text(RANK)
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "rank.py")],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_the_launcher_forwards_one_ctrl_c_once_and_a_second_press_later_a_third_kills(tmp_path):
    proc = forwarding(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    os.killpg(proc.pid, signal.SIGINT)  # the same keypress delivered twice: forwarded once
    assert proc.stdout.readline().strip() == "INT"
    time.sleep(signals.DUPLICATE_S + 0.3)
    os.killpg(proc.pid, signal.SIGINT)  # a second press
    assert proc.stdout.readline().strip() == "INT"
    time.sleep(signals.DUPLICATE_S + 0.3)
    os.killpg(proc.pid, signal.SIGINT)  # a third: the rank (which ignores INT here) and its launcher are killed
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.split() == ["launcher", "-9", str(int(signal.SIGINT))], out


def test_the_launcher_forwards_term_and_hup_as_term_and_waits(tmp_path):
    proc = forwarding(tmp_path)
    os.kill(proc.pid, signal.SIGHUP)  # the terminal closed: stop resumable
    out, _ = proc.communicate(timeout=30)
    assert out.split() == ["TERM", "launcher", "0", str(int(signal.SIGTERM))], out


def test_a_launcher_whose_ptune_is_killed_outright_gets_a_term(tmp_path):
    """torchrun runs in a session of its own; a `ptune` killed by SIGKILL (no handler runs) must not leave it
    running unseen: the kernel sends it a TERM (PR_SET_PDEATHSIG), on which ranks stop at a checkpoint."""
    (tmp_path / "rank.py").write_text(RANK)
    code = "import sys; from ptune_dist.launcher import signals; signals.wait([sys.executable, sys.argv[1]], {})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "rank.py")],
        start_new_session=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    assert select.select([proc.stdout], [], [], 10)[0], "the launcher's child got no TERM"
    assert proc.stdout.readline().strip() == "TERM"  # the child's line, on the pipe it shares
    proc.wait(timeout=30)


def test_a_second_ctrl_c_stops_train_at_once_with_one_line(tmp_path):
    """Under `ptune launch` the rank exits 0 and leaves 130 for the launcher (PTUNE_STOP_RECORD)."""
    code = textwrap.dedent("""
        import sys, time
        from ptune_dist import cli
        from ptune_dist.train.preempt import StopRequests
        def busy(ns):
            with StopRequests():
                print("ready", flush=True)
                time.sleep(60)  # a long step
        cli.cmd_train = busy
        sys.exit(cli.main(["train", "x.yaml"]))
    """)
    for record in (None, tmp_path / "stop"):
        env = dict(os.environ, RANK="0")
        if record:
            record.mkdir()
            env["PTUNE_STOP_RECORD"] = str(record)
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)  # the same keypress, again (the terminal's and torchrun's)
        time.sleep(signals.DUPLICATE_S + 0.3)
        assert proc.poll() is None  # still finishing its step
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == (0 if record else INTERRUPTED), err
        assert "Traceback" not in err and err.count("stopped at once on a second Ctrl-C") == 1, err
        assert err.count("ptune: interrupted; stopping") == 1
        if record:
            assert (record / "rank-0").read_text() == "130\n"


def test_a_study_cell_stopped_by_ctrl_c_is_not_failed_and_the_queue_stops(tmp_path, monkeypatch, capsys):
    from ptune_dist.launcher import grid_queue
    from ptune_dist.launcher.grid_cells import state
    from ptune_dist.study import command

    study = tmp_path / "study"
    started = []

    def interrupted(cfg, path):
        started.append(Path(path).parent.name)
        return INTERRUPTED

    monkeypatch.setattr(grid_queue.local, "run", interrupted)
    args = [
        QUICKSTART,
        f"output_dir={study}",
        "study.models=[embedded:smollm2-135m-instruct]",
        "study.methods=[prompt_tuning]",
        "study.prompt_lengths=[4, 8]",
        "study.prompt_length=4",
        "study.seeds=[0]",
        "study.retries=2",
    ]
    assert command.run(args) == INTERRUPTED
    assert len(started) == 1  # not retried, and no other cell started
    cell = study / "cells" / started[0]
    assert json.loads((cell / "attempts.json").read_text()) == {"starts": 1, "last_rc": "requeued"}
    assert state(cell) == "pending"
    err = capsys.readouterr().err
    assert f"ptune study: interrupted (Ctrl-C) in cell {started[0]}, which keeps its checkpoint" in err
    assert not (study / "report").exists()


def test_a_local_sweep_stopped_by_ctrl_c_starts_no_further_cell(tmp_path, monkeypatch, capsys):
    from ptune_dist.cli import main
    from ptune_dist.launcher import sweep

    started = []

    def interrupted(cfg, path):
        started.append(Path(path).parent.name)
        return INTERRUPTED

    monkeypatch.setattr(sweep.local, "run", interrupted)
    assert main(["sweep", QUICKSTART, f"output_dir={tmp_path / 'sw'}", "--grid", "train.seed=0,1,2"]) == INTERRUPTED
    assert started == ["000"] and not (tmp_path / "sw" / "results.csv").exists()
    assert "ptune sweep: stopped on a signal; rerun the same command to resume" in capsys.readouterr().err


@pytest.mark.slow
def test_one_sigint_to_a_local_study_stops_its_cell_at_a_checkpoint(tmp_path):
    """The rerun resumes the cell as any cell cut short (test_study_run.py); the resume itself: the test above."""
    from conftest import SMOL
    from ptune_dist.study.folder import state

    study = tmp_path / "study"
    grid = [
        f"study.models=[{SMOL}]",
        "study.methods=[prompt_tuning]",
        "study.prompt_length=4",
        "study.prompt_lengths=[4]",
        "study.inits=[random]",
        "study.init=random",
        "study.seeds=[0]",
        "tasks=[{name: support, preset: support, scoring: head, pooling: mean}]",
        "method.init=random",
        *[a for a in TINY if not a.startswith(("launch.", "method.", "train.device"))],
    ]
    proc = start("study", QUICKSTART, f"output_dir={study}", "train.steps=400", *grid)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(map(train_losses_logged, study.glob("cells/*"))):
        time.sleep(0.2)
    (cell,) = study.glob("cells/*")
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and f"ptune study: interrupted (Ctrl-C) in cell {cell.name}" in out, out[-3000:]
    stopped = max(train_losses(cell))
    assert [p.name for p in (cell / "checkpoints").iterdir()] == [f"step-{stopped}"]
    assert json.loads((cell / "attempts.json").read_text()) == {"starts": 1, "last_rc": "requeued"}
    assert state(cell) == "pending" and not (study / "report").exists()
