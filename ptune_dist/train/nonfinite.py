"""What a step with a non-finite loss or gradient does (train.on_nonfinite), decided without stalling the GPU.

The engines never apply such an update (engine.py leaves it out on the device: fused AdamW's found_inf, as
torch.amp's GradScaler does; DeepSpeed, which applies it inside its own step, is allowed only `stop`, see
config/load.py) and report it as a NaN gradient norm. The norm and the loss stay on the device: the guard
keeps them and reads them on the host only when `settle` is called, at the steps that log, evaluate or save
and at the end, so the steps in between ask the device for nothing. Then, for each step since the last read:

    stop   the run ends with an error naming the first non-finite step; nothing non-finite is saved (settle
           runs before every save, and checkpoint/state.py also refuses to write one), so the newest
           checkpoint and final/ stay as they were
    skip   the step is counted in metrics.jsonl ({"event": "skipped_step"}) and training goes on;
           train.max_skipped_steps skipped in a row still end the run (at that read, naming the step)

A step is non-finite when it was on any rank (the flags are summed over the ranks at each read).
"""

from __future__ import annotations

import math

import torch

from ptune_dist.errors import PtuneError

from . import dist


class NonFiniteTraining(PtuneError):
    pass


class NonFiniteGuard:
    def __init__(self, policy: str, max_in_a_row: int, log):
        self.policy, self.max_in_a_row, self.log = policy, max_in_a_row, log
        self.in_a_row = self.total = 0
        self.pending: list = []  # (step, device tensor [grad norm, loss])

    def record(self, step: int, grad_norm: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep an update's gradient norm (NaN: not applied) and loss, on the device, until `settle`."""
        self.pending.append((step, torch.stack([grad_norm.float().reshape(()), loss.detach().float().reshape(())])))

    def settle(self) -> list[tuple[int, float, float]]:
        """Read every recorded step on the host (one copy; a collective: every rank calls it at the same steps) and
        apply the policy to the non-finite ones in order. Returns (step, grad norm, loss) of the applied ones;
        raises NonFiniteTraining when the run must stop."""
        if not self.pending:
            return []
        values = torch.stack([v for _, v in self.pending])
        bad = dist.all_reduce_sum((~torch.isfinite(values)).any(-1).float())  # non-finite on any rank
        rows = torch.cat([values, bad[:, None]], 1).tolist()
        steps, self.pending = [s for s, _ in self.pending], []
        applied = []
        for step, (norm, loss, flags) in zip(steps, rows):
            if not flags:
                self.in_a_row = 0
                applied.append((step, norm, loss))
            else:
                self.nonfinite(step, loss)
        return applied

    def nonfinite(self, step: int, loss: float) -> None:
        self.in_a_row += 1
        self.total += 1
        what = f"step {step}: the loss ({loss:.4g} on rank 0's micro-batches) or the gradient is not finite"
        if self.policy == "stop" or self.in_a_row >= self.max_in_a_row:
            why = "" if self.policy == "stop" else f" ({self.in_a_row} steps in a row, train.max_skipped_steps)"
            raise NonFiniteTraining(
                f"{what}{why}; the run stops and saves nothing from this step on (the newest "
                "checkpoint and final/ are untouched). Lower train.lr, check the data and "
                "model.dtype, or set train.on_nonfinite=skip to skip such steps"
            )
        self.log.write(
            {
                "event": "skipped_step",
                "step": step,
                "step_loss": loss if math.isfinite(loss) else str(loss),  # JSON has no NaN
                "in_a_row": self.in_a_row,
                "skipped_total": self.total,
            }
        )
        self.log.say(f"ptune: {what}; update skipped (train.on_nonfinite=skip)")
