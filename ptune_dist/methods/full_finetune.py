"""Baseline: full fine-tuning. No prompt; every weight of the base trains."""

from __future__ import annotations

from .base import PromptMethod


class FullFinetune(PromptMethod):
    trains_base = True

    def __init__(self, cfg, info, ctx):
        super().__init__(0)
