"""Plain-PyTorch prefix attention: concatenate, mask, softmax. The oracle every other path is tested against.

Computes in float32 at least (float64 when given float64) and returns the input dtype.
"""

from __future__ import annotations

import torch

from .masks import visible_mask
from .packed import packed_keys


def prefix_attention(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, scale, dropout_p=0.0,
                     segment_ids=None, prefix_ids=None):
    B, Hq, Tq, _ = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    work = torch.promote_types(q.dtype, torch.float32)
    if segment_ids is not None:  # packed rows
        k, v, mask = packed_keys(q, k, v, prefix_k, prefix_v, causal=causal, key_padding_mask=key_padding_mask,
                                 segment_ids=segment_ids, prefix_ids=prefix_ids)
    elif P:
        k = torch.cat([prefix_k.expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([prefix_v.expand(B, -1, -1, -1), v], dim=2)
    keys = k.to(work).repeat_interleave(Hq // Hkv, dim=1)
    vals = v.to(work).repeat_interleave(Hq // Hkv, dim=1)
    scores = torch.matmul(q.to(work), keys.transpose(-1, -2)) * scale
    if segment_ids is None:
        mask = visible_mask(B, Tq, Tk, P, causal, key_padding_mask, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(work).min)
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs * mask  # a query that sees no key gets zeros, not a uniform average
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, vals).to(q.dtype)
