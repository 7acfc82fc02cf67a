"""One grid engine (launcher/grid_*.py) under `ptune sweep` and `ptune study`: both commands' local runs go
through the one queue with retries and attempt records, their cells are written and checked by the one cell
module, and no module of ptune_dist/study/ defines a function the launcher defines (no second engine)."""

import ast
import json
from pathlib import Path

import pytest

from ptune_dist.cli import main
from ptune_dist.launcher import grid_cells, grid_queue
from test_study_run import STUDY

ROOT = Path(__file__).parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.fixture
def queue_calls(monkeypatch):
    """The engine's queue and cell writer, observed: each call recorded, each cell's start recorded and ended
    without training (the queue itself, its attempts.json and its states run for real)."""
    import ptune_dist.launcher.local as local
    import ptune_dist.study.cell_configs as cell_configs

    calls = {"queue": [], "write_cells": [], "started": []}
    real_queue, real_write = grid_queue.run_queue, grid_cells.write_cells

    def queue(root, cells, retries, command="ptune"):
        calls["queue"].append((command, Path(root).name, len(cells), retries))
        return real_queue(root, cells, retries, command)

    def write(root, cells, configs):
        calls["write_cells"].append(Path(root).name)
        return real_write(root, cells, configs)

    def run(cfg, path):
        calls["started"].append(Path(path).parent)
        return 3  # a failed start: retried up to the grid's retries

    monkeypatch.setattr(grid_queue, "run_queue", queue)
    monkeypatch.setattr(grid_cells, "write_cells", write)
    monkeypatch.setattr(local, "run", run)
    monkeypatch.setattr(cell_configs, "check_cells", lambda cells, configs, backend: None)  # test_study_precheck
    for module in ("ptune_dist.launcher.sweep_folder", "ptune_dist.study.folder"):  # bound by name at import
        monkeypatch.setattr(f"{module}.write_cells", write)
    return calls


def test_sweep_and_study_run_their_cells_through_the_one_queue_with_retries(tmp_path, queue_calls):
    assert main(["sweep", QUICKSTART, f"output_dir={tmp_path / 'sw'}", "--grid", "train.seed=0,1"]) == 1
    assert main(["study", *STUDY, "study.retries=1", f"output_dir={tmp_path / 'st'}"]) == 1
    assert [c[:2] for c in queue_calls["queue"]] == [("ptune sweep", "sw"), ("ptune study", "st")]
    assert queue_calls["write_cells"] == ["sw", "st"]
    sweep_cells = [p for p in queue_calls["started"] if p.parent.parent.name == "sw"]
    study_cells = [p for p in queue_calls["started"] if p.parent.parent.name == "st"]
    assert len(sweep_cells) == 2 and len(study_cells) == 2 * queue_calls["queue"][1][2]  # the study retried once
    for cell in sweep_cells:  # the same attempt record, the same state, in both grids
        assert json.loads((cell / "attempts.json").read_text()) == {"starts": 1, "last_rc": 3}
        assert grid_cells.state(cell) == "failed"
    for cell in study_cells:
        assert json.loads((cell / "attempts.json").read_text()) == {"starts": 2, "last_rc": 3}
        assert grid_cells.state(cell) == "failed"


def defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}


def test_no_study_module_defines_what_the_grid_engine_defines():
    grids = [*(ROOT / "launcher").glob("grid_*.py"), *(ROOT / "launcher").glob("sweep*.py")]
    engine = {name: p.name for p in sorted(grids) for name in defined(p)}
    for module in sorted((ROOT / "ptune_dist" / "study").glob("*.py")):
        twice = sorted(n for n in defined(module) if n in engine and not n.startswith("_"))
        assert not twice, f"{module.name} defines {twice}, which launcher/{engine[twice[0]]} defines"
    # a module that defines nothing holds no second copy (study/record.py: the old array scripts' command name)
    names = [
        p.stem
        for folder in (ROOT / "ptune_dist" / "study", ROOT / "launcher")
        for p in folder.glob("*.py")
        if defined(p)
    ]
    assert not {"prepare", "gather", "record", "queue", "arrays"} & set(names)
