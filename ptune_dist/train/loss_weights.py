"""The one place the training loss is normalised: how much each target counts in an update, so that the update
follows the mean over every target of the global batch, whatever the world size, grad_accum or packing.

The objectives return their loss summed over their batch's targets (model/objectives.py Output.total:
sequences for classification, label tokens for generation and token classification), undivided. The
engines sum the gradients of an update's micro-batches (no division by grad_accum: TorchEngine.backward, and
DeepSpeed's backward with scale_wrt_gas=False) and average them over the ranks, as data parallelism does.
So micro-batch i of rank r, holding count(i, r) targets, goes into backward as

    share = total(i, r) / count(i, r) * w / grad_accum,    w = count(i, r) * grad_accum * world / T

(T: the targets of the whole update on every rank, one all-reduce per update), which the ranks' average turns
into the sum over every target divided by T: the mean over the global batch. Where every batch holds as many
targets, w is exactly 1 and the share is the batch's mean over grad_accum. The operations are those of the
releases before this module held them all (the mean, the weight, the accumulation), in that order, so a run
resumed from an older checkpoint continues bit for bit.

The counts come from the batches on the CPU, before the forward (data/host.py: HostInfo.targets), and T is
summed over the ranks on the host (the CPU side of the process group: gloo), so the weights are plain numbers
and nothing waits for a GPU.
"""

from __future__ import annotations

import torch

from . import dist


def loss_weights(counts: list[int], world: int) -> list[float]:
    """w for each micro-batch of this rank's update (see the module docstring); every rank calls it, once per
    update."""
    total = float(sum(counts))
    if world > 1:  # a host tensor: reduced by gloo, never a device sync
        total = float(dist.all_reduce_sum(torch.tensor(total, dtype=torch.float64)))
    total = max(total, 1.0)
    return [c * len(counts) * world / total for c in counts]  # exactly 1 where the counts are equal


def share(total: torch.Tensor, count: int, weight: float, micro: int) -> torch.Tensor:
    """A micro-batch's summed loss as it goes into backward: its mean, weighted, over the update's `micro`
    micro-batches (the module docstring)."""
    return total / max(count, 1) * weight / micro
