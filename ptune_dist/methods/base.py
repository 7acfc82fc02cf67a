"""What every method is: a module that produces one task's prompt, and what it needs to know of the base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class BaseInfo:
    """The shapes of the frozen base that a prompt must fit."""

    kind: str  # causal_lm | masked_lm | encoder
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int

    @classmethod
    def from_config(cls, config, kind: str) -> "BaseInfo":
        heads = config.num_attention_heads
        return cls(
            kind=kind,
            model_type=config.model_type,
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size,
            max_positions=getattr(config, "max_position_embeddings", 0) or 0,
        )

    @property
    def kv_width(self) -> int:
        """Numbers per virtual token for all layers' keys and values (PEFT's flattened prefix width)."""
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim


@dataclass
class InitContext:
    """What initialisations may read of the base: token embeddings by id, the tokenizer, label words."""

    embed: Callable[[torch.Tensor], torch.Tensor]  # LongTensor [n] -> [n, H]
    tokenizer: object
    label_words: list[str]
    generator: torch.Generator


class PromptMethod(nn.Module):
    """One task's prompt.

    depth "shallow": forward() -> [P, H] virtual token embeddings placed in the input;
    depth "deep": forward() -> [L, 2, Hkv, P, d] keys/values seen by every attention layer;
    depth "none": no prompt (baselines).
    """

    depth = "none"
    trains_base = False

    def __init__(self, num_virtual_tokens: int = 0):
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens

    def forward(self) -> torch.Tensor | None:
        return None
