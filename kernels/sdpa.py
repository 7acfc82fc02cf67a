"""Prefix attention through scaled dot-product attention (the CPU default).

The prefix is expanded (a view, no copy) over the batch and concatenated in front of the keys;
grouped-query attention is left to the kernel; the mask is the boolean visibility mask.

On the CPU the attention itself is the custom operator `ptune::sdpa_fwd` / `ptune::sdpa_bwd`: PyTorch's fused
CPU flash-attention kernels (the ones torch.nn.functional.scaled_dot_product_attention picks on the CPU, with
the boolean mask turned into the same additive one), with fake implementations, so the call traces under
FakeTensorMode and stays one opaque call under torch.compile. Elsewhere (CUDA, meta, a fake CUDA device) and
with attention dropout it is torch.nn.functional.scaled_dot_product_attention itself, which torch already
traces and compiles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .masks import visible_mask
from .packed import packed_keys

aten = torch.ops.aten
CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)  # the fused CPU kernel's


def attention(q, k, v, mask, is_causal: bool, scale: float, dropout_p: float = 0.0):
    """softmax(q k^T * scale + mask) v with Hq a multiple of Hkv; `mask` boolean (True: visible) or None."""
    if q.device.type == "cpu" and q.dtype in CPU_DTYPES and dropout_p == 0.0:
        return torch.ops.ptune.sdpa_fwd(q, k, v, mask, is_causal, scale)[0]
    return F.scaled_dot_product_attention(
        q,
        k,
        v,
        attn_mask=mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )


def _bias(mask, dtype):
    """The boolean mask as the additive one the fused kernel takes (0 visible, -inf hidden), as F.sdpa makes it."""
    return None if mask is None else torch.where(mask, torch.zeros((), dtype=dtype), float("-inf"))


def _strided(B, T, H, *rest, like):
    """An empty [B, H, T, *rest] tensor laid out as [B, T, H, *rest], the fused CPU kernel's layout."""
    return like.new_empty((B, T, H, *rest), dtype=like.dtype if rest else _lse_dtype(like.dtype)).transpose(1, 2)


def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("ptune::sdpa_fwd", mutates_args=(), device_types="cpu")
def sdpa_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, log-sum-exp [B, Hq, Tq]) of the fused CPU flash-attention kernel."""
    return aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, is_causal, attn_mask=_bias(mask, q.dtype), scale=scale
    )


@sdpa_fwd.register_fake
def _(q, k, v, mask, is_causal, scale):
    B, H, T, _ = q.shape
    return torch.empty_like(q), _strided(B, T, H, like=q)


@torch.library.custom_op("ptune::sdpa_bwd", mutates_args=(), device_types="cpu")
def sdpa_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of the fused CPU flash-attention backward kernel."""
    return aten._scaled_dot_product_flash_attention_for_cpu_backward(
        do, q, k, v, out, lse, 0.0, is_causal, attn_mask=_bias(mask, q.dtype), scale=scale
    )


@sdpa_bwd.register_fake
def _(do, q, k, v, out, lse, mask, is_causal, scale):
    (B, H, T, d), Hkv, Tk = q.shape, k.shape[1], k.shape[2]
    return _strided(B, T, H, d, like=q), _strided(B, Tk, Hkv, d, like=k), _strided(B, Tk, Hkv, d, like=v)


def _setup_context(ctx, inputs, output):
    q, k, v, mask, is_causal, scale = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], mask)
    ctx.args = (is_causal, scale)
    ctx.mark_non_differentiable(output[1])


def _autograd(ctx, do, dlse):
    q, k, v, out, lse, mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.ptune.sdpa_bwd(do, q, k, v, out, lse, mask, *ctx.args)
    return dq, dk, dv, None, None, None


sdpa_fwd.register_autograd(_autograd, setup_context=_setup_context)


def prefix_attention(
    q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, scale, dropout_p=0.0, segment_ids=None, prefix_ids=None
):
    B, Hq, Tq, _ = q.shape
    Tk = k.shape[2]
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    if segment_ids is not None:  # packed rows: a query that sees no key (padding) gets zeros, as in reference
        k, v, mask = packed_keys(
            q,
            k,
            v,
            prefix_k,
            prefix_v,
            causal=causal,
            key_padding_mask=key_padding_mask,
            segment_ids=segment_ids,
            prefix_ids=prefix_ids,
        )
        empty = ~mask.any(-1, keepdim=True)  # give such a query one key, then zero its output (no NaN either way)
        mask = mask | (empty & (torch.arange(mask.shape[-1], device=mask.device) == 0))
        return attention(q, k, v, mask, False, scale, dropout_p).masked_fill(empty, 0.0)
    if P:
        k = torch.cat([prefix_k.expand(B, -1, -1, -1).to(k.dtype), k], dim=2)
        v = torch.cat([prefix_v.expand(B, -1, -1, -1).to(v.dtype), v], dim=2)
    plain_causal = causal and P == 0 and key_padding_mask is None and Tq == Tk
    mask = None if plain_causal else visible_mask(B, Tq, Tk, P, causal, key_padding_mask, q.device)
    return attention(q, k, v, mask, plain_causal, scale, dropout_p)
