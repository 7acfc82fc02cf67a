"""`ptune sweep` and `ptune gather` lose nothing and say everything: a sweep folder is reused only by the
same sweep, nothing is written before every check has passed, a grid says each key and value once and
never how the sweep is launched, and damaged sweep files are named instead of crashing. No model is
trained: Slurm's commands are stand-ins, sweep folders are written by hand."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from ptune_dist.cli import main
from ptune_dist.errors import PtuneError
from ptune_dist.launcher import local, slurm, sweep

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")


@pytest.fixture
def sbatch(monkeypatch):
    """Slurm's commands, stood in for: `answers` is what each sbatch prints (an Exception: it fails);
    `calls` the commands run. Starting ranks on this machine fails the test."""
    state = {"answers": [], "calls": []}

    def run(cmd, *args, **kwargs):
        state["calls"].append(list(cmd))
        if Path(cmd[0]).name != "sbatch":
            pytest.fail(f"unexpected command {cmd!r}")
        answer = state["answers"].pop(0)
        if isinstance(answer, Exception):
            return subprocess.CompletedProcess(cmd, 1, stdout="", stderr=f"sbatch: error: {answer}")
        return subprocess.CompletedProcess(cmd, 0, stdout=f"{answer}\n", stderr="")

    monkeypatch.setattr(slurm.subprocess, "run", run)
    monkeypatch.setattr(local, "run", lambda *a, **k: pytest.fail("a cell started"))
    return state


def ptune(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def slurm_sweep(out, *more):
    return ["sweep", QUICKSTART, f"output_dir={out}", "launch.backend=slurm", *more]


def write_sweep(folder: Path, meta, results: dict) -> Path:
    """A sweep folder by hand: sweep.json (text or JSON) and each cell's results.json (text)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sweep.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    for cell, text in results.items():
        (folder / "cells" / cell).mkdir(parents=True, exist_ok=True)
        (folder / "cells" / cell / "results.json").write_text(text)
    return folder


GRID = {"train.lr": ["0.1", "0.2"]}
CELLS = [
    {"id": "000", "overrides": ["train.lr=0.1"], "dir": "cells/000"},
    {"id": "001", "overrides": ["train.lr=0.2"], "dir": "cells/001"},
]
DONE = '{"final": {"support": {"accuracy": 0.5}}}'


# -- 1. a folder holding another sweep ---------------------------------------------------------
def test_another_sweep_in_the_folder_is_refused_and_nothing_changes(tmp_path, sbatch, capsys):
    """The probe: cell 000 was lr=0.5 and has its results; a sweep over lr=0.1,0.2 into the same folder
    (whose sbatch would fail) used to overwrite sweep.json and cells/000/launch.yaml, and gather then
    labelled the 0.5 result as 0.1."""
    out = tmp_path / "sw"
    sbatch["answers"] = [RuntimeError("no partition")]
    code, err = ptune(capsys, *slurm_sweep(out, "--grid", "train.lr=0.5"))
    assert code == 2 and "nothing was submitted: the sweep in" in err
    (out / "cells" / "000" / "results.json").write_text('{"final": {"support": {"accuracy": 0.9}}}')
    before = snapshot(out)
    for backend in ("slurm", "local"):
        code, err = ptune(
            capsys, "sweep", QUICKSTART, f"output_dir={out}", f"launch.backend={backend}", "--grid", "train.lr=0.1,0.2"
        )
        assert code == 2 and "holds another sweep (train.lr: 0.5 there, 0.1,0.2 here)" in err, err
        assert "choose another output_dir" in err
    code, err = ptune(capsys, *slurm_sweep(out, "--grid", "train.seed=0,1"))
    assert code == 2 and "grid keys train.lr there, train.seed here" in err
    code, err = ptune(capsys, *slurm_sweep(out, "train.seed=3", "--grid", "train.lr=0.5", "--dry-run"))
    assert code == 2 and "cell 000 with other settings (train.seed: 0 there, 3 here)" in err, err
    assert snapshot(out) == before and len(sbatch["calls"]) == 1  # only the first sweep reached sbatch
    sweep.gather(out)
    assert (out / "results.csv").read_text().splitlines()[1].startswith("000,0.5,done,support,0.9")


def test_the_same_sweep_is_reused_and_resubmitted(tmp_path, sbatch, capsys):
    """Rerunning a sweep retries it: the same grid with settings a resumed run may change (train.steps)
    rewrites the cells and submits; a failed gathering job leaves the array job recorded and says so."""
    out = tmp_path / "sw"
    sbatch["answers"] = ["11", "12"]
    assert ptune(capsys, *slurm_sweep(out, "train.steps=5", "--grid", "train.seed=0,1"))[0] == 0
    (out / "cells" / "000" / "results.json").write_text(DONE)
    sbatch["answers"] = ["21", RuntimeError("dependency refused")]
    code, err = ptune(capsys, *slurm_sweep(out, "train.steps=9", "--grid", "train.seed=0,1"))
    assert code == 2 and "dependency refused; the array job 21 was submitted and is recorded in" in err, err
    assert f"ptune gather {out}" in err
    record = json.loads((out / "slurm" / "job.json").read_text())
    assert record["job_id"] == "21" and "gather_job_id" not in record
    assert "steps: 9" in (out / "cells" / "001" / "launch.yaml").read_text()
    assert (out / "cells" / "000" / "results.json").read_text() == DONE


def test_a_failed_sbatch_leaves_a_complete_sweep_the_same_command_submits(tmp_path, sbatch, capsys):
    out = tmp_path / "sw"
    sbatch["answers"] = [RuntimeError("down")]
    code, err = ptune(capsys, *slurm_sweep(out, "--grid", "train.seed=0,1"))
    assert code == 2 and "the same command submits it" in err
    meta = json.loads((out / "sweep.json").read_text())
    assert [c["id"] for c in meta["cells"]] == ["000", "001"]
    assert all((Path(c["dir"]) / "launch.yaml").is_file() for c in meta["cells"])
    assert not (out / "slurm" / "job.json").exists()
    sbatch["answers"] = ["31", "32"]
    assert ptune(capsys, *slurm_sweep(out, "--grid", "train.seed=0,1"))[0] == 0
    assert json.loads((out / "slurm" / "job.json").read_text())["gather_job_id"] == "32"


@pytest.mark.parametrize("held", ["cells/000/launch.yaml", "results.csv", "results.md"])
def test_a_folder_with_sweep_files_but_no_sweep_json_is_refused(held, tmp_path, sbatch, capsys):
    out = tmp_path / "sw"
    (out / held).parent.mkdir(parents=True)
    (out / held).write_text("mine")
    code, err = ptune(capsys, *slurm_sweep(out, "--grid", "train.seed=0,1"))
    assert code == 2 and f"holds {held.split('/')[0]}: files ptune sweep did not create" in err, err
    assert snapshot(out) == {held: b"mine"} and sbatch["calls"] == []


def test_a_job_record_of_another_run_is_kept(tmp_path, sbatch, capsys):
    """Two submissions sharing launch.log_dir: the second would replace the first's job.json."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "job.json").write_text(json.dumps({"kind": "train", "job_id": "5", "output_dir": str(tmp_path / "run")}))
    code, err = ptune(capsys, *slurm_sweep(tmp_path / "sw", f"launch.log_dir={logs}", "--grid", "train.seed=0,1"))
    assert code == 2 and "records the train job of output_dir=" in err and "set launch.log_dir to another folder" in err
    assert not (tmp_path / "sw").exists() and sbatch["calls"] == []


def test_a_bad_gpu_request_is_refused_before_the_sweep_is_written(tmp_path, sbatch, capsys):
    code, err = ptune(capsys, *slurm_sweep(tmp_path / "sw", "launch.gpus_per_node=2", "--grid", "train.seed=0,1"))
    assert code == 2 and "launch.gpus_per_node=2 must equal launch.nproc_per_node=1" in err
    assert not (tmp_path / "sw").exists()


# -- 2. output_dir that cannot be a folder -----------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["launch", QUICKSTART, "launch.backend=slurm"],
        ["launch", QUICKSTART, "launch.backend=slurm", "--dry-run"],
        ["launch", QUICKSTART],
        ["sweep", QUICKSTART, "launch.backend=slurm", "--grid", "train.lr=0.1,0.2"],
        ["sweep", QUICKSTART, "--grid", "train.lr=0.1,0.2", "--dry-run"],
    ],
)
@pytest.mark.parametrize("below", [False, True])
def test_output_dir_that_is_a_file_is_one_error(argv, below, tmp_path, sbatch, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("mine")
    target = "f/sub" if below else "f"
    code, err = ptune(capsys, *argv[:2], f"output_dir={target}", *argv[2:])
    expected = f"{tmp_path / 'f'}{'' if below else chr(39)} is a file, not a folder; choose another output_dir"
    assert code == 2 and f"output_dir='{tmp_path / target}'" in err and expected in err, err
    assert (tmp_path / "f").read_text() == "mine" and sbatch["calls"] == []


def test_launch_log_dir_that_is_a_file_is_one_error(tmp_path, sbatch, capsys):
    (tmp_path / "logs").write_text("mine")
    code, err = ptune(
        capsys,
        "launch",
        QUICKSTART,
        "launch.backend=slurm",
        f"output_dir={tmp_path / 'run'}",
        f"launch.log_dir={tmp_path / 'logs'}",
    )
    assert code == 2 and "launch.log_dir=" in err and "is a file, not a folder" in err, err
    assert not (tmp_path / "run").exists() and sbatch["calls"] == []


# -- 3. gather over damaged files --------------------------------------------------------------
@pytest.mark.parametrize(
    "meta, problem",
    [
        ("[]", "expected a JSON object with grid and cells"),
        ('{"cells": []', "no readable sweep.json (JSONDecodeError)"),
        ({"cells": CELLS}, '"grid" is not'),
        ({"grid": {"train.lr": "0.1"}, "cells": CELLS}, '"grid" is not'),
        ({"grid": GRID, "cells": {}}, '"cells" is not a list'),
        ({"grid": GRID, "cells": [{"id": "000", "dir": "cells/000"}]}, 'cells[0]: "overrides" is not a list'),
        (
            {"grid": GRID, "cells": [{"id": "000", "overrides": ["train.seed=1"], "dir": "cells/000"}]},
            "cells[0]: overrides ['train.seed=1'] do not set each of the grid's keys (train.lr) once",
        ),
        (
            {"grid": GRID, "cells": [{"id": "000", "overrides": ["train.lr=0.5"], "dir": "cells/000"}]},
            "cells[0]: train.lr=0.5 is not one of the grid's values",
        ),
        ({"grid": GRID, "cells": [CELLS[0], CELLS[0]]}, "two cells with one id"),
        ({"grid": GRID, "cells": [{"overrides": ["train.lr=0.1"], "dir": "cells/000"}]}, 'cells[0]: no "id"'),
    ],
)
def test_a_damaged_sweep_json_is_one_error_naming_it(meta, problem, tmp_path, capsys):
    folder = write_sweep(tmp_path / "sw", meta, {"000": DONE})
    code, err = ptune(capsys, "gather", folder)
    assert code == 2 and problem in err and str(folder) in err, err
    assert not (folder / "results.csv").exists()


@pytest.mark.parametrize(
    "text, problem",
    [
        ('{"final": [1, 2]}', '"final" is not {"task": {"metric": value}}'),
        ("[1]", "not a JSON object"),
        ('{"final": {}}', '"final" is not'),
        ('{"final": {"support": 1}}', '"final" is not'),
        ('{"final": {"support": {"accuracy": 1}}, "baseline": [0]}', '"baseline" is not'),
        ('{"final": ', "not readable as JSON (JSONDecodeError)"),
    ],
)
def test_a_damaged_cell_is_a_damaged_row_and_the_others_are_gathered(text, problem, tmp_path, capsys):
    folder = write_sweep(tmp_path / "sw", {"grid": GRID, "cells": CELLS}, {"000": text, "001": DONE})
    code, err = ptune(capsys, "gather", folder)
    assert code == 0 and f"cell 000: {folder / 'cells' / '000' / 'results.json'}: {problem}" in err, err
    rows = (folder / "results.csv").read_text().splitlines()
    assert rows[0] == "cell,train.lr,status,task,accuracy,note"
    assert rows[1].startswith("000,0.1,damaged,,,") and problem.replace('"', '""') in rows[1]
    assert rows[2] == "001,0.2,done,support,0.5,"
    assert "| 000 | 0.1 | damaged |" in (folder / "results.md").read_text()


def test_a_table_that_cannot_be_written_is_one_error(tmp_path, capsys):
    folder = write_sweep(tmp_path / "sw", {"grid": GRID, "cells": CELLS}, {"000": DONE})
    (folder / "results.md").mkdir()
    code, err = ptune(capsys, "gather", folder)
    assert code == 2 and f"{folder / 'results.md'} is a folder, not a file; move it away" in err, err
    assert not (folder / "results.csv").exists()  # both tables, or neither


# -- 4. the grid -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "grid, message",
    [
        (["train.lr=0.1,0.2", "train.lr=0.3"], "--grid train.lr=... is given twice"),
        (["train.lr=0.1,0.1"], "sweep.grid.train.lr: '0.1' given twice"),
        (["train.lr=0.1,0.10"], "sweep cells 000 (train.lr=0.1) and 001 (train.lr=0.10) are the same run"),
        (["train.lr=0.1,"], "sweep.grid.train.lr='0.1,': an empty value"),
        (
            ["launch.backend=local,slurm"],
            "sweep.grid.launch.backend: a grid varies what each cell trains, not how the sweep is started",
        ),
        (["launch.nproc_per_node=1,2"], "sweep.grid.launch.nproc_per_node: a grid varies"),
        (["output_dir=a,b"], "sweep.grid.output_dir: not a per-cell setting"),
    ],
)
@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_grid_mistakes_are_refused_on_either_backend(grid, message, backend, tmp_path, sbatch):
    with pytest.raises(PtuneError, match=re.escape(message)):
        sweep.prepare([QUICKSTART], [f"output_dir={tmp_path / 'sw'}", f"launch.backend={backend}"], grid)
    assert not (tmp_path / "sw").exists()


def test_a_grid_key_from_the_config_is_replaced_by_the_command_line(tmp_path):
    """sweep.grid in a config file is a default: --grid for its key replaces it (a key given twice is
    only refused among the --grid options)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sweep:\n  grid:\n    train.seed: [0, 1]\n")
    _, _, cells = sweep.prepare(
        [QUICKSTART, str(cfg)], [f"output_dir={tmp_path / 'sw'}"], ["train.seed=5"], write=False
    )
    assert [c["overrides"] for c in cells] == [["train.seed=5"]]
