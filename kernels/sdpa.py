"""Prefix attention through torch.nn.functional.scaled_dot_product_attention (the CPU default).

The prefix is expanded (a view, no copy) over the batch and concatenated in front of the keys;
grouped-query attention is left to SDPA's enable_gqa; the mask is the boolean visibility mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import visible_mask
from .packed import packed_keys


def prefix_attention(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, scale, dropout_p=0.0,
                     segment_ids=None, prefix_ids=None):
    B, Hq, Tq, _ = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    if segment_ids is not None:  # packed rows: a query that sees no key (padding) gets zeros, as in reference
        k, v, mask = packed_keys(q, k, v, prefix_k, prefix_v, causal=causal, key_padding_mask=key_padding_mask,
                                 segment_ids=segment_ids, prefix_ids=prefix_ids)
        empty = ~mask.any(-1, keepdim=True)  # give such a query one key, then zero its output (no NaN either way)
        mask = mask | (empty & (torch.arange(mask.shape[-1], device=mask.device) == 0))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale,
                                             enable_gqa=Hq != Hkv)
        return out.masked_fill(empty, 0.0)
    if P:
        k = torch.cat([prefix_k.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)
        v = torch.cat([prefix_v.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
    plain_causal = causal and P == 0 and key_padding_mask is None and Tq == Tk
    mask = None if plain_causal else visible_mask(B, Tq, Tk, P, causal, key_padding_mask, q.device)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=plain_causal, scale=scale,
        enable_gqa=Hq != Hkv,
    )
