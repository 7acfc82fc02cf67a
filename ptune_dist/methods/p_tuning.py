"""P-tuning (Liu et al. 2021): virtual tokens produced by a prompt encoder (MLP or bidirectional LSTM).

The encoder is trained and checkpointed with the embeddings it reads, so a run can resume; PEFT's
adapter format keeps only the encoder's output (see checkpoint/peft_format.py), which imports back
as prompt tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ptune_dist.fields import INT32, choice, number

from .base import BaseInfo, InitContext, PromptMethod
from .config import MethodConfig
from .init import token_embeddings
from .placement import SHALLOW


class PTuning(PromptMethod):
    name = "p_tuning"
    placement = SHALLOW

    @dataclass
    class Config(MethodConfig):
        encoder: str = choice("mlp", "lstm")  # the prompt encoder
        encoder_hidden_size: int = number(0, ge=0, meaning="0: the model's hidden size", most=INT32)

    peft_type = "P_TUNING"

    def __init__(self, cfg: Config, info: BaseInfo, ctx: InitContext):
        super().__init__(cfg.num_virtual_tokens)
        H = info.hidden_size
        hidden = cfg.encoder_hidden_size or H
        self.embedding = nn.Parameter(
            token_embeddings(cfg.init, cfg.num_virtual_tokens, H, ctx, cfg.init_scale, cfg.init_text)
        )
        self.kind = cfg.encoder
        if cfg.encoder == "lstm":
            self.lstm = nn.LSTM(H, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, H))
        else:
            self.mlp = nn.Sequential(
                nn.Linear(H, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, H)
            )

    def forward(self) -> torch.Tensor:
        x = self.embedding
        if self.kind == "lstm":
            x = self.lstm(x[None])[0][0]
        return self.mlp(x)

    @classmethod
    def peft_config(cls, m: Config, info: BaseInfo, common: dict[str, Any]) -> Any:
        from peft import PromptEncoderConfig

        return PromptEncoderConfig(
            token_dim=info.hidden_size,
            num_attention_heads=info.num_heads,
            encoder_reparameterization_type=m.encoder.upper(),
            encoder_hidden_size=m.encoder_hidden_size or info.hidden_size,
            **common,
        )

    @classmethod
    def trainable_params(cls, m: Config, hidden_size: int, kv_width: int, base_params: int) -> int:
        P, H = m.num_virtual_tokens, hidden_size
        h = m.encoder_hidden_size or H
        if m.encoder == "lstm":
            mlp = (2 * h) * (2 * h) + 2 * h + (2 * h) * H + H
            return P * H + _lstm_params(H, h) + mlp
        return P * H + (H * h + h) + (h * h + h) + (h * H + H)

    @classmethod
    def activation_bytes(cls, m: Config, hidden_size: int, kv_width: int) -> float:
        return 4 * m.num_virtual_tokens * 4 * (m.encoder_hidden_size or hidden_size)


def _lstm_params(inp: int, hidden: int, layers: int = 2, bidirectional: bool = True) -> int:
    dirs = 2 if bidirectional else 1
    n = 0
    for layer in range(layers):
        i = inp if layer == 0 else hidden * dirs
        n += dirs * (4 * hidden * i + 4 * hidden * hidden + 2 * 4 * hidden)
    return n
