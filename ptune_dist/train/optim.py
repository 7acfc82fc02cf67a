"""Optimizers (AdamW, Adafactor) and learning-rate schedules (warm-up, then constant, linear or cosine decay)."""

from __future__ import annotations

import math

import torch

from ptune_dist.config.schema import TrainConfig


def build_optimizer(params, train: TrainConfig) -> torch.optim.Optimizer:
    params = list(params)
    if train.optimizer == "adafactor":
        # torch's Adafactor (Shazeer & Stern 2018), the optimizer Lester et al. tuned prompts with
        return torch.optim.Adafactor(params, lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.AdamW(params, lr=train.lr, betas=tuple(train.betas), weight_decay=train.weight_decay)


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
        optimizer, lambda step: lr_factor(step, train.steps, train.warmup_steps, train.schedule))
