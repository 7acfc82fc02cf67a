"""Nothing assumes one process: 2 ranks under torchrun (gloo) train like 1 rank with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import read_jsonl
from ptune_dist.config import load_config
from ptune_dist.train.loop import train

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
ARGS = [
    "method.num_virtual_tokens=4",
    "data.max_train_examples=32",
    "data.max_eval_examples=20",
    "train.steps=3",
    "train.log_every=1",
    "train.progress_bar=false",
    "train.eval_baseline=false",
    "train.save_every=2",
    "train.tensorboard=false",
]


def test_two_ranks_match_one_rank(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "ptune_dist.cli",
            "train",
            str(QUICKSTART),
            f"output_dir={tmp_path / 'two'}",
            "data.batch_size=4",
            *ARGS,
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    train(load_config([QUICKSTART], [f"output_dir={tmp_path / 'one'}", "data.batch_size=8", *ARGS]))
    two, one = read_jsonl(tmp_path / "two" / "metrics.jsonl"), read_jsonl(tmp_path / "one" / "metrics.jsonl")
    loss = lambda recs: [r["loss"] for r in recs if "loss" in r and "split" not in r]  # noqa: E731
    assert len(loss(two)) == 3
    for a, b in zip(loss(two), loss(one)):
        assert abs(a - b) < 1e-5 * max(1.0, abs(b)), (loss(two), loss(one))
    ev = lambda recs: [r for r in recs if r.get("split") == "eval"][-1]  # noqa: E731
    assert ev(two)["examples"] == ev(one)["examples"] == 20
    assert abs(ev(two)["accuracy"] - ev(one)["accuracy"]) < 1e-9
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-2", "step-3"]
    assert next(r for r in two if r.get("event") == "device")["per_rank"] == ["cpu", "cpu"]
