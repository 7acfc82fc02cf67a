"""Packed rows for the mask-based implementations (reference, sdpa): the keys each query may see, laid out
as [prefix keys; sequence keys] with the mask of masks.packed_mask.

A shared [Hkv, P, d] or per-row [B, Hkv, P, d] prefix is seen by every sequence of a row; a table
[N, Hkv, P, d] with `prefix_ids` [B, Tq] is laid end to end as N*P keys that every row shares (expanded,
not copied), and each query sees only its own entry's P keys.
"""

from __future__ import annotations

import torch

from .masks import packed_mask


def packed_keys(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, segment_ids, prefix_ids):
    """(keys [B, Hkv, N*P + Tk, d], values, mask [B, 1, Tq, N*P + Tk])."""
    B, Hkv, _, d = k.shape
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    N = 1
    if P:
        if prefix_ids is not None:
            N = prefix_k.shape[0]
            pk = prefix_k.permute(1, 0, 2, 3).reshape(1, Hkv, N * P, d).expand(B, -1, -1, -1)
            pv = prefix_v.permute(1, 0, 2, 3).reshape(1, Hkv, N * P, d).expand(B, -1, -1, -1)
        else:
            pk, pv = prefix_k.expand(B, -1, -1, -1), prefix_v.expand(B, -1, -1, -1)
        k = torch.cat([pk.to(k.dtype), k], dim=2)
        v = torch.cat([pv.to(v.dtype), v], dim=2)
    return k, v, packed_mask(q.shape[2], causal, key_padding_mask, segment_ids, prefix_ids, P, N)
