"""A test-only method of a known family: prompt tuning whose [P, H] prompt is a low-rank product A @ B
("LoRA on the prompt"), with its own knob (method.rank). A shallow prompt: the SHALLOW placement serves it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptune_dist.fields import INT32, number
from ptune_dist.methods import SHALLOW, BaseInfo, InitContext, MethodConfig, PromptMethod


class LoraPrompt(PromptMethod):
    name = "lora_prompt"
    placement = SHALLOW

    @dataclass
    class Config(MethodConfig):
        rank: int = number(2, gt=0, most=INT32)  # the prompt's rank

    def __init__(self, cfg: Config, info: BaseInfo, ctx: InitContext):
        super().__init__(cfg.num_virtual_tokens)
        P, H, r = cfg.num_virtual_tokens, info.hidden_size, cfg.rank
        self.a = nn.Parameter(torch.randn(P, r, generator=ctx.generator) * cfg.init_scale)
        self.b = nn.Parameter(torch.randn(r, H, generator=ctx.generator) * cfg.init_scale)

    def forward(self) -> torch.Tensor:
        return self.a @ self.b

    @classmethod
    def trainable_params(cls, m: Config, hidden_size: int, kv_width: int, base_params: int) -> int:
        return m.rank * (m.num_virtual_tokens + hidden_size)
