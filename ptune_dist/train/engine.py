"""The single-process engine (plain PyTorch) that the training loop drives.

With several processes (torchrun) it averages the trainable gradients over the ranks with one
all-reduce per step: the prompt is small, so that is all data parallelism needs here. The DeepSpeed
engine offers the same four calls.
"""

from __future__ import annotations

import torch

from . import dist


class TorchEngine:
    def __init__(self, model, optimizer, scheduler, max_grad_norm: float):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Average gradients over ranks, clip, update, advance the schedule; returns the gradient norm."""
        if dist.active():
            # every rank reduces every parameter in the same order: a task absent from one rank's
            # batch contributes zeros there, not a shorter (or misaligned) buffer
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            flat = torch.cat([p.grad.reshape(-1) for p in self.params])
            dist.all_reduce_sum(flat).div_(torch.distributed.get_world_size())
            offset = 0
            for p in self.params:
                p.grad.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm if self.max_grad_norm > 0 else
                                              float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]
