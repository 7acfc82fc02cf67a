"""Prefix tuning (Li & Liang 2021): per-layer key/value prefixes, reparameterised through an MLP.

The prefix is kept as PEFT keeps it, one row of L*2*Hkv*d numbers per virtual token (layer-major,
key before value), and handed to attention as [L, 2, Hkv, P, d]. With `projection` the rows come
from an MLP over P token embeddings (Li & Liang's reparameterisation, which steadies training);
without it they are the parameters themselves. PEFT's PREFIX_TUNING adapters hold the rows, so they
import as prefix tuning without projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ptune_dist.errors import ConfigError
from ptune_dist.fields import INT32, number

from .base import BaseInfo, InitContext, PromptMethod
from .config import RANDOM, MethodConfig
from .init import token_embeddings
from .placement import DEEP


class DeepPrefix(PromptMethod):
    placement = DEEP
    peft_type = "PREFIX_TUNING"
    default_projection = True  # method.projection=None means this

    @dataclass
    class Config(MethodConfig):
        projection: Optional[bool] = None  # the prefix through an MLP (None: the method's default_projection)
        projection_hidden_size: int = number(512, gt=0, most=INT32)

    def __init__(self, cfg: Config, info: BaseInfo, ctx: InitContext):
        super().__init__(cfg.num_virtual_tokens)
        P, H = cfg.num_virtual_tokens, info.hidden_size
        self.shape = (info.num_layers, 2, info.num_kv_heads, info.head_dim)
        self.projection = self.uses_projection(cfg)
        if self.projection:
            self.embedding = nn.Parameter(token_embeddings(cfg.init, P, H, ctx, cfg.init_scale, cfg.init_text))
            self.mlp = nn.Sequential(
                nn.Linear(H, cfg.projection_hidden_size),
                nn.Tanh(),
                nn.Linear(cfg.projection_hidden_size, info.kv_width),
            )
        else:
            self.prefix = nn.Parameter(torch.randn(P, info.kv_width, generator=ctx.generator) * cfg.init_scale)

    def flat(self) -> torch.Tensor:
        """[P, L*2*Hkv*d]: PEFT's `prompt_embeddings` layout."""
        return self.mlp(self.embedding) if self.projection else self.prefix.clone()  # clone: see PromptTuning

    def forward(self) -> torch.Tensor:
        L, two, Hkv, d = self.shape
        return self.flat().view(-1, L, two, Hkv, d).permute(1, 2, 3, 0, 4)

    @classmethod
    def uses_projection(cls, m: Config) -> bool:
        return cls.default_projection if m.projection is None else m.projection

    @classmethod
    def check_config(cls, m: Config) -> None:
        super().check_config(m)
        if m.init != RANDOM and not cls.uses_projection(m):
            raise ConfigError(
                f"method.init={m.init!r}: {m.name} without projection learns the prefix "
                "keys/values directly, which only init=random fills; set method.projection=true"
            )

    @classmethod
    def peft_config(cls, m: Config, info: BaseInfo, common: dict[str, Any]) -> Any:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(
            token_dim=info.num_kv_heads * info.head_dim,
            num_attention_heads=info.num_kv_heads,
            prefix_projection=False,
            **common,
        )

    def peft_weights(self) -> torch.Tensor:
        return self.flat()

    @classmethod
    def trainable_params(cls, m: Config, hidden_size: int, kv_width: int, base_params: int) -> int:
        P, H = m.num_virtual_tokens, hidden_size
        if cls.uses_projection(m):
            ph = m.projection_hidden_size
            return P * H + (H * ph + ph) + (ph * kv_width + kv_width)
        return P * kv_width

    @classmethod
    def activation_bytes(cls, m: Config, hidden_size: int, kv_width: int) -> float:
        return 4 * m.num_virtual_tokens * (kv_width + m.projection_hidden_size)


class PrefixTuning(DeepPrefix):
    name = "prefix_tuning"
    peft_imports = ("PREFIX_TUNING",)
    peft_import_overrides = ("method.projection=false",)

    @classmethod
    def holds_peft_import(cls, m: DeepPrefix.Config) -> bool:
        return not m.projection
