"""Attention that takes a prefix of keys/values: one function, several implementations behind a dispatch.

    prefix_attention(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask=None, scale=None,
                     dropout_p=0.0, impl="auto") -> [B, Hq, Tq, d]

q: [B, Hq, Tq, d]; k, v: [B, Hkv, Tk, d] with Hq a multiple of Hkv (grouped-query attention) and
Tq <= Tk (the queries are the last Tq positions, as when decoding against a cache).
prefix_k, prefix_v: [Hkv, P, d] shared by every row, [B, Hkv, P, d] one per row, or None (P = 0).
Every query sees all P prefix keys; over the sequence the mask is causal (bottom-right aligned) or
bidirectional; key_padding_mask [B, Tk] (True = real token) hides padded keys. A query that sees
no key at all returns zeros.
"""

from __future__ import annotations

from . import reference, sdpa

IMPLS = {
    "reference": reference.prefix_attention,
    "sdpa": sdpa.prefix_attention,
}
CHOICES = ("auto", *IMPLS)


def resolve_impl(impl: str, device_type: str = "cpu") -> str:
    """The implementation `impl` stands for on this device ("auto" picks the default)."""
    if impl == "auto":
        return "sdpa"
    if impl not in IMPLS:
        raise ValueError(f"attention impl {impl!r} is not one of {list(CHOICES)}")
    return impl


def _check(q, k, v, prefix_k, prefix_v, key_padding_mask, causal):
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(f"prefix_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: "
                         "expected q [B, Hq, Tq, d] and k, v [B, Hkv, Tk, d]")
    B, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != d or Hq % Hkv or (causal and Tq > Tk):
        raise ValueError(f"prefix_attention: q {tuple(q.shape)} does not fit k {tuple(k.shape)} "
                         "(same B and d, Hq a multiple of Hkv, causal queries no more than keys)")
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_attention: give both prefix_k and prefix_v or neither")
    if prefix_k is not None:
        want = (Hkv, d) if prefix_k.dim() == 3 else (B, Hkv, d)
        got = (*prefix_k.shape[:-2], prefix_k.shape[-1])
        if prefix_k.dim() not in (3, 4) or got != want or prefix_v.shape != prefix_k.shape:
            raise ValueError(f"prefix_attention: prefix_k {tuple(prefix_k.shape)}, prefix_v "
                             f"{tuple(prefix_v.shape)}: expected [Hkv={Hkv}, P, d={d}] or [B={B}, Hkv, P, d]")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, Tk):
        raise ValueError(f"prefix_attention: key_padding_mask {tuple(key_padding_mask.shape)}, expected ({B}, {Tk})")


def prefix_attention(q, k, v, prefix_k=None, prefix_v=None, *, causal, key_padding_mask=None, scale=None,
                     dropout_p=0.0, impl="auto"):
    _check(q, k, v, prefix_k, prefix_v, key_padding_mask, causal)
    if prefix_k is not None and prefix_k.shape[-2] == 0:
        prefix_k = prefix_v = None
    if scale is None:
        scale = q.shape[-1] ** -0.5
    fn = IMPLS[resolve_impl(impl, q.device.type)]
    return fn(q, k, v, prefix_k, prefix_v, causal=causal, key_padding_mask=key_padding_mask, scale=scale,
              dropout_p=dropout_p)
