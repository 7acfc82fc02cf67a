"""Which keys each query sees: every prefix key, then the sequence keys (causal or not) that are not padding."""

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
