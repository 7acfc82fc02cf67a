"""The study folder over reruns and damage (ptune_dist/study/folder.py, rows.py, ensemble.py; launcher/grid_cells.py,
grid_attempts.py): a grid that
shrinks keeps its done cells and their rows, a regrown grid finds them; what is read back (study.json cells,
attempts.json, results.json, ensemble records) is checked, and a damaged record is named, never a traceback.
Cells are made done by writing their results.json here (no training: the queue is replaced by a stand-in)."""

import csv
import json

import pytest

from conftest import MINI, SMOL
from ptune_dist.cli import main
from ptune_dist.errors import PtuneError
from ptune_dist.launcher.grid_attempts import attempts, record
from ptune_dist.launcher.grid_cells import cell_dir, state
from ptune_dist.study import ensemble as ensemble_mod
from ptune_dist.study import folder as folder_mod
from ptune_dist.study.folder import read_cells
from test_study_run import STUDY

RESULTS = {"final": {"support": {"accuracy": 0.75, "macro_f1": 0.5}}, "parameters": {"base": 1000, "trained": 4}}
MINI_L8 = "all-minilm-l6-v2__prompt_tuning__L8-random__support__s0"
SMOL_L4 = "smollm2-135m-instruct__prompt_tuning__L4-random__support__s0"


@pytest.fixture
def no_runs(monkeypatch):
    """`ptune study` (local) without training: the queue runs nothing, the pre-load checks are skipped
    (precheck is tested on its own); everything else is the real command."""
    import ptune_dist.launcher.grid_queue as queue_mod
    import ptune_dist.study.cell_configs as prepare_mod

    monkeypatch.setattr(queue_mod, "run_queue", lambda study_dir, cells, retries, command="": [])
    monkeypatch.setattr(prepare_mod, "check_cells", lambda cells, configs, backend: None, raising=False)


def study(folder, *overrides) -> dict:
    assert main(["study", *STUDY, *overrides, f"output_dir={folder}"]) == 0
    return {c["id"]: c for c in json.loads((folder / "study.json").read_text())["cells"]}


def csv_rows(folder) -> dict:
    return {r["cell"]: r for r in csv.DictReader((folder / "results.csv").open())}


def make_done(folder, cell_id, results=RESULTS):
    (cell_dir(folder, cell_id) / "results.json").write_text(json.dumps(results))


def test_a_shrunk_grid_keeps_its_done_cells_and_a_regrown_grid_finds_them(tmp_path, no_runs):
    folder = tmp_path / "study"
    full = study(folder)
    assert len(full) == 6 and full[SMOL_L4]["parts"] == ["main", "length", "init"]
    make_done(folder, MINI_L8)
    make_done(folder, SMOL_L4)

    small = study(folder, f"study.models=[{SMOL}]", "study.prompt_lengths=[8]")
    # the new grid's three cells, then the done cell of the model it left out; pending cells it left out are gone
    assert list(small)[:3] == [c for c in full if c.startswith("smollm2")] and list(small)[3:] == [MINI_L8]
    assert small[MINI_L8]["parts"] == ["length"] and small[SMOL_L4]["parts"] == ["main", "init", "length"]
    assert cell_dir(folder, "all-minilm-l6-v2__prompt_design__noprompt__support__s0").is_dir()  # its folder stays
    rows = csv_rows(folder)
    assert set(rows) == set(small)
    assert {c for c, r in rows.items() if r["status"] == "done"} == {MINI_L8, SMOL_L4}
    assert float(rows[MINI_L8]["score"]) == 0.75 and rows[MINI_L8]["parts"] == "length"
    assert "Cells: 2 done, 0 failed, 2 pending (4 in all)." in (folder / "report" / "report.md").read_text()

    regrown = study(folder)
    assert list(regrown) == list(full)  # the grid's own order
    assert regrown[MINI_L8]["parts"] == ["length"] and regrown[SMOL_L4]["parts"] == ["main", "length", "init"]
    rows = csv_rows(folder)
    assert set(rows) == set(full) and {c for c, r in rows.items() if r["status"] == "done"} == {MINI_L8, SMOL_L4}
    assert state(cell_dir(folder, MINI_L8)) == "done"


def write_cells(folder, *cells):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps({"cells": list(cells)}))


CELL = {
    "id": "m__prompt_tuning__L4-random__t__s0",
    "parts": ["main"],
    "model": "m",
    "method": "prompt_tuning",
    "prompt_length": 4,
    "init": "random",
    "task": "t",
    "seed": 0,
}


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"id": "../../other-run"}, "cell 0 (../../other-run): id='../../other-run' is not a plain folder name"),
        ({"id": "/etc"}, "id='/etc' is not a plain folder name"),
        ({"id": 7}, "cell 0: id=7 is not a plain folder name"),
        ({"seed": None}, "(m__prompt_tuning__L4-random__t__s0): 'seed' is missing"),
        ({"seed": "0"}, "seed='0' is not a whole number >= 0"),
        ({"prompt_length": -4}, "prompt_length=-4 is not a whole number >= 0"),
        ({"parts": "main"}, "parts='main' is not a list (str found)"),
        ({"init": "zeros"}, "init='zeros' is not one of '', 'random'"),
        ({"task_type": "regression"}, "task_type='regression' is not one of 'classification'"),
    ],
)
def test_study_json_cells_are_checked_by_key(tmp_path, change, fragment):
    cell = {k: v for k, v in {**CELL, **change}.items() if v is not None}
    write_cells(tmp_path, cell)
    with pytest.raises(PtuneError) as e:
        read_cells(tmp_path)
    assert "study.json: cell 0" in str(e.value) and fragment in str(e.value)
    assert str(e.value).endswith("run `ptune study CONFIG` with output_dir there to write it again")


def test_study_json_refuses_a_cell_listed_twice_and_fills_the_optional_keys(tmp_path):
    write_cells(tmp_path, CELL)
    (cell,) = read_cells(tmp_path)
    assert (cell["task_type"], cell["preset"]) == ("classification", "")
    write_cells(tmp_path, CELL, CELL)
    with pytest.raises(PtuneError, match="cell 1 .*is listed twice"):
        read_cells(tmp_path)


@pytest.mark.parametrize("text", ['{"starts": "3"}', '{"starts": 1, "last_rc": "boom"}', "[1]", "{", '{"starts": -1}'])
def test_a_damaged_attempts_record_is_named_read_as_no_start_and_written_again(tmp_path, capsys, text):
    getattr(folder_mod, "_said", set()).clear()  # damaged records are named once a process
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "attempts.json").write_text(text)
    assert attempts(cell) == {} and state(cell) == "pending"
    err = capsys.readouterr().err
    assert err.count("attempts.json") == 1 and "the cell's next start writes it again" in err  # said once
    assert record(cell, "start") == {"starts": 1}
    assert json.loads((cell / "attempts.json").read_text()) == {"starts": 1}


def test_a_done_cell_whose_results_lack_its_metric_is_a_damaged_row(tmp_path, no_runs, capsys):
    folder = tmp_path / "study"
    study(folder, f"study.models=[{SMOL}]", "study.methods=[prompt_tuning]", "study.prompt_lengths=[4]")
    make_done(folder, SMOL_L4, {"final": {"support": {"accuracy": "high"}}, "parameters": {"base": 10}})
    assert main(["study", "report", str(folder)]) == 0
    row = csv_rows(folder)[SMOL_L4]
    assert row["status"] == "damaged" and row["score"] == ""
    assert "results.json: final: accuracy='high' is not a finite number" in row["note"]
    assert f"cell {SMOL_L4}" in capsys.readouterr().err


ENSEMBLE = {
    "model": SMOL,
    "task": "support",
    "method": "prompt_tuning",
    "prompt_length": 4,
    "init": "random",
    "members": ["a", "b", "c"],
    "seeds": [0, 1, 2],
    "metric": "accuracy",
    "score": 0.8,
    "member_scores": [0.7, 0.75, 0.6],
}


@pytest.mark.parametrize(
    "text",
    [
        "{",
        json.dumps({**ENSEMBLE, "member_scores": []}),
        json.dumps({**ENSEMBLE, "score": "0.8"}),
        json.dumps({**ENSEMBLE, "members": "abc"}),
        json.dumps({k: v for k, v in ENSEMBLE.items() if k != "metric"}),
    ],
)
def test_a_damaged_ensemble_record_is_named_left_out_and_written_again(tmp_path, no_runs, capsys, monkeypatch, text):
    getattr(folder_mod, "_said", set()).clear()  # damaged records are named once a process
    folder = tmp_path / "study"
    study(
        folder,
        f"study.models=[{SMOL}]",
        "study.methods=[prompt_tuning]",
        "study.prompt_lengths=[4]",
        "study.seeds=[0, 1, 2]",
    )
    ids = [c["id"] for c in read_cells(folder)]
    for cell_id in ids:
        make_done(folder, cell_id)
    (folder / "ensembles").mkdir()
    (folder / "ensembles" / "whole.json").write_text(json.dumps({**ENSEMBLE, "model": MINI}))
    damaged = folder / "ensembles" / "smollm2-135m-instruct__support.json"
    damaged.write_text(text)
    capsys.readouterr()
    assert main(["study", "report", str(folder)]) == 0  # the report is written all the same
    err = capsys.readouterr().err
    assert str(damaged) in err and "left out of the report; `ptune study ensemble STUDY_DIR` writes it again" in err
    report = (folder / "report" / "report.md").read_text()
    assert "## Prompt ensembles" in report and MINI in report.split("## Prompt ensembles")[1]
    assert [r["model"] for r in ensemble_mod.read_ensembles(folder)] == [MINI]

    rerun = []  # `ptune study ensemble` computes the damaged group again (the base is not loaded here)
    monkeypatch.setattr(
        ensemble_mod,
        "run_group",
        lambda d, model, task, cells: rerun.append((model, task, [c["id"] for c in cells])) or damaged,
    )
    assert ensemble_mod.run_ensembles(folder) == [damaged]
    assert rerun == [(SMOL, "support", ids)]
    damaged.write_text(json.dumps({**ENSEMBLE, "members": ids}))  # whole and of these members: kept
    assert ensemble_mod.run_ensembles(folder) == []


def test_a_damaged_study_json_is_written_again_by_the_study_command(tmp_path, no_runs, capsys):
    """The remedy its error gives (`ptune study CONFIG` with output_dir there) works: the cells' configs are
    still checked, study.json is written again, done cells keep their results."""
    getattr(folder_mod, "_said", set()).clear()
    folder = tmp_path / "study"
    full = study(folder)
    make_done(folder, SMOL_L4)
    (folder / "study.json").write_text('{"cells": [')
    with pytest.raises(PtuneError, match="not a study description"):
        read_cells(folder)
    again = study(folder)
    assert list(again) == list(full) and state(cell_dir(folder, SMOL_L4)) == "done"
    assert "writing it again from this config" in capsys.readouterr().err
