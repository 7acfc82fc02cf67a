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
the CPU, before the forward (data/host.py: HostInfo.targets), and the total is summed over the ranks on the
host (the CPU side of the process group: gloo), so the weights are plain numbers and nothing waits for a GPU.
Where every batch holds as many targets, w is exactly 1.
"""

from __future__ import annotations

import torch

from . import dist


def loss_weights(counts: list[int], world: int) -> list[float]:
    """One weight per micro-batch of this rank's update (see the module docstring); every rank calls it."""
    total = float(sum(counts))
    if world > 1:  # a host tensor: reduced by gloo, never a device sync
        total = float(dist.all_reduce_sum(torch.tensor(total, dtype=torch.float64)))
    total = max(total, 1.0)
    return [c * len(counts) * world / total for c in counts]  # exactly 1 where the counts are equal
