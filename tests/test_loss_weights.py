"""Every target of an update counts the same (train/loss_weights.py): the counts match what the objectives
average over, padded or packed, and an update split over micro-batches (or ranks: tests/test_deepspeed.py)
follows the same curve as one big batch where batches hold different numbers of targets."""

import pytest
import torch

from conftest import FIXTURES, MINI, session
from ptune_dist.config import load_config
from ptune_dist.data.collate import collate
from ptune_dist.data.host import describe
from ptune_dist.data.packing import collate_packed
from ptune_dist.train.loop import train
from ptune_dist.train.loss_weights import loss_weights, share
from ptune_dist.train.metrics_file import read_metrics

GENERATION = ["tasks.0.type=generation", f"tasks.0.train={FIXTURES}/instructions.jsonl"]


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and "split" not in r]


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_host_counts_are_what_the_objective_averages_over(task, smol):
    """HostInfo.targets, read from the CPU batch (data/host.py), is the count the loss is the mean over."""
    overrides = GENERATION if task == "generation" else ["tasks.0.preset=support"]
    s = session(
        [*overrides, "method.name=prompt_tuning", "method.num_virtual_tokens=4", "data.max_train_examples=5"], base=smol
    )
    s.model.eval()
    examples = s.tasks[0].train[:5]
    for batch in (
        collate(examples, s.pad_id, "right"),
        collate(examples, s.pad_id, "left"),
        collate_packed([examples[:3], examples[3:]], s.pad_id),
    ):
        with torch.no_grad():
            assert describe(batch, [task])["host"].targets == s.model(batch).count


def test_weights_are_one_where_counts_are_equal_and_sum_to_the_micro_batches():
    assert loss_weights([7, 7, 7], 1) == [1.0, 1.0, 1.0]
    got = loss_weights([1, 3], 1)
    assert got == [0.5, 1.5]  # mean of (w * per-batch mean) = (1 * m1 + 3 * m3) / 4: the mean over all 4 targets


def test_shares_of_summed_losses_add_up_to_the_mean_over_every_target():
    sums, counts = [torch.tensor(2.0), torch.tensor(9.0)], [1, 3]
    shares = [share(t, c, w, 2) for t, c, w in zip(sums, counts, loss_weights(counts, 1))]
    assert float(sum(shares)) == 11.0 / 4  # (2 + 9) / 4 targets, however they split into micro-batches
    # the operations of the releases before: mean, weight, then the accumulation (old checkpoints resume exactly)
    t = torch.tensor(0.7316, dtype=torch.float32)
    assert torch.equal(share(t, 3, 1.0, 3), (t / 3 * 1.0) / 3)
    assert float(share(torch.tensor(0.0), 0, 1.0, 1)) == 0.0  # nothing to predict: a zero loss stays zero


@pytest.mark.parametrize("case", ["generation", "packed"])
def test_accumulated_micro_batches_follow_one_big_batch(case, tmp_path, request):
    if case == "generation":  # label tokens per example vary
        common = [*GENERATION, "method.name=prompt_tuning", "data.max_train_examples=8"]
        big, small = ["data.batch_size=4"], ["data.batch_size=2", "train.grad_accum=2"]
    else:  # packed rows hold different numbers of sequences (8, 9, 8, 9, 6, 8)
        common = [
            f"model.name_or_path={MINI}",
            "method.name=p_tuning_v2",
            "tasks.0.preset=support",
            "tasks.0.scoring=head",
            "data.max_train_examples=40",
            "data.max_length=128",
            "data.packing=true",
            "model.dropout=0.0",
            "train.lr=0.01",
        ]
        big, small = ["data.batch_size=2"], ["data.batch_size=1", "train.grad_accum=2"]
    # 2 steps: 40 support examples pack into 5 rows, and the epoch's last row goes unused with 2 rows a step
    common += [
        "method.num_virtual_tokens=4",
        "train.steps=2",
        "train.log_every=1",
        "train.progress_bar=false",
        "train.tensorboard=false",
        "train.eval_baseline=false",
        "data.max_eval_examples=2",
    ]
    got = {}
    for name, extra in (("big", big), ("small", small)):
        train(load_config([], common + extra + [f"output_dir={tmp_path / name}"]))
        got[name] = losses(tmp_path / name)
    assert len(got["big"]) == 2
    for a, b in zip(got["small"], got["big"]):
        assert abs(a - b) < 1e-5 * max(1.0, abs(b)), got
