"""Checkpoints: exact resume after a crash, atomic writes, damaged checkpoints skipped or refused,
files with the umask's mode."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import MINI, read_jsonl
from ptune_dist.checkpoint import state
from ptune_dist.checkpoint.peft_format import Prompts, base_info, export_peft
from ptune_dist.config import load_config, to_yaml
from ptune_dist.errors import CheckpointError
from ptune_dist.train import loop
from ptune_dist.train.engine import TorchEngine
from ptune_dist.train.metrics_file import read_metrics

QUIET = ["train.progress_bar=false", "train.tensorboard=false", "train.log_every=1"]
RUNS = {
    # SmolLM2, prompt tuning, Adafactor, linear decay; 16 examples / batch 4 -> the run crosses an epoch
    "smol": [
        "method.name=prompt_tuning",
        "method.num_virtual_tokens=4",
        "tasks.0.preset=support",
        "data.max_train_examples=16",
        "data.max_eval_examples=8",
        "data.batch_size=4",
        "train.steps=6",
        "train.optimizer=adafactor",
        "train.lr=0.3",
        "train.warmup_steps=2",
    ],
    # MiniLM, P-tuning v2 + head, dropout 0.1 active: resume must restore the RNG to match
    "mini": [
        f"model.name_or_path={MINI}",
        "method.name=p_tuning_v2",
        "method.num_virtual_tokens=4",
        "tasks.0.preset=support",
        "tasks.0.scoring=head",
        "data.max_train_examples=16",
        "data.max_eval_examples=8",
        "data.batch_size=4",
        "train.steps=6",
        "train.lr=0.01",
        "train.schedule=cosine",
        "model.dropout=0.1",
    ],
}


class Crash(Exception):
    pass


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "split" not in r}


def crash_in_step(monkeypatch, step):
    """The process dies inside optimizer step `step` (after steps before it were logged)."""
    real, calls = TorchEngine.step, []

    def step_or_crash(self, *args):
        calls.append(1)
        if len(calls) == step:
            raise Crash(f"killed in step {step}")
        return real(self, *args)

    monkeypatch.setattr(TorchEngine, "step", step_or_crash)


@pytest.mark.parametrize("which", ["smol", "mini"])
def test_resume_continues_exactly(which, tmp_path, monkeypatch):
    base = RUNS[which] + QUIET
    loop.train(load_config([], base + [f"output_dir={tmp_path / 'a'}"]))
    crash_in_step(monkeypatch, 5)
    b_args = base + [f"output_dir={tmp_path / 'b'}", "train.save_every=3"]
    with pytest.raises(Crash):
        loop.train(load_config([], b_args))
    monkeypatch.undo()
    assert [p.name for _, p in state.step_dirs(tmp_path / "b" / "checkpoints")] == ["step-3"]
    assert list(losses(tmp_path / "b")) == [1, 2, 3, 4]  # step 4 was logged, then lost with the crash
    crashed = (tmp_path / "b" / "metrics.jsonl").read_bytes()
    loop.train(load_config([], b_args))
    assert (tmp_path / "b" / "metrics.jsonl").read_bytes().startswith(crashed)  # appended to, never rewritten
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "loss" in r and "split" not in r]
    assert list(a) == [1, 2, 3, 4, 5, 6] and steps == [1, 2, 3, 4, 5, 6]  # one history, no repeats
    for step in (4, 5, 6):
        assert b[step] == a[step], (step, a[step], b[step])
    wa = load_file(tmp_path / "a" / "final" / "trainable.safetensors")
    wb = load_file(tmp_path / "b" / "final" / "trainable.safetensors")
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    resumed = [r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if r.get("event") == "resume"]
    assert resumed == [{"time": resumed[0]["time"], "event": "resume", "step": 3}]


def test_crash_during_save_leaves_no_checkpoint(tmp_path, monkeypatch):
    args = RUNS["smol"] + QUIET + [f"output_dir={tmp_path}", "train.save_every=2", "train.steps=4"]
    real_save_file = state.save_file

    def failing(tensors, path, *a, **k):
        if "optimizer" in str(path) and "step-4" in str(path):
            real_save_file(tensors, path, *a, **k)
            path.write_bytes(path.read_bytes()[:100])  # half written
            raise OSError("disk full")
        return real_save_file(tensors, path, *a, **k)

    monkeypatch.setattr(state, "save_file", failing)
    with pytest.raises(OSError, match="disk full"):
        loop.train(load_config([], args))
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-2"]  # no step-4, no temporary folder left
    assert state.latest_complete(ckpts).name == "step-2"


def test_damaged_checkpoints_are_skipped_on_resume_and_refused_by_name(tmp_path):
    args = (
        RUNS["smol"]
        + QUIET
        + [f"output_dir={tmp_path}", "train.save_every=2", "train.steps=4", "train.keep_checkpoints=5"]
    )
    loop.train(load_config([], args))
    ckpts = tmp_path / "checkpoints"
    assert [p.name for _, p in state.step_dirs(ckpts)] == ["step-4", "step-2"]
    f = ckpts / "step-4" / "trainable.safetensors"
    f.write_bytes(f.read_bytes()[:-8])  # truncated by a crash outside our control
    (ckpts / "step-9").mkdir()  # a folder that never got its manifest
    (ckpts / "step-9" / "trainable.safetensors").write_bytes(b"junk")
    assert state.latest_complete(ckpts).name == "step-2"
    with pytest.raises(CheckpointError, match="damaged"):
        state.verify(ckpts / "step-4")
    with pytest.raises(CheckpointError, match="manifest"):
        state.load_weights(ckpts / "step-9", None)
    shutil.rmtree(ckpts / "step-9")


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_checkpoint_final_and_export_files_take_the_umask_mode(tmp_path, mask):
    """safetensors creates its files 0600; everything of a run gets 0o666 & ~umask instead."""
    quickstart = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    run, adapter = tmp_path / "run", tmp_path / "adapter"  # an export goes outside the run it reads
    cfg = load_config([quickstart], ["method.num_virtual_tokens=4", f"output_dir={run}"])
    weights = {k: v.detach() for k, v in Prompts(cfg, base_info(cfg)).state_dict().items()}
    old = os.umask(mask)
    try:
        state.save(
            run / "checkpoints" / "step-1",
            to_yaml(cfg),
            weights,
            step=1,
            optimizer=({"0.exp_avg": torch.zeros(2)}, {"param_groups": []}),
            training={"scheduler": {}, "loader": {}},
        )
        state.save(run / "final", to_yaml(cfg), weights, step=1)
        export_peft(run / "final", adapter)
    finally:
        os.umask(old)
    for folder in (run / "checkpoints" / "step-1", run / "final", adapter):
        modes = {p.name: p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}
        assert modes == {p.name: (0o777 if p.is_dir() else 0o666) & ~mask for p in [folder, *folder.rglob("*")]}
        assert any(name.endswith(".safetensors") for name in modes)
