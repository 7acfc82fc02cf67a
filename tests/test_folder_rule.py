"""What a command writes (issue 21, data loss): nothing through a symbolic link it did not make, nothing by a
read-only command, no folder holding someone else's files (checkpoint/folder_rule.py), no less trained final/
over a trained one (train/keep_trained.py), and no --force into a run a `ptune train` is writing now.

Every case checks that what was there is unchanged, byte for byte (a link's target included). No case trains:
a run is a final/ written from a fresh prompt table (only the base's config is read), and the refusals come
before any weight loads, except one that builds a session to reach the config.yaml write (a few seconds)."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SMOL
from ptune_dist.checkpoint import folder_rule, state
from ptune_dist.checkpoint.atomic import atomic_dir
from ptune_dist.checkpoint.checkpointer import Checkpointer
from ptune_dist.checkpoint.peft_format import Prompts, base_info
from ptune_dist.cli import main
from ptune_dist.config import load_config, to_yaml
from ptune_dist.errors import PtuneError
from ptune_dist.launcher.files import write_file
from ptune_dist.launcher.sweep_folder import write_sweep
from ptune_dist.study.folder import state as cell_state
from ptune_dist.study.report import write_report
from ptune_dist.train.keep_trained import refuse_less_trained
from ptune_dist.train.metrics_file import open_metrics
from ptune_dist.train.run_lock import NAME, RunLock, check_free

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
RUN = [f"model.name_or_path={SMOL}", "method.num_virtual_tokens=3", "tasks.0.preset=support"]
TINY = [
    "method.num_virtual_tokens=4",
    "data.max_train_examples=8",
    "data.max_eval_examples=4",
    "data.batch_size=4",
    "train.progress_bar=false",
    "train.eval_baseline=false",
    "train.tensorboard=false",
    "train.eval_every=0",
]
HOLD = (
    "import sys, time; from ptune_dist.train.run_lock import RunLock\n"
    "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)"
)
PRECIOUS = "someone else's file\n"


def snapshot(folder: Path) -> dict:
    """Every file and link below `folder`: content hash, or where a link points."""
    return {
        str(p.relative_to(folder)): f"-> {p.readlink()}"
        if p.is_symlink()
        else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


def make_run(folder: Path, step: int = 0) -> Path:
    cfg = load_config([], RUN + [f"output_dir={folder}"])
    state.save(folder / "final", to_yaml(cfg), state.trainable_state(Prompts(cfg, base_info(cfg))), step=step)
    return folder


@pytest.fixture
def target(tmp_path) -> Path:
    """A file outside every run, which a link inside one points to."""
    t = tmp_path / "elsewhere" / "precious.txt"
    t.parent.mkdir()
    t.write_text(PRECIOUS)
    return t


@pytest.fixture
def live(tmp_path):
    """A run folder with a final/ whose lock a running process holds (as a `ptune train` would)."""
    run = make_run(tmp_path / "parent" / "live")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield run
    proc.kill()
    proc.wait()


# -- links ------------------------------------------------------------------------------------------
def test_a_lock_that_is_a_link_is_refused_and_its_target_unchanged(tmp_path, target, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / NAME).symlink_to(target)
    assert main(["train", QUICKSTART, f"output_dir={out}", "train.steps=1", *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{out / NAME} is a symbolic link" in err and "Traceback" not in err
    assert target.read_text() == PRECIOUS and sorted(p.name for p in out.iterdir()) == [NAME]
    with pytest.raises(PtuneError, match="symbolic link"):
        RunLock(out).__enter__()
    assert target.read_text() == PRECIOUS


def test_probing_a_lock_writes_nothing_and_follows_no_link(tmp_path, target):
    """`ptune launch`'s check_free and `ptune study status`'s cell state only look at the lock."""
    empty, linked, recorded = tmp_path / "empty", tmp_path / "linked", tmp_path / "recorded"
    for folder in (empty, linked, recorded):
        folder.mkdir()
    (linked / NAME).symlink_to(target)
    (recorded / NAME).write_text('{"pid": 1, "host": "h", "started": 0, "command": "earlier"}')
    before = snapshot(tmp_path)
    for folder in (empty, linked, recorded, tmp_path / "missing"):
        check_free(folder)
        assert cell_state(folder) == "pending"
    assert snapshot(tmp_path) == before and target.read_text() == PRECIOUS


def test_a_held_lock_is_seen_by_the_probe_and_its_record_kept(live):
    before = (live / NAME).read_bytes()
    with pytest.raises(PtuneError, match="in use by another ptune train"):
        check_free(live)
    assert cell_state(live) == "running" and (live / NAME).read_bytes() == before


def _write_file(path):
    write_file(path, "new")


def _metrics(path):
    open_metrics(path, 0).close()


def _report(path):
    write_report([], path.parent)


def _final(path):
    with atomic_dir(path) as tmp:
        (tmp / "x").write_text("new")


def _checkpoints(path):
    Checkpointer(path, engine=None, loader=None, rng=None, config_yaml="", keep=1, is_main=True, barrier=lambda: None)


def _sweep_cells(path):
    write_sweep(path.parent, {}, [{"id": "000", "dir": str(path / "000")}], [load_config([], RUN)])


@pytest.mark.parametrize(
    "write, name, to_folder",
    [
        (_write_file, "launch.yaml", False),  # launcher/files.py: launch.yaml, sweep.json, job records, results tables
        (_metrics, "metrics.jsonl", False),  # train/metrics_file.py
        (_report, "report.md", False),  # study/report.py
        (_final, "final", True),  # checkpoint/atomic.py: final/, checkpoints/step-N
        (_checkpoints, "checkpoints", True),  # checkpoint/checkpointer.py: saving and pruning there
        (_sweep_cells, "cells", True),  # launcher/sweep_folder.py: the cells' launch.yaml
    ],
    ids=["write_file", "metrics", "report", "atomic_dir", "checkpointer", "sweep_cells"],
)
def test_no_write_follows_a_link(write, name, to_folder, tmp_path, target):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).symlink_to(target.parent if to_folder else target)
    before = snapshot(tmp_path)
    with pytest.raises(PtuneError, match=f"{name} is a symbolic link"):
        write(out / name)
    assert snapshot(tmp_path) == before and target.read_text() == PRECIOUS


def test_train_refuses_a_config_yaml_link_in_its_own_run(tmp_path, target, capsys):
    """A run folder of its own (final/), its config.yaml a link: the session is built, the write refused."""
    out = make_run(tmp_path / "run")
    (out / "config.yaml").symlink_to(target)
    assert main(["train", QUICKSTART, f"output_dir={out}", "train.steps=0", *TINY, *RUN]) == 2
    assert "config.yaml is a symbolic link" in capsys.readouterr().err
    assert target.read_text() == PRECIOUS


# -- the folder rule ----------------------------------------------------------------------------------
def test_a_refused_folder_is_left_as_it_was(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("config.yaml", "results.json", "results.csv"):
        (mine / name).write_text(PRECIOUS)
    before = snapshot(tmp_path)
    for argv, command in [
        (["train", QUICKSTART, "train.steps=1", *TINY], "ptune train"),
        (["sweep", QUICKSTART, "--grid", "train.seed=0,1"], "ptune sweep"),
        (["study", QUICKSTART, f"study.models=[{SMOL}]", "study.seeds=[0]"], "ptune study"),
    ]:
        assert main([*argv, f"output_dir={mine}"]) == 2
        err = capsys.readouterr().err
        assert f"holds config.yaml, results.csv, results.json: files {command} did not create" in err, err
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "files, kind, refused",
    [
        ({}, folder_rule.TRAIN, []),
        ({"launch.yaml": "x", ".ptune-lock": "", "slurm/job.json": "{}", "attempts.json": "{}"}, folder_rule.TRAIN, []),
        ({"final/manifest.json": "{}", "notes.txt": "x"}, folder_rule.TRAIN, []),  # its own run (or an import)
        ({"checkpoints/step-2/x": "x", "results.json": "{}"}, folder_rule.TRAIN, []),
        ({"config.yaml": "x", "metrics.jsonl": "{}", ".results.json.ab12cd34.tmp": ""}, folder_rule.TRAIN, []),
        ({"config.yaml": "x", "results.json": "{}"}, folder_rule.TRAIN, ["config.yaml", "results.json"]),
        ({"metrics.jsonl": "{}"}, folder_rule.TRAIN, []),  # a run killed before its config.yaml was written
        ({"results.json": "{}", ".git/HEAD": "x"}, folder_rule.TRAIN, [".git", "results.json"]),
        ({"study.json": "{}", "cells/000/launch.yaml": "x"}, folder_rule.TRAIN, ["cells", "study.json"]),
        ({"study.json": "{}", "notes.txt": "x"}, folder_rule.STUDY, []),
        ({"sweep.json": "{}", "cells/000/launch.yaml": "x"}, folder_rule.STUDY, ["cells", "sweep.json"]),
        ({"slurm/x.out": ""}, folder_rule.STUDY, []),
        ({"sweep.json": "{}", "results.csv": "x"}, folder_rule.SWEEP, []),
        ({"results.md": "x"}, folder_rule.SWEEP, ["results.md"]),
    ],
)
def test_what_makes_a_folder_someone_elses(files, kind, refused, tmp_path):
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert folder_rule.foreign(tmp_path, kind) == refused
    assert folder_rule.foreign(tmp_path / "new", kind) == []


# -- evaluate only ------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, 3])
def test_a_less_trained_run_never_replaces_a_trained_final(steps, tmp_path, capsys):
    out = make_run(tmp_path / "run", step=5)
    (out / "results.json").write_text('{"final": {}}')
    before = snapshot(out)
    assert main(["train", QUICKSTART, f"output_dir={out}", f"train.steps={steps}", *TINY, *RUN]) == 2
    err = capsys.readouterr().err
    assert "holds a run trained to step 5" in err and f"`ptune eval {out}`" in err, err
    assert snapshot(out) == before
    refuse_less_trained(out, 5)  # as trained, or further: a resume
    refuse_less_trained(out, 6)


# -- --force and a live run -----------------------------------------------------------------------------
def test_force_never_reaches_into_a_live_run(live, tmp_path, capsys):
    run = make_run(tmp_path / "source")
    assert main(["export", str(run), "--out", str(tmp_path / "adapter")]) == 0
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"text": "hello"}\n')
    (live / "notes.txt").write_text(PRECIOUS)
    before = snapshot(tmp_path / "parent")
    for argv, words in [
        (["export", str(run), "--out", str(live), "--force"], "is a run that a ptune train is writing now"),
        (["export", str(run), "--out", str(live / "final"), "--force"], f"is inside {live}, a run"),
        (["export", str(run), "--out", str(live.parent), "--force"], f"holds {live}, a run"),
        (
            ["import", str(tmp_path / "adapter"), "--out", str(live), "--force", "tasks.0.preset=support"],
            "a ptune train is writing now",
        ),
        (
            ["predict", str(run), "--input", str(rows), "--output", str(live / "notes.txt"), "--force"],
            "a ptune train is writing now",
        ),
    ]:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and "--force never removes a running run" in err, err
        assert snapshot(tmp_path / "parent") == before
