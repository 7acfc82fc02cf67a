"""How deep prompts reach attention: a function registered in transformers' attention registry.

The base model is switched to `attn_implementation="ptune_prefix"`. Every attention layer then calls
`prefix_attention_forward(module, q, k, v, mask, ...)` with the keyword arguments the model's forward
was given; the prompt model passes its per-layer prefix as `ptune_prefix=PrefixKV(...)`, so the
prefix travels with the call (also into the recomputation of gradient checkpointing) instead of
living in a cache or a global. The registered mask function hands attention the plain 2-D padding
mask; causality comes from the module (`is_causal`), and the kernel adds the prefix keys. Whether any key is
padding was read on the host from the CPU batch (PrefixKV.padded, data/host.py): nothing here asks the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from ptune_dist.errors import ConfigError
from ptune_dist.kernels.api import prefix_attention

ATTN_NAME = "ptune_prefix"


@dataclass
class PrefixKV:
    """Per-layer prefix keys/values for one forward.

    kv: [L, 2, Hkv, P, d] shared by every row, or [B, L, 2, Hkv, P, d] one per row; None for no prefix.
    impl: the kernel implementation (kernels.CHOICES).
    segment_ids: [B, T] for packed rows (data/packing.py): each token's sequence within its row, -1 padding.
    prefix_ids: [B, T] with packed rows of several tasks: kv is then a table [N, L, 2, Hkv, P, d] and each
    token's query sees entry prefix_ids[b, t] (its sequence's task).
    padded: whether the batch has padding (known on the host); False lets attention drop the all-ones mask.
    """

    kv: torch.Tensor | None
    impl: str = "auto"
    segment_ids: torch.Tensor | None = None
    prefix_ids: torch.Tensor | None = None
    padded: bool = True

    @property
    def num_tokens(self) -> int:
        return 0 if self.kv is None else self.kv.shape[-2]

    def layer(self, idx: int):
        if self.kv is None:
            return None, None
        if self.kv.dim() == 5:
            return self.kv[idx, 0], self.kv[idx, 1]
        return self.kv[:, idx, 0], self.kv[:, idx, 1]


def prefix_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, ptune_prefix: PrefixKV | None = None, **kwargs
):
    """The attention function transformers calls: q [B, Hq, T, d], k/v [B, Hkv, Tk, d] -> [B, T, Hq, d]."""
    prefix = ptune_prefix or PrefixKV(None)
    pk, pv = prefix.layer(module.layer_idx)
    window = kwargs.get("sliding_window")
    if window and key.shape[2] + prefix.num_tokens > window:
        raise ConfigError(
            f"{key.shape[2]} keys (+ {prefix.num_tokens} prefix) exceed the sliding window of "
            f"{window} tokens this model's layer {module.layer_idx} attends within; ptune's prefix "
            f"attention is full attention, the same only up to the window: keep data.max_length (and "
            "prompt plus generated tokens) within it"
        )
    if pk is not None:
        pk, pv = pk.to(key.dtype), pv.to(value.dtype)
    packed = {}
    if prefix.segment_ids is not None:  # queries are the last positions of the keys (decoding does not pack)
        packed = {
            "segment_ids": prefix.segment_ids,
            "prefix_ids": None if prefix.prefix_ids is None else prefix.prefix_ids[:, -query.shape[2] :],
        }
    out = prefix_attention(
        query,
        key,
        value,
        pk,
        pv,
        causal=bool(getattr(module, "is_causal", True)),
        key_padding_mask=attention_mask if prefix.padded else None,
        scale=scaling,
        dropout_p=dropout,
        impl=prefix.impl,
        **packed,
    )
    return out.transpose(1, 2).contiguous(), None


def padding_mask(
    batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None, **kwargs
):
    """Mask factory for ATTN_NAME: the boolean [B, kv_length] padding mask as given (None without one; whether it
    hides anything is not asked here, which would read the device: see PrefixKV.padded)."""
    if attention_mask is None:
        return None
    return attention_mask[:, -kv_length:].to(torch.bool)


def register() -> str:
    """Make ATTN_NAME a valid `attn_implementation` (idempotent)."""
    AttentionInterface.register(ATTN_NAME, prefix_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, padding_mask)
    return ATTN_NAME
