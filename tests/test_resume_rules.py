"""What a resumed run takes from its checkpoint and what from the new config: settings of how long and
how watched are applied and recorded, settings that shape training are refused (naming each) before
anything is touched; a complete but damaged checkpoint is reported and the one before it used; the
baseline measured before step 1 survives into results.json. A checkpoint that does not fit its run (a
step other than its folder's, past train.steps, state.json values or optimizer tensors of the wrong type
or shape) is skipped by name or refused, and when none can be resumed the run is refused, not restarted."""

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import read_jsonl
from ptune_dist.checkpoint import atomic
from ptune_dist.checkpoint.read import CheckpointDamaged, read_training
from ptune_dist.config import load_config
from ptune_dist.data.loader import TrainLoader
from ptune_dist.errors import CheckpointError, ConfigError
from ptune_dist.train import loop

RUN = [
    "method.name=prompt_tuning",
    "method.num_virtual_tokens=2",
    "tasks.0.preset=support",
    "data.max_train_examples=8",
    "data.max_eval_examples=4",
    "data.batch_size=4",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "train.save_every=2",
    "train.keep_checkpoints=5",
    "train.eval_baseline=true",
]


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory):
    out = tmp_path_factory.mktemp("four")
    loop.train(load_config([], RUN + [f"output_dir={out}", "train.steps=4"]))
    return out


@pytest.fixture
def run(four_steps, tmp_path):
    shutil.copytree(four_steps, tmp_path / "run")
    return tmp_path / "run"


def resume(run, *extra):
    return loop.train(load_config([], RUN + [f"output_dir={run}", "train.steps=6", *extra]))


def remanifest(folder):
    """Rewrite the manifest so the folder is complete again: damage a checksum cannot see."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": atomic._sha256(p)}
        for p in folder.iterdir()
        if p.name != atomic.MANIFEST
    }
    (folder / atomic.MANIFEST).write_text(json.dumps({"files": files}))


def test_settings_that_shape_training_are_refused_naming_each(run):
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(ConfigError, match=r"train\.lr: 0\.03 in the checkpoint, 0\.1 now; train\.seed"):
        resume(run, "train.lr=0.1", "train.seed=3")
    with pytest.raises(CheckpointError, match="train.resume=never, but .* holds an earlier run .*step-4"):
        resume(run, "train.resume=never")  # a fresh start would prune the earlier run's checkpoints
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_length_and_watching_are_applied_and_recorded_and_the_baseline_survives(run):
    baseline = json.loads((run / "results.json").read_text())["baseline"]
    resume(run, "train.eval_every=1")
    changed = [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "config_changed"]
    applied = changed[-1]["applied"]
    assert applied.pop("output_dir")[1] == str(run)  # the run was copied: a moved folder is fine too
    assert applied == {"train.eval_every": [0, 1], "train.steps": [4, 6]}
    assert json.loads((run / "results.json").read_text())["baseline"] == baseline


def damage_state(folder):
    s = json.loads((folder / "state.json").read_text())
    del s["scheduler"]
    (folder / "state.json").write_text(json.dumps(s))


def damage_weights(folder):
    w = load_file(folder / "trainable.safetensors")
    save_file({k: torch.full_like(v, float("nan")) for k, v in w.items()}, folder / "trainable.safetensors")


@pytest.mark.parametrize("damage, words", [(damage_state, "key 'scheduler'"), (damage_weights, "NaN or inf")])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(run, capfd, damage, words):
    newest = run / "checkpoints" / "step-4"
    damage(newest)
    remanifest(newest)
    with pytest.raises(CheckpointError, match=f"is damaged: .*{words}"):
        resume(run, f"train.resume={newest}")  # named: no fallback
    resume(run)
    assert f"checkpoint {newest} is damaged: " in capfd.readouterr().err
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "resume"][-1] == 2


# issue 21: a checkpoint that does not fit its run is refused or skipped by one rule, never resumed and
# labelled with a step it never reached; an optimizer tensor of the wrong shape is named, not a traceback
def edit_state(folder, **values):
    s = json.loads((folder / "state.json").read_text())
    s.update(values)
    (folder / "state.json").write_text(json.dumps(s))
    remanifest(folder)


def files(run):
    """Every file of a run and its bytes (but the lock record, which each attempt rewrites)."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".ptune-lock"}


def shapes_of(folder):
    return {k: tuple(v.shape) for k, v in load_file(folder / "trainable.safetensors").items()}


@pytest.mark.parametrize(
    "step, words",
    [
        (3, "state.json step=3 differs from its folder's name step-4"),
        (10**12, "differs from its folder's name step-4"),
        (True, "step=True is not a whole number >= 0"),
        ("4", "step='4' is not a whole number >= 0"),
        (-1, "step=-1 is not a whole number >= 0"),
        (4.0, "step=4.0 is not"),
    ],
)
def test_a_step_that_is_not_its_folders_is_damaged(four_steps, tmp_path, step, words):
    folder = tmp_path / "step-4"
    shutil.copytree(four_steps / "checkpoints" / "step-4", folder)
    edit_state(folder, step=step)
    with pytest.raises(CheckpointDamaged, match=f"checkpoint {folder} is damaged: .*{re.escape(words)}"):
        read_training(folder, shapes_of(folder))
    absurd = folder.rename(tmp_path / f"step-{10**12}")  # named to agree: still past any run's length
    edit_state(absurd, step=10**12)
    with pytest.raises(CheckpointDamaged, match=f"step={10**12} is past any train.steps"):
        read_training(absurd, shapes_of(absurd))


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("scheduler", {"base_lrs": ["0.03"], "last_epoch": 4}, "base_lrs=['0.03']"),
        ("scheduler", {"base_lrs": [0.03], "last_epoch": None}, "last_epoch=None"),
        (
            "optimizer",
            {"param_groups": [{"lr": "0.1", "params": ["prompts.default.embedding"]}], "scalars": {}},
            "lr='0.1'",
        ),
        ("optimizer", {"param_groups": [{"params": "prompts.default.embedding"}], "scalars": {}}, "params='prompts"),
    ],
)
def test_state_json_fields_are_checked_with_their_type(four_steps, tmp_path, field, value, words):
    folder = tmp_path / "step-4"
    shutil.copytree(four_steps / "checkpoints" / "step-4", folder)
    edit_state(folder, **{field: value})
    with pytest.raises(CheckpointDamaged, match=re.escape(words)):
        read_training(folder, shapes_of(folder))


@pytest.mark.parametrize(
    "state, words",
    [
        ({"epoch": "1", "position": 1}, "loader.epoch='1' is not a whole number >= 0"),
        ({"epoch": 1, "position": -2}, "loader.position=-2"),
        ({"epoch": 1, "position": 3}, "loader.position=3"),
        ({"epoch": None, "position": 1}, "loader.epoch=None"),
        ({"epoch": 1, "position": True}, "position=True"),
    ],
)
def test_the_loader_checks_its_state_from_the_checkpoint(state, words):
    """The loader's own state, read back (a ValueError the checkpointer names with its folder)."""
    loader = TrainLoader([None] * 8, batch_size=4, seed=0, pad_id=0, padding_side="right")
    with pytest.raises(ValueError, match=re.escape(words)):
        loader.load_state_dict({"global_batch": 4, "examples": 8, "seed": 0, **state})
    loader.load_state_dict({"global_batch": 4, "examples": 8, "seed": 0, "epoch": 3, "position": 2})
    assert (loader.epoch, loader.position) == (3, 2)


@pytest.mark.parametrize(
    "slot, tensor, words",
    [
        (
            "exp_avg",
            torch.zeros(1, 576),
            "state.prompts.default.embedding.exp_avg is torch.float32 (1, 576), expected "
            "a float tensor of shape (2, 576)",
        ),
        ("exp_avg_sq", torch.zeros(()), "exp_avg_sq is torch.float32 (), expected a float tensor of shape (2, 576)"),
        ("exp_avg", torch.zeros(2, 576, dtype=torch.int64), "exp_avg is torch.int64 (2, 576)"),
        ("step", torch.zeros(2), "step is torch.float32 (2,), expected a float tensor of shape ()"),
    ],
)
def test_an_optimizer_tensor_of_the_wrong_shape_is_named(four_steps, tmp_path, slot, tensor, words):
    folder = tmp_path / "step-4"
    shutil.copytree(four_steps / "checkpoints" / "step-4", folder)
    opt = load_file(folder / "optimizer.safetensors")
    opt[f"state.prompts.default.embedding.{slot}"] = tensor
    save_file(opt, folder / "optimizer.safetensors")
    remanifest(folder)
    with pytest.raises(
        CheckpointDamaged, match=f"checkpoint {folder} is damaged: optimizer.safetensors tensor .*{re.escape(words)}"
    ):
        read_training(folder, shapes_of(folder))


def test_a_misfit_checkpoint_is_skipped_by_name_then_the_run_refused_when_none_is_left(run, capfd):
    newest, older = run / "checkpoints" / "step-4", run / "checkpoints" / "step-2"
    opt = load_file(newest / "optimizer.safetensors")
    opt["state.prompts.default.embedding.exp_avg"] = opt["state.prompts.default.embedding.exp_avg"][:1]
    save_file(opt, newest / "optimizer.safetensors")
    remanifest(newest)
    with pytest.raises(
        CheckpointError,
        match=f"checkpoint {newest} is damaged: .*exp_avg is torch.float32 "
        r"\(1, 576\)",
    ):
        resume(run, f"train.resume={newest}")  # named: its error, before a step is taken
    edit_state(older, step=3)
    (run / "checkpoints" / "step-1").mkdir()  # a folder that never got its manifest
    before = files(run)
    with pytest.raises(CheckpointError) as e:
        resume(run)
    err = capfd.readouterr().err
    unfinished = run / "checkpoints" / "step-1"
    for folder, why in ((newest, "exp_avg is"), (older, "step=3 differs"), (unfinished, "manifest")):
        assert f"ptune: checkpoint {folder}" in err and why in err  # one line each, naming it
        assert why in str(e.value)
    assert f"{run / 'checkpoints'}: none of its 3 checkpoint(s) can be resumed" in str(e.value)
    assert f"move {run / 'checkpoints'} away" in str(e.value)
    assert files(run) == before  # nothing restarted from 0


def test_a_checkpoint_past_train_steps_is_refused_naming_both(run):
    """A run stopped after its step-4 checkpoint, before its final/ (which keep_trained.py guards)."""
    shutil.rmtree(run / "final")
    before = files(run)
    with pytest.raises(
        ConfigError,
        match=f"train.steps=3, but checkpoint {run / 'checkpoints' / 'step-4'} is at "
        "step 4: .*Set train.steps=4 or more",
    ):
        loop.train(load_config([], RUN + [f"output_dir={run}", "train.steps=3"]))
    assert files(run) == before
