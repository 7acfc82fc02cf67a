"""What a resumed run takes from its checkpoint and what from the new config: settings of how long and
how watched are applied and recorded, settings that shape training are refused (naming each) before
anything is touched; a complete but damaged checkpoint is reported and the one before it used; the
baseline measured before step 1 survives into results.json."""

import json
import shutil

import pytest
import torch
from conftest import read_jsonl
from safetensors.torch import load_file, save_file

from ptune_dist.checkpoint import atomic
from ptune_dist.config import load_config
from ptune_dist.errors import CheckpointError, ConfigError
from ptune_dist.train import loop

RUN = ["method.name=prompt_tuning", "method.num_virtual_tokens=2", "tasks.0.preset=support",
       "data.max_train_examples=8", "data.max_eval_examples=4", "data.batch_size=4", "train.progress_bar=false",
       "train.tensorboard=false", "train.log_every=1", "train.save_every=2", "train.keep_checkpoints=5",
       "train.eval_baseline=true"]


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
    files = {p.name: {"bytes": p.stat().st_size, "sha256": atomic._sha256(p)}
             for p in folder.iterdir() if p.name != atomic.MANIFEST}
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
