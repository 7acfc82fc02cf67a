"""Optimizers (AdamW, Adafactor) and learning-rate schedules (warm-up, then constant, linear or cosine decay).

build_optimizer(params, train)   AdamW is torch's fused implementation (one kernel for all parameters, and
                                 it can leave an update out on the device: step_unless)
step_unless(optimizer, skip)     the update, unless `skip` (a device tensor) says it is not finite
"""

from __future__ import annotations

import math

import torch

from ptune_dist.config.schema import TrainConfig


def build_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if train.optimizer == "adafactor":
        # torch's Adafactor (Shazeer & Stern 2018), the optimizer Lester et al. tuned prompts with
        return torch.optim.Adafactor(params, lr=train.lr, weight_decay=train.weight_decay)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay, fused=fused or None
    )


def step_unless(optimizer: torch.optim.Optimizer, skip: torch.Tensor) -> None:
    """optimizer.step(), left out when the 0-dim bool tensor `skip` is true. Fused AdamW decides that on the
    device (torch's found_inf protocol, the one torch.amp's GradScaler uses: neither the weights nor the moments
    nor the step count change), so the host never waits for the answer; an optimizer without it (Adafactor)
    reads `skip` on the host: one sync per update."""
    if all(group.get("fused") for group in optimizer.param_groups):
        optimizer.found_inf = skip.float()  # 1.0: leave this update out
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not bool(skip):
        optimizer.step()


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr for optimizer step `step` (0-based)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, train.steps, train.warmup_steps, train.schedule)
    )
