"""With restarts off (launch.max_restarts=0), a rank that dies ends the whole local run quickly (torchrun
stops the others), leaves the newest complete checkpoint intact, and the same command resumes from it. With
restarts on, the launcher does that rerun itself: tests/test_restarts.py."""

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import rank_pid, read_jsonl
from ptune_dist.checkpoint import state as ckpt

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
    "train.save_every=3",
    "launch.nproc_per_node=2",
    "launch.max_restarts=0",
]


def test_killed_rank_ends_the_run_and_the_rerun_resumes(tmp_path):
    def launch(steps):
        return [
            sys.executable,
            "-m",
            "ptune_dist.cli",
            "launch",
            QUICKSTART,
            f"output_dir={tmp_path}",
            f"train.steps={steps}",
            *TINY,
        ]

    proc = subprocess.Popen(launch(400), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and ckpt.latest_complete(tmp_path / "checkpoints") is None:
        time.sleep(0.3)
    os.kill(rank_pid(tmp_path / "launch.yaml", "RANK=1"), 9)
    killed = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.time() - killed < 60, err[-2000:]
    newest = ckpt.latest_complete(tmp_path / "checkpoints")
    ckpt.verify(newest)
    saved = int(newest.name.split("-")[1])
    done = subprocess.run(launch(saved + 2), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "resume"] == [saved]
