"""The one place the training loss is normalised: how much each target counts in an update, so that the update
follows the mean over every target of the global batch, whatever the world size, grad_accum or packing.

The objectives return their loss summed over their batch's targets (model/objectives.py Output.total:
sequences for classification, label tokens for generation and token classification), undivided. The
engines sum the gradients of an update's micro-batches (no division by grad_accum: TorchEngine.backward, and
DeepSpeed's backward with scale_wrt_gas=False) and average them over the ranks, as data parallelism does
(TorchEngine's all-reduce, DeepSpeed's reduction). So every micro-batch's summed loss is scaled by

    scale = world / total

(total: the targets of the whole update on every rank, one all-reduce per update), which the ranks'
average turns into the sum over every target divided by their number: the mean over the global batch. Where
every batch holds as many targets this is the plain mean of the per-batch means, as before packing.

The update's loss (update.py: the scaled sums of this rank's micro-batches) is world * this rank's sum /
total: the update's mean loss when the ranks' shares are alike, exactly it on one rank; it is what the loop
logs. The counts come from the batches on the CPU, before the forward (data/host.py: HostInfo.targets), and
the total is summed over the ranks on the host (the CPU side of the process group: gloo), so the scale is a
plain number and nothing waits for a GPU.
"""

from __future__ import annotations

import torch

from . import dist


def loss_scale(counts: list[int], world: int) -> float:
    """What every micro-batch's summed loss of this rank's update is multiplied by (see the module docstring);
    every rank calls it, once per update."""
    total = float(sum(counts))
    if world > 1:  # a host tensor: reduced by gloo, never a device sync
        total = float(dist.all_reduce_sum(torch.tensor(total, dtype=torch.float64)))
    return world / max(total, 1.0)
