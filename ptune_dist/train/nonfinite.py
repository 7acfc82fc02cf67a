"""What a step with a non-finite loss or gradient does (train.on_nonfinite).

The engines never apply such an update (engine.py skips it before the optimizer; DeepSpeed, which
applies it inside its own step, is allowed only `stop`, see config/load.py) and report it as a NaN
gradient norm, the same on every rank. Then:

    stop   the run ends with an error naming the step; nothing non-finite is saved, so the newest
           checkpoint and final/ stay as they were (checkpoint/state.py also refuses to write one)
    skip   the step is counted in metrics.jsonl ({"event": "skipped_step"}) and training goes on;
           train.max_skipped_steps skipped in a row still end the run
"""

from __future__ import annotations

import math

from ptune_dist.errors import PtuneError


class NonFiniteTraining(PtuneError):
    pass


class NonFiniteGuard:
    def __init__(self, policy: str, max_in_a_row: int, log):
        self.policy, self.max_in_a_row, self.log = policy, max_in_a_row, log
        self.in_a_row = self.total = 0

    def check(self, step: int, grad_norm: float, loss) -> bool:
        """True when the step's update was applied; raises NonFiniteTraining when the run must stop."""
        if math.isfinite(grad_norm):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.total += 1
        what = f"step {step}: the loss ({float(loss):.4g} on rank 0's micro-batches) or the gradient is not finite"
        if self.policy == "stop" or self.in_a_row >= self.max_in_a_row:
            why = "" if self.policy == "stop" else f" ({self.in_a_row} steps in a row, train.max_skipped_steps)"
            raise NonFiniteTraining(f"{what}{why}; the run stops and saves nothing from this step on (the newest "
                                    "checkpoint and final/ are untouched). Lower train.lr, check the data and "
                                    "model.dtype, or set train.on_nonfinite=skip to skip such steps")
        value = float(loss)  # JSON has no NaN: a non-finite loss is written as text
        self.log.write({"event": "skipped_step", "step": step,
                        "step_loss": value if math.isfinite(value) else str(value),
                        "in_a_row": self.in_a_row,
                        "skipped_total": self.total})
        self.log.say(f"ptune: {what}; update skipped (train.on_nonfinite=skip)")
        return False
