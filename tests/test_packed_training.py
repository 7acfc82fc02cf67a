"""Training on packed rows (data.packing=true): a run learns as it does padded, and resumes exactly (the
packer's rows are rebuilt from the seed and the epoch, the loader's place comes from the checkpoint)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import MINI
from ptune_dist.config import load_config
from ptune_dist.train import loop
from ptune_dist.train.engine import TorchEngine
from ptune_dist.train.metrics_file import read_metrics

RUN = [
    f"model.name_or_path={MINI}",
    "method.name=p_tuning_v2",
    "method.num_virtual_tokens=4",
    "tasks.0.preset=support",
    "tasks.0.scoring=head",
    "data.max_train_examples=48",
    "data.max_eval_examples=8",
    "data.batch_size=2",
    "data.max_length=96",
    "data.packing=true",
    "train.steps=6",
    "train.lr=0.01",
    "model.dropout=0.1",
    "train.progress_bar=false",
    "train.tensorboard=false",
    "train.log_every=1",
]


class Crash(Exception):
    pass


def losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "split" not in r}


def test_packed_run_resumes_exactly(tmp_path, monkeypatch):
    loop.train(load_config([], RUN + [f"output_dir={tmp_path / 'a'}"]))
    real, calls = TorchEngine.step, []

    def step_or_crash(self, *args):
        calls.append(1)
        if len(calls) == 5:
            raise Crash("killed in step 5")
        return real(self, *args)

    monkeypatch.setattr(TorchEngine, "step", step_or_crash)
    b_args = RUN + [f"output_dir={tmp_path / 'b'}", "train.save_every=3"]
    with pytest.raises(Crash):
        loop.train(load_config([], b_args))
    monkeypatch.undo()
    saved = json.loads((tmp_path / "b" / "checkpoints" / "step-3" / "state.json").read_text())
    assert saved["loader"]["packing"] == 96 - 4  # rows of max_length less the deep prefix
    loop.train(load_config([], b_args))
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(b[step] == a[step] for step in (4, 5, 6)), (a, b)
    wa, wb = (load_file(tmp_path / run / "final" / "trainable.safetensors") for run in ("a", "b"))
    assert all(torch.equal(wa[name], wb[name]) for name in wa)


def test_packed_rows_carry_several_examples_and_fewer_padding_tokens(tmp_path):
    from ptune_dist.train.session import build_session

    s = build_session(load_config([], RUN + [f"output_dir={tmp_path}"]))
    batch = next(iter(loop.make_loader(s)))[0]  # the first update's first (only) micro-batch
    assert batch["input_ids"].shape == (2, 92)
    assert len(batch["seq_row"]) > 2  # more sequences than rows
    assert int(batch["attention_mask"].sum()) > 0.5 * batch["attention_mask"].numel()
