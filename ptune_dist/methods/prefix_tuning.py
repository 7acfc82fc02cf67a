"""Prefix tuning (Li & Liang 2021): per-layer key/value prefixes, reparameterised through an MLP.

The prefix is kept as PEFT keeps it, one row of L*2*Hkv*d numbers per virtual token (layer-major,
key before value), and handed to attention as [L, 2, Hkv, P, d]. With `projection` the rows come
from an MLP over P token embeddings (Li & Liang's reparameterisation, which steadies training);
without it they are the parameters themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import BaseInfo, InitContext, PromptMethod
from .init import token_embeddings


class DeepPrefix(PromptMethod):
    depth = "deep"
    default_projection = True

    def __init__(self, cfg, info: BaseInfo, ctx: InitContext):
        super().__init__(cfg.num_virtual_tokens)
        P, H = cfg.num_virtual_tokens, info.hidden_size
        self.shape = (info.num_layers, 2, info.num_kv_heads, info.head_dim)
        self.projection = self.default_projection if cfg.projection is None else cfg.projection
        if self.projection:
            self.embedding = nn.Parameter(token_embeddings(cfg.init, P, H, ctx, cfg.init_scale, cfg.init_text))
            self.mlp = nn.Sequential(nn.Linear(H, cfg.projection_hidden_size), nn.Tanh(),
                                     nn.Linear(cfg.projection_hidden_size, info.kv_width))
        else:
            self.prefix = nn.Parameter(torch.randn(P, info.kv_width, generator=ctx.generator) * cfg.init_scale)

    def flat(self) -> torch.Tensor:
        """[P, L*2*Hkv*d]: PEFT's `prompt_embeddings` layout."""
        return self.mlp(self.embedding) if self.projection else self.prefix.clone()  # clone: see PromptTuning

    def forward(self) -> torch.Tensor:
        L, two, Hkv, d = self.shape
        return self.flat().view(-1, L, two, Hkv, d).permute(1, 2, 3, 0, 4)


class PrefixTuning(DeepPrefix):
    pass
