"""`ptune study` end to end on the two embedded real models (a reduced grid, a few steps a cell): the local
queue runs every cell, a study killed mid-way finishes only the missing cells when run again, and the
results and report are written and read back."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MINI, SMOL
from ptune_dist.cli import main

STUDY = [
    f"study.models=[{MINI}, {SMOL}]",
    "study.methods=[prompt_design, prompt_tuning]",
    "study.prompt_length=4",
    "study.init=random",
    "study.prompt_lengths=[4, 8]",
    "study.inits=[random]",
    "study.seeds=[0]",
    "tasks=[{name: support, preset: support, scoring: head, pooling: mean}]",
    "data.max_length=64",
    "data.max_train_examples=16",
    "data.max_eval_examples=8",
    "data.batch_size=4",
    "train.steps=2",
    "train.lr=0.05",
    "train.eval_baseline=false",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "method.init=random",
]


def ptune(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.Popen(
        [sys.executable, "-m", "ptune_dist.cli", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def done_cells(study):
    return sorted(p.parent.name for p in (study / "cells").glob("*/results.json"))


@pytest.mark.slow
def test_a_killed_study_finishes_only_the_missing_cells(tmp_path):
    study = tmp_path / "study"
    args = ["study", *STUDY, f"output_dir={study}"]
    assert main([*args, "--dry-run"]) == 0
    assert not study.exists()  # a dry run writes nothing
    first = ptune(*args)
    deadline = time.time() + 300
    while not done_cells(study) and time.time() < deadline and first.poll() is None:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    finished = done_cells(study)
    cells = json.loads((study / "study.json").read_text())["cells"]
    assert 1 <= len(finished) < len(cells) == 6  # 2 models x (prompt design, prompt tuning L4, L8)
    stamps = {c: (study / "cells" / c / "results.json").stat().st_mtime_ns for c in finished}

    second = ptune(*args)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out[-3000:]
    assert done_cells(study) == sorted(c["id"] for c in cells)
    for c in finished:  # not run again
        assert (study / "cells" / c / "results.json").stat().st_mtime_ns == stamps[c]
        assert json.loads((study / "cells" / c / "attempts.json").read_text())["starts"] == 1

    rows = list(csv.DictReader((study / "results.csv").open()))
    assert sorted(r["cell"] for r in rows) == sorted(c["id"] for c in cells)
    assert all(r["status"] == "done" and 0 <= float(r["score"]) <= 1 for r in rows)
    sizes = {r["model"]: int(r["model_params"]) for r in rows}
    assert 20e6 < sizes[MINI] < 25e6 and 130e6 < sizes[SMOL] < 140e6  # the real models' sizes
    trained = {(r["model"], r["method"], r["prompt_length"]): int(r["trained_params"]) for r in rows}
    assert trained[(SMOL, "prompt_design", "0")] == 0
    assert trained[(SMOL, "prompt_tuning", "8")] > trained[(SMOL, "prompt_tuning", "4")] > 0
    for r in rows:  # each score is the cell's own final evaluation
        results = json.loads((study / "cells" / r["cell"] / "results.json").read_text())
        assert float(r["score"]) == results["final"]["support"]["accuracy"]
    assert (study / "report" / "report.md").is_file() and (study / "report" / "scale.png").is_file()

    status = subprocess.run(
        [sys.executable, "-m", "ptune_dist.cli", "study", "status", str(study)], capture_output=True, text=True
    )
    assert status.returncode == 0 and "6 cells: 6 done, 0 running, 0 failed, 0 pending" in status.stdout
