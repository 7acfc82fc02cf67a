"""One `ptune train` per output_dir: a second run is refused naming the holder, before it touches
anything; a lock left by a killed run is taken over; an output_dir that cannot be written fails first."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ptune_dist.cli import main
from ptune_dist.errors import PtuneError
from ptune_dist.train.run_lock import NAME, RunLock, check_free

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
HOLD = (
    "import sys, time; from ptune_dist.train.run_lock import RunLock\n"
    "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"
)


def holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_train_is_refused_and_touches_nothing(tmp_path, capsys):
    proc = holder(tmp_path)
    try:
        assert main(["train", QUICKSTART, f"output_dir={tmp_path}", "train.steps=1"]) == 2
        err = capsys.readouterr().err
        assert "in use by another ptune train" in err and f"pid {proc.pid}" in err
        assert [p.name for p in tmp_path.iterdir()] == [NAME]
        with pytest.raises(PtuneError, match="in use"):
            check_free(tmp_path)  # what `ptune launch` asks before starting ranks
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_a_lock_the_next_run_takes(tmp_path):
    proc = holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / NAME).is_file()
    with RunLock(tmp_path):
        with pytest.raises(PtuneError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).__enter__()  # and it now names this process
    check_free(tmp_path)


def test_other_ranks_take_no_lock(tmp_path):
    with RunLock(tmp_path):
        with RunLock(tmp_path, held=False):
            pass


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: p.write_text("x") and p, "is a file"),
        (lambda p: Path("/sys/ptune-test-run"), "cannot write there"),  # refused even to root
    ],
)
def test_an_output_dir_that_cannot_be_written_fails_before_any_work(tmp_path, capsys, make, words):
    out = make(tmp_path / "out")
    assert main(["train", QUICKSTART, f"output_dir={out}", "train.steps=1"]) == 2
    assert words in capsys.readouterr().err
