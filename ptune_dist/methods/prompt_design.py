"""Baseline: prompt design. A hand-written text prompt (the task's template) on the frozen model; nothing trains."""

from __future__ import annotations

from .base import BaseInfo, InitContext, PromptMethod
from .config import MethodConfig


class PromptDesign(PromptMethod):
    name = "prompt_design"

    def __init__(self, cfg: MethodConfig, info: BaseInfo, ctx: InitContext):
        super().__init__(0)
