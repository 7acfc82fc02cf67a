"""One entry point, `prefix_attention`, and the table of implementations behind it.

Each implementation lives in its own module and exposes
    prefix_attention(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, scale, dropout_p)
with inputs already checked by `check_inputs` (prefix None when P = 0, scale a float). An
implementation that cannot run the call (missing package, wrong device or dtype) says why through
`unavailable(name, q, ...)`; asking for it by name then raises ImplUnavailable with that reason,
while "auto" (kernels/auto.py) only picks implementations that are available.
"""

from __future__ import annotations

import torch

from . import reference, sdpa, split
from .auto import choose, choose_packed
from .available import CHOICES, NAMES, ImplUnavailable, triton_module, unavailable


def implementation(name: str):
    if name == "triton":
        return triton_module().prefix_attention
    if name == "flash":
        from . import flash

        return flash.prefix_attention
    return {"reference": reference.prefix_attention, "sdpa": sdpa.prefix_attention, "split": split.prefix_attention}[
        name
    ]


def check_inputs(q, k, v, prefix_k, prefix_v, key_padding_mask, causal, table: bool = False):
    """Raise ValueError naming the offending argument when the shapes do not fit together (`table`: a 4-D
    prefix is a table [N, Hkv, P, d] that prefix_ids index, not one prefix per row)."""
    if q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        raise ValueError(
            f"prefix_attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}: "
            "expected q [B, Hq, Tq, d] and k, v [B, Hkv, Tk, d]"
        )
    B, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    if k.shape[0] != B or k.shape[3] != d or Hq % Hkv or (causal and Tq > Tk):
        raise ValueError(
            f"prefix_attention: q {tuple(q.shape)} does not fit k {tuple(k.shape)} "
            "(same B and d, Hq a multiple of Hkv, causal queries no more than keys)"
        )
    if (prefix_k is None) != (prefix_v is None):
        raise ValueError("prefix_attention: give both prefix_k and prefix_v or neither")
    if prefix_k is not None:
        want = (Hkv, d) if prefix_k.dim() == 3 else (prefix_k.shape[0] if table else B, Hkv, d)
        got = (*prefix_k.shape[:-2], prefix_k.shape[-1])
        if prefix_k.dim() not in (3, 4) or got != want or prefix_v.shape != prefix_k.shape:
            raise ValueError(
                f"prefix_attention: prefix_k {tuple(prefix_k.shape)}, prefix_v "
                f"{tuple(prefix_v.shape)}: expected [Hkv={Hkv}, P, d={d}] or [B={B}, Hkv, P, d]"
            )
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, Tk):
        raise ValueError(f"prefix_attention: key_padding_mask {tuple(key_padding_mask.shape)}, expected ({B}, {Tk})")
    if key_padding_mask is not None and (key_padding_mask.is_floating_point() or key_padding_mask.is_complex()):
        raise ValueError(
            f"prefix_attention: key_padding_mask has dtype {key_padding_mask.dtype}; expected bool "
            "(True = real token) or 0/1 integers, not an additive float mask"
        )


PACKED = ("reference", "sdpa", "triton")  # the implementations that take packed rows (segment_ids)


def check_packed(q, k, prefix_k, segment_ids, prefix_ids) -> None:
    """Raise ValueError naming the argument when packed-row inputs do not fit q and k."""
    B, Tq, Tk = q.shape[0], q.shape[2], k.shape[2]
    for name, t, shape in (("segment_ids", segment_ids, (B, Tk)), ("prefix_ids", prefix_ids, (B, Tq))):
        if t is not None and (tuple(t.shape) != shape or t.is_floating_point() or t.dtype == torch.bool):
            raise ValueError(f"prefix_attention: {name} {tuple(t.shape)} {t.dtype}, expected integers {shape}")
    if prefix_ids is not None and (segment_ids is None or prefix_k is None or prefix_k.dim() != 4):
        raise ValueError(
            "prefix_attention: prefix_ids index a prefix table [N, Hkv, P, d] of packed rows; give "
            "segment_ids and a 4-D prefix_k with them"
        )
    if prefix_ids is not None and prefix_ids.numel():
        # checked where the values are, without the host waiting for a GPU (a failed check on CUDA is a device-side
        # assert); on the CPU it raises at once with this message
        torch._assert_async(
            prefix_ids.max() < prefix_k.shape[0],
            f"prefix_attention: prefix_ids reach past the prefix table's {prefix_k.shape[0]} entries",
        )


def resolve_impl(
    impl: str, q: torch.Tensor, prefix_k=None, key_padding_mask=None, causal=True, dropout_p: float = 0.0
) -> str:
    """The implementation `impl` stands for on this call ("auto" picks one; see kernels/auto.py)."""
    if impl == "auto":
        return choose(q, prefix_k, key_padding_mask, causal, dropout_p)
    if impl not in NAMES:
        raise ValueError(f"attention impl {impl!r} is not one of {list(CHOICES)}")
    why = unavailable(impl, q, dropout_p)
    if why is not None:
        raise ImplUnavailable(f"attention impl {impl!r} cannot run here: {why}")
    return impl


def prefix_attention(
    q,
    k,
    v,
    prefix_k=None,
    prefix_v=None,
    *,
    causal,
    key_padding_mask=None,
    scale=None,
    dropout_p=0.0,
    impl="auto",
    segment_ids=None,
    prefix_ids=None,
):
    """Attention of q over [prefix keys; sequence keys]; see the package docstring for the contract."""
    check_inputs(q, k, v, prefix_k, prefix_v, key_padding_mask, causal, table=prefix_ids is not None)
    packed = segment_ids is not None or prefix_ids is not None
    if packed:
        check_packed(q, k, prefix_k, segment_ids, prefix_ids)
    if prefix_k is not None and prefix_k.shape[-2] == 0:
        prefix_k = prefix_v = prefix_ids = None
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        key_padding_mask = key_padding_mask.to(torch.bool)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if packed:
        name, extra = _packed_impl(impl, q, dropout_p), {"segment_ids": segment_ids, "prefix_ids": prefix_ids}
    else:
        name, extra = resolve_impl(impl, q, prefix_k, key_padding_mask, causal, dropout_p), {}
    return implementation(name)(
        q,
        k,
        v,
        prefix_k,
        prefix_v,
        causal=causal,
        key_padding_mask=key_padding_mask,
        scale=float(scale),
        dropout_p=dropout_p,
        **extra,
    )


def _packed_impl(impl: str, q: torch.Tensor, dropout_p: float = 0.0) -> str:
    """The implementation that runs packed rows for `impl` ("auto": kernels/auto.py choose_packed)."""
    if impl == "auto":
        return choose_packed(q, dropout_p)
    if impl not in NAMES:
        raise ValueError(f"attention impl {impl!r} is not one of {list(CHOICES)}")
    if impl not in PACKED:
        raise ImplUnavailable(
            f"attention impl {impl!r} cannot run here: packed rows (segment_ids) run on {', '.join(PACKED)} only"
        )
    why = unavailable(impl, q, dropout_p)
    if why is not None:
        raise ImplUnavailable(f"attention impl {impl!r} cannot run here: {why}")
    return impl
