"""Prompt tuning (Lester et al. 2021): P trainable embeddings prepended to (or placed in) the input.

PEFT's PROMPT_TUNING adapters, and its P_TUNING ones (which keep only the encoder's output, the [P, H]
virtual tokens), import as prompt tuning.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import BaseInfo, InitContext, PromptMethod
from .config import MethodConfig
from .init import token_embeddings
from .placement import SHALLOW


class PromptTuning(PromptMethod):
    name = "prompt_tuning"
    placement = SHALLOW
    peft_type = "PROMPT_TUNING"
    peft_imports = ("PROMPT_TUNING", "P_TUNING")

    def __init__(self, cfg: MethodConfig, info: BaseInfo, ctx: InitContext):
        super().__init__(cfg.num_virtual_tokens)
        init = token_embeddings(cfg.init, cfg.num_virtual_tokens, info.hidden_size, ctx, cfg.init_scale, cfg.init_text)
        self.embedding = nn.Parameter(init)  # [P, H]

    def forward(self) -> torch.Tensor:
        return self.embedding.clone()  # a tensor of its own: ZeRO-3 frees a parameter's storage after forward

    @classmethod
    def peft_config(cls, m: MethodConfig, info: BaseInfo, common: dict[str, Any]) -> Any:
        from peft import PromptTuningConfig

        return PromptTuningConfig(token_dim=info.hidden_size, num_attention_heads=info.num_heads, **common)

    @classmethod
    def trainable_params(cls, m: MethodConfig, hidden_size: int, kv_width: int, base_params: int) -> int:
        return m.num_virtual_tokens * hidden_size
