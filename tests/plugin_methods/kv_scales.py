"""A test-only method of a new family (IA3-like): learned scales on every attention layer's keys and values,
no prompt tokens. Its placement (KV_SCALES, defined here) multiplies the key and value projections' outputs
by the task's scales while the backbone runs; nothing outside this file knows of it."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ptune_dist.methods import BaseInfo, InitContext, MethodConfig, Placement, PromptMethod

KEY_NAMES, VALUE_NAMES = ("k_proj", "key"), ("v_proj", "value")  # Llama-like and BERT-like attention


class ScalesPlacement(Placement):
    """Learned, neither in the input nor a prefix: the prompt is [L, 2, W] scales (or [B, L, 2, W], one per row)."""

    def entered(self, model, prompt, batch):
        if prompt is None:
            return contextlib.nullcontext()
        if batch.get("segment_ids") is not None:
            raise ValueError("kv_scales: packed rows are not supported by this test method")
        stack = contextlib.ExitStack()
        for layer, (key, value) in enumerate(projections(model.backbone)):
            for which, module in enumerate((key, value)):
                scale = prompt[..., layer, which, :]
                scale = scale[:, None, :] if scale.dim() == 2 else scale  # per row: [B, 1, W]
                stack.enter_context(_hooked(module, scale))
        return stack


KV_SCALES = ScalesPlacement("kv_scales", 3, learned=True)


def projections(backbone: nn.Module) -> list[tuple[nn.Linear, nn.Linear]]:
    """(key, value) linear layers of each attention layer, in order."""
    keys = [m for n, m in backbone.named_modules() if n.rsplit(".", 1)[-1] in KEY_NAMES]
    values = [m for n, m in backbone.named_modules() if n.rsplit(".", 1)[-1] in VALUE_NAMES]
    return list(zip(keys, values))


@contextlib.contextmanager
def _hooked(module: nn.Module, scale: torch.Tensor):
    handle = module.register_forward_hook(lambda mod, args, out: out * scale.to(out.dtype))
    try:
        yield
    finally:
        handle.remove()


class KvScales(PromptMethod):
    name = "kv_scales"
    placement = KV_SCALES

    def __init__(self, cfg: MethodConfig, info: BaseInfo, ctx: InitContext):
        super().__init__(0)
        self.scales = nn.Parameter(torch.ones(info.num_layers, 2, info.num_kv_heads * info.head_dim))

    def forward(self) -> torch.Tensor:
        return self.scales.clone()

    @classmethod
    def check_config(cls, m: MethodConfig) -> None:
        pass  # no prompt tokens: num_virtual_tokens and init do not apply

    @classmethod
    def trainable_params(cls, m: MethodConfig, hidden_size: int, kv_width: int, base_params: int) -> int:
        return kv_width  # L * 2 * Hkv * d
