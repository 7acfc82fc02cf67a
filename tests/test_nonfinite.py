"""A non-finite loss or gradient never becomes weights on disk: train.on_nonfinite=stop ends the run with
an error and leaves the newest checkpoint as it was; skip leaves that update out, logs it, and goes on;
too many skipped in a row still stop. Checkpoints with NaN weights are refused on write and on read."""

import math

import pytest
import torch

from conftest import read_jsonl
from ptune_dist.checkpoint import state
from ptune_dist.config import load_config
from ptune_dist.errors import CheckpointError, PtuneError
from ptune_dist.train import loop
from ptune_dist.train.engine import TorchEngine

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
]


def nan_on_calls(monkeypatch, calls):
    """The loss of these forward calls (1-based) turns NaN, as an fp16 overflow would."""
    real, seen = TorchEngine.forward, []

    def forward(self, batch):
        out = real(self, batch)
        seen.append(1)
        if len(seen) in calls:
            out.total = out.total * float("nan")
        return out

    monkeypatch.setattr(TorchEngine, "forward", forward)


def finite(folder):
    return not state.nonfinite(state.load_file(folder / "trainable.safetensors"))


def test_stop_ends_the_run_and_keeps_the_good_checkpoints(tmp_path, monkeypatch):
    nan_on_calls(monkeypatch, {3})
    cfg = load_config([], RUN + [f"output_dir={tmp_path}", "train.steps=6", "train.save_every=1"])
    with pytest.raises(PtuneError, match="step 3: the loss .* not finite.*on_nonfinite=skip"):
        loop.train(cfg)
    assert [p.name for _, p in state.step_dirs(tmp_path / "checkpoints")] == ["step-2", "step-1"]
    assert all(finite(p) for _, p in state.step_dirs(tmp_path / "checkpoints"))
    assert not (tmp_path / "final").exists() and not (tmp_path / "results.json").exists()


def test_skip_leaves_the_update_out_and_goes_on(tmp_path, monkeypatch):
    nan_on_calls(monkeypatch, {2})
    cfg = load_config([], RUN + [f"output_dir={tmp_path}", "train.steps=4", "train.on_nonfinite=skip"])
    loop.train(cfg)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    skipped = [r for r in records if r.get("event") == "skipped_step"]
    assert [(r["step"], r["step_loss"]) for r in skipped] == [(2, "nan")]
    train = {r["step"]: r for r in records if "loss" in r and "split" not in r}
    assert 2 not in train and all(math.isfinite(r["loss"]) for r in train.values())
    assert finite(tmp_path / "final")


def test_skip_still_stops_after_max_skipped_steps_in_a_row(tmp_path, monkeypatch):
    nan_on_calls(monkeypatch, set(range(2, 100)))
    cfg = load_config(
        [], RUN + [f"output_dir={tmp_path}", "train.steps=8", "train.on_nonfinite=skip", "train.max_skipped_steps=3"]
    )
    with pytest.raises(PtuneError, match="step 4: .*3 steps in a row"):
        loop.train(cfg)
    assert not (tmp_path / "final").exists()


def test_nan_weights_are_never_written_and_never_resumed(tmp_path):
    good = {"w": torch.ones(2)}
    state.save(tmp_path / "final", "", good)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        state.save(tmp_path / "final", "", {"w": torch.tensor([1.0, float("inf")])})
    assert torch.equal(state.load_file(tmp_path / "final" / "trainable.safetensors")["w"], good["w"])
    with pytest.raises(CheckpointError, match="damaged: 1 tensor"):
        state.check_fits(tmp_path, {"w": torch.tensor([float("nan"), 0.0])}, {"w": (2,)})
