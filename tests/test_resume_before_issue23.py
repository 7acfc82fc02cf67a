"""A checkpoint written before issue 23 (the method sections, the typed batch and the one loss normalisation)
resumes bit for bit: tests/fixtures/before_issue23/smol is a run crashed in step 5 by that code (its step-3
checkpoint, metrics.jsonl and config.yaml, which still lists every method's keys), beside the same run
uninterrupted (its losses and final prompt). Resuming with today's code must give the same losses and the same
final weights, bit for bit."""

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from ptune_dist.config import load_config
from ptune_dist.train import loop
from ptune_dist.train.metrics_file import read_metrics

OLD = Path(__file__).parent / "fixtures" / "before_issue23" / "smol"


def test_a_checkpoint_from_before_resumes_bit_for_bit(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(OLD / "run", run)
    args = json.loads((OLD / "args.json").read_text())
    loop.train(load_config([], [*args, "train.progress_bar=false", "train.tensorboard=false", f"output_dir={run}"]))
    losses = {
        str(r["step"]): r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r and "split" not in r
    }
    assert losses == json.loads((OLD / "uninterrupted_losses.json").read_text())
    want, got = load_file(OLD / "uninterrupted_final.safetensors"), load_file(run / "final" / "trainable.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
