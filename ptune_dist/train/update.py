"""One optimizer update, as the training loop runs it and the memory trace (plan/trace.py) replays it.

    update(engine, micro, world, device, move=None, phase=None) -> (update loss, grad norm, tokens)

Each micro-batch (described on the host: data/host.py) is moved to the device, run forward, its summed loss
scaled (loss_weights.py, the one place the loss is normalised: every target of the update counts once,
whatever the world size) and run backward; then the engine's step. Nothing here reads the device: the loss and the
gradient norm come back as
device tensors (train/nonfinite.py reads them at logging steps), the tokens as a host count. `phase(name)` is
called as the update enters "batch", "forward", "backward" and "step" (the trace names its memory by them);
`move` copies a batch to the device (default device.to_device; the trace's leaves out pinning: fake tensors
cannot be pinned).
"""

from __future__ import annotations

import torch

from ptune_dist.device import to_device

from .loss_weights import loss_weights, share


def update(
    engine, micro: list[dict], world: int, device: torch.device, move=None, phase=None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    move, phase = move or to_device, phase or (lambda name: None)
    step_losses, tokens = [], 0
    for batch, weight in zip(micro, loss_weights([b["host"].targets for b in micro], world)):
        tokens += batch["host"].tokens
        phase("batch")
        on_device = move(batch, device)
        phase("forward")
        out = engine.forward(on_device)
        loss = share(out.total, out.count, weight, len(micro))  # its share of the mean over every target
        phase("backward")
        engine.backward(loss)
        step_losses.append(loss.detach())
        # the graph would live through the next forward, with what bitsandbytes int8 keeps on it
        del out, loss, on_device
    phase("step")
    step_loss = torch.stack(step_losses).sum()
    return step_loss, engine.step(step_loss), tokens
