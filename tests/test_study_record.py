"""A study cell's attempt record on Slurm (launcher/grid_attempts.py): the array script records each start, a
requeue at a
checkpoint and the exit status, so `ptune study status` tells a failed cell from a pending one. The rendered
array script runs here under bash with stand-ins for srun and scontrol (the real cluster run is
tests/test_slurm.py's study test); the record and the states are the real code."""

import json
import os
import subprocess

import pytest

from ptune_dist.launcher.grid_arrays import scripts
from ptune_dist.launcher.grid_attempts import main as record_main
from ptune_dist.launcher.grid_attempts import record
from ptune_dist.launcher.grid_cells import cell_dir, state
from ptune_dist.study.cell_configs import resolve_study as prepare
from test_study_run import STUDY


def test_a_start_without_results_is_failed_unless_requeued(tmp_path):
    folder = tmp_path / "cell"
    folder.mkdir()
    assert state(folder) == "pending"
    record(folder, "start")
    assert state(folder) == "failed"  # started, no results, no lock: it ended without finishing
    record(folder, "requeued")
    assert state(folder) == "pending"  # stopped at a checkpoint, waiting for its requeued job
    assert record(folder, "start") == {"starts": 2}
    assert record(folder, "1") == {"starts": 2, "last_rc": 1} and state(folder) == "failed"


def test_the_record_command_checks_its_arguments_and_never_fails_the_job(tmp_path, capsys):
    assert record_main(["x/launch.yaml"]) == 2 and "usage" in capsys.readouterr().err
    assert record_main([str(tmp_path / "gone" / "launch.yaml"), "start"]) == 0  # the folder is missing
    assert "attempt not recorded" in capsys.readouterr().err


@pytest.mark.parametrize(
    "srun_rc, expected, state_after", [(3, 3, "failed"), (99, "requeued", "pending"), (0, 0, "failed")]
)
def test_the_array_script_records_each_start_and_how_it_ended(srun_rc, expected, state_after, tmp_path, monkeypatch):
    import ptune_dist.study.cell_configs as prepare_mod

    monkeypatch.setattr(prepare_mod, "check_cells", lambda *a: None)  # the cells' pre-load checks: test_study_precheck
    study = tmp_path / "study"
    cfg, study_dir, cells, configs = prepare([], [*STUDY, "launch.backend=slurm", f"output_dir={study}"])
    (_, listing, script_path, script), *_ = scripts(cfg, study_dir, cells, configs)
    listing_path = study / "slurm" / "array-0.txt"
    listing_path.parent.mkdir(parents=True, exist_ok=True)
    listing_path.write_text(listing)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f"#!/bin/sh\nexit {srun_rc}\n")  # the training job's outcome
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1" = show ] && echo localhost\nexit 0\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_ARRAY_TASK_ID": "1",
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "n1",
    }
    run = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == (0 if srun_rc == 99 else srun_rc), run.stderr
    second = cell_dir(study_dir, listing.splitlines()[1].split("/")[-2])  # line SLURM_ARRAY_TASK_ID + 1
    assert json.loads((second / "attempts.json").read_text()) == {"starts": 1, "last_rc": expected}
    assert state(second) == state_after  # exit 0 without results.json: the stand-in trained nothing
    others = [c for c in cells if cell_dir(study_dir, c["id"]) != second]
    assert all(not (cell_dir(study_dir, c["id"]) / "attempts.json").exists() for c in others)
