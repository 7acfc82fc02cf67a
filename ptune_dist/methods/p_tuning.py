"""P-tuning (Liu et al. 2021): virtual tokens produced by a prompt encoder (MLP or bidirectional LSTM).

The encoder is trained and checkpointed with the embeddings it reads, so a run can resume; PEFT's
adapter format keeps only the encoder's output (see checkpoint/peft_format.py).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import BaseInfo, InitContext, PromptMethod
from .init import token_embeddings


class PTuning(PromptMethod):
    depth = "shallow"

    def __init__(self, cfg, info: BaseInfo, ctx: InitContext):
        super().__init__(cfg.num_virtual_tokens)
        H = info.hidden_size
        hidden = cfg.encoder_hidden_size or H
        self.embedding = nn.Parameter(
            token_embeddings(cfg.init, cfg.num_virtual_tokens, H, ctx, cfg.init_scale, cfg.init_text))
        self.kind = cfg.encoder
        if cfg.encoder == "lstm":
            self.lstm = nn.LSTM(H, hidden, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, H))
        else:
            self.mlp = nn.Sequential(nn.Linear(H, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                     nn.Linear(hidden, H))

    def forward(self) -> torch.Tensor:
        x = self.embedding
        if self.kind == "lstm":
            x = self.lstm(x[None])[0][0]
        return self.mlp(x)
