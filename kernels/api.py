"""Attention that takes a prefix of keys/values: one function, several implementations behind a dispatch
(the public face of ptune_dist.kernels: import from here).

    prefix_attention(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask=None, scale=None,
                     dropout_p=0.0, impl="auto", segment_ids=None, prefix_ids=None) -> [B, Hq, Tq, d]

q: [B, Hq, Tq, d]; k, v: [B, Hkv, Tk, d] with Hq a multiple of Hkv (grouped-query attention) and
Tq <= Tk (the queries are the last Tq positions, as when decoding against a cache).
prefix_k, prefix_v: [Hkv, P, d] shared by every row, [B, Hkv, P, d] one per row, or None (P = 0).
Every query sees all P prefix keys; over the sequence the mask is causal (bottom-right aligned) or
bidirectional; key_padding_mask [B, Tk] (True = real token) hides padded keys. A query that sees
no key at all returns zeros.

Packed rows (several sequences end to end in one row): segment_ids [B, Tk] gives each position its
sequence's index within the row (-1: padding); a query then sees only keys of its own sequence, and a
query in segment -1 sees nothing. The prefix is seen by every sequence, or, with prefix_ids [B, Tq] and a
prefix table prefix_k [N, Hkv, P, d], each query sees only entry prefix_ids[b, i] (its sequence's task).
`reference`, `sdpa` and `triton` take packed rows (triton: each sequence one contiguous run of positions,
else ValueError; it skips key blocks of other sequences and reads the prefix or table in place); `auto` picks
sdpa on CPU and triton on CUDA fp16/bf16 without dropout (kernels/auto.py choose_packed); split and flash
refuse them by name.

Implementations (`impl`), one module each:
    reference  reference.py   concatenate, mask, softmax in plain PyTorch; float64; the oracle
    sdpa       sdpa.py        prefix expanded and concatenated, torch SDPA with a boolean mask
    split      split.py       prefix part and sequence part apart, merged by log-sum-exp; the
                              shared prefix is never copied per row
    triton     triton_impl.py fused forward/backward Triton kernels (triton_fwd.py, triton_bwd.py; packed
                              rows: triton_packed.py); compiled on a GPU, interpreted on CPU when
                              TRITON_INTERPRET=1
    flash      flash.py       flash-attn (CUDA, fp16/bf16) with keys = [prefix; sequence]
    auto       auto.py        picks per device, dtype and shape, among what available.py says can run
"""

from .available import CHOICES, NAMES, ImplUnavailable, available, unavailable
from .dispatch import prefix_attention, resolve_impl

__all__ = ["CHOICES", "NAMES", "ImplUnavailable", "available", "prefix_attention", "resolve_impl", "unavailable"]
