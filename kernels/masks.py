"""Which keys each query sees: every prefix key, then the sequence keys (causal or not) that are not padding.

Packed rows (`segment_ids`, `prefix_ids`: see kernels/__init__.py) have their own mask, `packed_mask`: a query
sees the keys of its own sequence only, and the prefix of its own sequence only.
"""

from __future__ import annotations

import torch


def visible_mask(B, Tq, Tk, P, causal, key_padding_mask, device):
    """Boolean [B or 1, 1, Tq, P + Tk], True where a query may attend; None when everything is visible.

    Queries are the last Tq of the Tk sequence positions (Tq < Tk when decoding against a cache), so
    causal means key j is visible to query i when j <= i + (Tk - Tq): the bottom-right alignment.
    key_padding_mask is bool [B, Tk] with True on real tokens.
    """
    if not causal and key_padding_mask is None:
        return None
    seq = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        seq = torch.tril(seq, diagonal=Tk - Tq)
    seq = seq[None, None]
    if key_padding_mask is not None:
        seq = seq & key_padding_mask[:, None, None, :].to(torch.bool)
    if P:
        seq = torch.cat([seq.new_ones(seq.shape[0], 1, Tq, P), seq], dim=-1)
    return seq


def packed_mask(Tq, causal, key_padding_mask, segment_ids, prefix_ids, P, N):
    """Boolean [B, 1, Tq, N*P + Tk] for packed rows: query i (position Tk - Tq + i) sees sequence key j when
    both lie in the same segment (>= 0), j is not padding and, if causal, j <= its position; it sees the P
    keys of prefix n (of N laid end to end; N = 1 for a shared or per-row prefix) when prefix_ids is None
    or names n, and its segment is >= 0. A query in segment -1 sees nothing."""
    B, Tk = segment_ids.shape
    q_seg = segment_ids[:, Tk - Tq :]
    real_q = q_seg >= 0
    seq = (q_seg[:, :, None] == segment_ids[:, None, :]) & real_q[:, :, None]
    if causal:
        seq = seq & torch.ones(Tq, Tk, dtype=torch.bool, device=seq.device).tril(diagonal=Tk - Tq)
    if key_padding_mask is not None:
        seq = seq & key_padding_mask[:, None, :].to(torch.bool)
    if P:
        owner = torch.arange(N, device=seq.device).repeat_interleave(P)  # the prefix each key belongs to
        chosen = prefix_ids[:, :, None] if prefix_ids is not None else owner.new_zeros(B, Tq, 1)
        seq = torch.cat([(chosen == owner) & real_q[:, :, None], seq], dim=-1)
    return seq[:, None]
