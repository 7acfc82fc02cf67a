"""DeepSpeed ZeRO 0-3 on 2 CPU ranks (gloo): the same loss curve as one process with the same global
batch; ZeRO-3 shards the frozen base while it loads; a checkpoint saved by 2 ranks resumes on 1 rank
and on 2 ranks and continues identically; offload settings train too."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import read_jsonl
from ptune_dist.config import load_config
from ptune_dist.train.loop import train

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
COMMON = [
    "method.num_virtual_tokens=4",
    "data.max_train_examples=32",
    "data.max_eval_examples=8",
    "train.steps=4",
    "train.save_every=2",
    "train.keep_checkpoints=5",
    "train.log_every=1",
    "train.progress_bar=false",
    "train.eval_baseline=false",
    "train.tensorboard=false",
]
METHODS = {"prompt_tuning": [], "p_tuning_v2": ["method.name=p_tuning_v2", "method.init=random", "train.lr=0.01"]}


def torchrun(nproc: int, out: Path, args: list) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "ptune_dist.cli",
            "train",
            QUICKSTART,
            f"output_dir={out}",
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def losses(out: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r and "split" not in r}


def assert_same_curve(got: dict, want: dict, tol: float = 5e-5) -> None:
    assert list(got) == list(want), (got, want)
    for step in want:
        assert abs(got[step] - want[step]) <= tol * max(1.0, abs(want[step])), (step, got, want)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The single-process reference (plain engine), global batch 8, per method."""
    out = {}
    for method, extra in METHODS.items():
        d = tmp_path_factory.mktemp(f"one-{method}")
        train(load_config([QUICKSTART], [f"output_dir={d}", "data.batch_size=8", *extra, *COMMON]))
        out[method] = d
    return out


def ds_args(stage: int, *extra) -> list:
    # stage 1 takes its global batch of 8 as 2 ranks x 2 micro-batches x 2 rows: DeepSpeed's accumulation sums
    # the micro-batches, each scaled once by train/loss_weights.py (scale_wrt_gas=False)
    batch = ["data.batch_size=2", "train.grad_accum=2"] if stage == 1 else ["data.batch_size=4"]
    return [*batch, "distributed.engine=deepspeed", f"distributed.zero_stage={stage}", *extra, *COMMON]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_ranks_match_one_process(stage, method, one_process, tmp_path):
    torchrun(2, tmp_path, ds_args(stage, *METHODS[method]))
    assert_same_curve(losses(tmp_path), losses(one_process[method]))
    final = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("split") == "eval"][-1]
    want = [r for r in read_jsonl(one_process[method] / "metrics.jsonl") if r.get("split") == "eval"][-1]
    assert final["accuracy"] == want["accuracy"] and abs(final["loss"] - want["loss"]) < 2e-4 * max(1, want["loss"])
    held = next(r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "parameters")
    shares = [b / held["bytes_total"] for b in held["bytes_per_rank"]]
    if stage == 3:  # each rank holds about half of the model, the frozen base included
        assert all(abs(s - 0.5) < 0.02 for s in shares), shares
    else:
        assert shares == [1.0, 1.0]
    if stage == 3 and method == "prompt_tuning":
        resume_on_one_and_two_ranks(tmp_path, stage)


def resume_on_one_and_two_ranks(full: Path, stage: int) -> None:
    """From the 2-rank run's step-2 checkpoint: 2 ranks continue exactly, 1 rank (plain engine, global
    batch 8) to floating-point tolerance."""
    runs = {}
    for name in ("two", "one"):
        d = full.parent / f"{full.name}-{name}"
        (d / "checkpoints").mkdir(parents=True)
        shutil.copytree(full / "checkpoints" / "step-2", d / "checkpoints" / "step-2")
        runs[name] = d
    torchrun(2, runs["two"], ds_args(stage))
    train(load_config([QUICKSTART], [f"output_dir={runs['one']}", "data.batch_size=8", *COMMON]))
    want = {s: v for s, v in losses(full).items() if s > 2}
    assert losses(runs["two"]) == want
    assert_same_curve(losses(runs["one"]), want)
    w_full = load_file(full / "final" / "trainable.safetensors")
    for name in ("two", "one"):
        w = load_file(runs[name] / "final" / "trainable.safetensors")
        for k in w_full:
            assert (w[k] - w_full[k]).abs().max() < 1e-5, (name, k)


def test_resume_after_zero2_and_offload(tmp_path):
    """ZeRO-2 with the optimizer offloaded: trains like one process and resumes exactly on 2 ranks."""
    torchrun(2, tmp_path, ds_args(2, "distributed.offload_optimizer=true"))
    d = tmp_path.parent / f"{tmp_path.name}-two"
    (d / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "checkpoints" / "step-2", d / "checkpoints" / "step-2")
    torchrun(2, d, ds_args(2, "distributed.offload_optimizer=true"))
    assert losses(d) == {s: v for s, v in losses(tmp_path).items() if s > 2}


def test_deepspeed_launcher_starts_the_ranks(one_process, tmp_path):
    """`launch.launcher=deepspeed` (DeepSpeed's own launcher instead of torchrun) trains the same."""
    from ptune_dist.cli import main

    assert (
        main(
            [
                "launch",
                QUICKSTART,
                f"output_dir={tmp_path}",
                "launch.launcher=deepspeed",
                "launch.nproc_per_node=2",
                *ds_args(1),
            ]
        )
        == 0
    )
    assert_same_curve(losses(tmp_path), losses(one_process["prompt_tuning"]))


def test_mixed_tasks_under_zero3(tmp_path):
    """Two tasks in one run (32 + 4 examples), so a rank's rows often lack the task the other rank's rows
    have: ZeRO-3 must still gather and reduce the same parameters on both ranks (no hang) and match one
    process. 16 deep virtual tokens make each prompt larger than ZeRO-3's persistence threshold, so it
    is partitioned and every use of it is a collective."""
    from conftest import FIXTURES

    rte = str(FIXTURES / "superglue" / "rte.jsonl")
    tasks = [
        f"tasks=[{{name: support, preset: support}}, {{name: rte, preset: rte, train: '{rte}', eval: '{rte}'}}]",
        *METHODS["p_tuning_v2"],
        "method.num_virtual_tokens=16",
        "distributed.timeout_s=120",
    ]
    one = tmp_path / "one"
    train(load_config([QUICKSTART], [f"output_dir={one}", "data.batch_size=8", *COMMON, *tasks]))
    torchrun(2, tmp_path / "two", [*ds_args(3), *tasks])
    assert_same_curve(losses(tmp_path / "two"), losses(one))


def test_zero3_keeps_a_bfloat16_base_in_bfloat16(one_process, tmp_path):
    """zero.Init casts what it partitions to the dtype the DeepSpeed config enables: a bf16 base must
    stay bf16 (half the bytes of fp32), still split between the ranks."""
    torchrun(
        2,
        tmp_path,
        [*ds_args(3), "model.dtype=bfloat16", "train.steps=1", "train.save_every=0", "data.max_eval_examples=4"],
    )
    held = next(r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("event") == "parameters")
    fp32 = next(r for r in read_jsonl(one_process["prompt_tuning"] / "metrics.jsonl") if r.get("event") == "parameters")
    assert abs(held["bytes_total"] / fp32["bytes_total"] - 0.5) < 0.01, (held, fp32)
    assert all(abs(b / held["bytes_total"] - 0.5) < 0.02 for b in held["bytes_per_rank"]), held


def test_packed_mixed_tasks_under_zero3_match_one_process(tmp_path):
    """Packed rows (data.packing) of two tasks on 2 ranks under ZeRO-3: each rank's rows hold different numbers
    of sequences and tasks, yet the curve is one process's with the same global batch of rows (every sequence
    weighs the same: train/loss_weights.py), and the packed evaluation runs on both ranks."""
    from conftest import FIXTURES

    rte = str(FIXTURES / "superglue" / "rte.jsonl")
    tasks = [
        f"tasks=[{{name: support, preset: support}}, {{name: rte, preset: rte, train: '{rte}', eval: '{rte}'}}]",
        *METHODS["p_tuning_v2"],
        "method.num_virtual_tokens=16",
        "distributed.timeout_s=120",
        "data.packing=true",
        "data.max_length=192",
        "train.steps=2",
        "data.max_eval_examples=4",
    ]
    one = tmp_path / "one"
    train(load_config([QUICKSTART], [f"output_dir={one}", "data.batch_size=2", *COMMON, *tasks]))
    torchrun(
        2,
        tmp_path / "two",
        ["data.batch_size=1", "distributed.engine=deepspeed", "distributed.zero_stage=3", *COMMON, *tasks],
    )
    assert_same_curve(losses(tmp_path / "two"), losses(one))
    final = [r for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if r.get("split") == "eval"]
    want = [r for r in read_jsonl(one / "metrics.jsonl") if r.get("split") == "eval"]
    assert [(r["task"], r["accuracy"]) for r in final[-2:]] == [(r["task"], r["accuracy"]) for r in want[-2:]]
