"""The plain-PyTorch engine the training loop drives (one process, or data parallel under torchrun).

An engine offers the same calls whatever runs underneath (see ds_engine.py for DeepSpeed):

    forward(batch) -> Output        backward(loss) per micro-batch: the update's gradient is the sum of its
                                    micro-batches' (never divided by grad_accum), averaged over the ranks;
                                    train/loss_weights.py scales the losses so that this is the mean
                                    over every target (the one place the loss is normalised)
    step(loss) -> grad norm, per update (loss: the update's summed micro-batch losses), a 0-dim tensor on the
                  device (reading it is a host sync: the loop does at logging steps, nonfinite.py); NaN when the
                  loss or a gradient was not finite on any rank, and then nothing was updated
    lr                              shapes() {name: shape} of the trainable weights
    full_weights() -> {name: full fp32 tensor on the CPU}: every rank calls it (it may gather)

and its state, as a part a checkpointer saves and restores (checkpoint/checkpointer.py):

    state_dict() -> {"weights": full_weights(),
                     "optimizer": the optimizer's state keyed by parameter name (optim_state.py),
                     "scheduler": the lr schedule's state_dict()}
    load_state_dict(that dict)      puts all three back

Every rank calls both (the DeepSpeed engine gathers and scatters ZeRO partitions in them), and the dict
holds whole tensors, never a rank's partition: a state saved by one engine on N ranks loads into either
engine on any number of ranks. Here an update skipped as non-finite (a NaN from step) changes neither
the weights nor the optimizer state in it, only the schedule's step.

With several processes it averages the trainable gradients over the ranks with one all-reduce per
update: the prompt is small, so that is all data parallelism needs. Nothing in an update asks the device for a
value: clipping, the finiteness check and leaving a non-finite update out all happen there (optim.step_unless).
"""

from __future__ import annotations

import torch

from . import dist
from .optim import step_unless
from .optim_state import load_named_state_dict, named_state_dict


class TorchEngine:
    def __init__(self, model, optimizer, scheduler, max_grad_norm: float):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.max_grad_norm = max_grad_norm
        self.params = [p for p in model.parameters() if p.requires_grad]

    def forward(self, batch):
        return self.model(batch)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()  # summed over the micro-batches: loss_weights.py has scaled it

    def step(self, loss: torch.Tensor | None = None) -> torch.Tensor:
        """Average gradients over ranks, clip, update (when finite), advance the schedule; returns the gradient
        norm, NaN for an update left out as non-finite, on the device (no host sync here)."""
        loss = torch.zeros((), device=self.params[0].device) if loss is None else loss.detach().float().reshape(())
        if dist.active():
            # every rank reduces every parameter in the same order: a task absent from one rank's
            # batch contributes zeros there, not a shorter (or misaligned) buffer
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            # the loss rides along as the last element, so every rank sees any rank's non-finite loss
            flat = torch.cat([p.grad.reshape(-1) for p in self.params] + [loss.reshape(1).to(self.params[0].grad)])
            dist.all_reduce_sum(flat).div_(torch.distributed.get_world_size())
            loss = flat[-1]
            offset = 0
            for p in self.params:
                p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        norm = torch.nn.utils.clip_grad_norm_(
            self.params, self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        )
        finite = torch.isfinite(norm) & torch.isfinite(loss)
        step_unless(self.optimizer, ~finite)
        self.scheduler.step()  # a skipped update still takes its step of the schedule: lr stays a function of the step
        self.optimizer.zero_grad(set_to_none=True)
        return torch.where(finite, norm.float(), float("nan"))

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def shapes(self) -> dict:
        return {n: tuple(p.shape) for n, p in self.model.trainable_parameters().items()}

    def full_weights(self) -> dict:
        return {n: p.detach().float().contiguous().cpu() for n, p in self.model.trainable_parameters().items()}

    def state_dict(self) -> dict:
        return {
            "weights": self.full_weights(),
            "optimizer": named_state_dict(self.optimizer, list(self.model.trainable_parameters())),
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, sd: dict) -> None:
        with torch.no_grad():
            for name, p in self.model.trainable_parameters().items():
                p.copy_(sd["weights"][name])
        load_named_state_dict(self.optimizer, sd["optimizer"])
        self.scheduler.load_state_dict(sd["scheduler"])
