"""Baseline: full fine-tuning. No prompt; every weight of the base trains (the planner counts them all)."""

from __future__ import annotations

from .base import BaseInfo, InitContext, PromptMethod
from .config import MethodConfig


class FullFinetune(PromptMethod):
    name = "full_finetune"
    trains_base = True

    def __init__(self, cfg: MethodConfig, info: BaseInfo, ctx: InitContext):
        super().__init__(0)

    @classmethod
    def trainable_params(cls, m: MethodConfig, hidden_size: int, kv_width: int, base_params: int) -> int:
        return base_params
