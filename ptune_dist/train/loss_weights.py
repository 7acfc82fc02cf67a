"""How much each micro-batch's loss counts in an update, so that the update follows the mean over every
target of the global batch, whatever the world size, grad_accum or packing.

Each objective's loss is a mean over its batch's targets (model/objectives.py): sequences for
classification, label tokens for generation and token classification. Averaging those means over ranks
and micro-batches, as data parallelism does, weighs a target by 1 / (its batch's count): fine when every
batch holds as many targets, wrong when they differ (packed rows hold different numbers of sequences;
generation's label tokens vary). So micro-batch i of rank r is weighted by

    w = count(i, r) * grad_accum * world / total

(total: the targets of the whole update, one all-reduce per update), which the engines' averaging over
ranks and micro-batches turns back into the mean over all targets. The counts come from the batches on
the CPU, before the forward. Where every batch holds as many targets, w is exactly 1.
"""

from __future__ import annotations

import torch

from ptune_dist.data.encode import IGNORE

from . import dist


def target_count(batch: dict, task_type: str) -> int:
    """The targets a batch's loss averages over (its objective's Output.count)."""
    if task_type == "classification":
        return len(batch["task_ids"])
    labels = batch["labels"]
    real = int((labels != IGNORE).sum())
    if task_type == "token_classification":
        return real
    if "seq_start" in batch:  # generation, packed: each sequence's first token is no one's next token
        return real - int((labels[batch["seq_row"], batch["seq_start"]] != IGNORE).sum())
    return int((labels[:, 1:] != IGNORE).sum())


def loss_weights(counts: list[int], world: int, device) -> list[torch.Tensor]:
    """One weight per micro-batch of this rank's update (see the module docstring); every rank calls it."""
    total = dist.all_reduce_sum(torch.tensor(float(sum(counts)), device=device)).clamp(min=1.0)
    return [float(c * len(counts) * world) / total for c in counts]  # exactly 1 where the counts are equal
