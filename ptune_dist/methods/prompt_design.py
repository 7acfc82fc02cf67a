"""Baseline: prompt design. A hand-written text prompt (the task's template) on the frozen model; nothing trains."""

from __future__ import annotations

from .base import PromptMethod


class PromptDesign(PromptMethod):
    def __init__(self, cfg, info, ctx):
        super().__init__(0)
