"""Prompt tuning (Lester et al. 2021): P trainable embeddings prepended to (or placed in) the input."""

from __future__ import annotations

import torch
from torch import nn

from .base import BaseInfo, InitContext, PromptMethod
from .init import token_embeddings


class PromptTuning(PromptMethod):
    depth = "shallow"

    def __init__(self, cfg, info: BaseInfo, ctx: InitContext):
        super().__init__(cfg.num_virtual_tokens)
        init = token_embeddings(cfg.init, cfg.num_virtual_tokens, info.hidden_size, ctx, cfg.init_scale,
                                cfg.init_text)
        self.embedding = nn.Parameter(init)  # [P, H]

    def forward(self) -> torch.Tensor:
        return self.embedding.clone()  # a tensor of its own: ZeRO-3 frees a parameter's storage after forward
