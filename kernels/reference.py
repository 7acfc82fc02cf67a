"""Plain-PyTorch prefix attention: concatenate, mask, softmax. The oracle every other path is tested against.

Computes in float32 at least (float64 when given float64) and returns the input dtype. The masked softmax
itself is the custom operator `ptune::reference`, with its gradient `ptune::reference_bwd` written out (the
softmax backward; tests/test_attention_ops.py checks it against autograd through `attend` in float64), so the
oracle traces under FakeTensorMode and compiles like the fused paths; with attention dropout it runs as plain,
autograd-differentiated code.
"""

from __future__ import annotations

import torch

from .masks import visible_mask
from .packed import packed_keys


def prefix_attention(
    q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, scale, dropout_p=0.0, segment_ids=None, prefix_ids=None
):
    B, Hq, Tq, _ = q.shape
    Tk = k.shape[2]
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    if segment_ids is not None:  # packed rows
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
    else:
        if P:
            k = torch.cat([prefix_k.expand(B, -1, -1, -1), k], dim=2)
            v = torch.cat([prefix_v.expand(B, -1, -1, -1), v], dim=2)
        mask = visible_mask(B, Tq, Tk, P, causal, key_padding_mask, q.device)
    if dropout_p > 0.0:
        return attend(q, k, v, mask, scale, dropout_p)
    return torch.ops.ptune.reference(q, k, v, mask, scale)


def attend(q, k, v, mask, scale: float, dropout_p: float = 0.0):
    """softmax(q k^T * scale) v over the visible keys (mask: boolean, True visible, or None), in float32 at least;
    a query that sees no key gets zeros."""
    keys, vals, probs = _probs(q, k, v, mask, scale)
    if dropout_p > 0.0:
        probs = torch.nn.functional.dropout(probs, p=dropout_p)
    return torch.matmul(probs, vals).to(q.dtype)


def _probs(q, k, v, mask, scale):
    """(keys and values repeated over each KV head's query heads, the masked probabilities), in the work dtype."""
    work = torch.promote_types(q.dtype, torch.float32)
    group = q.shape[1] // k.shape[1]
    keys = k.to(work).repeat_interleave(group, dim=1)
    vals = v.to(work).repeat_interleave(group, dim=1)
    scores = torch.matmul(q.to(work), keys.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(work).min)
    probs = torch.softmax(scores, dim=-1)
    if mask is not None:
        probs = probs * mask  # a query that sees no key gets zeros, not a uniform average
    return keys, vals, probs


def attend_backward(do, q, k, v, mask, scale: float):
    """(dq, dk, dv) of `attend` without dropout: dV = P^T dO, dS = P * (dP - rowsum(P * dP)) with dP = dO V^T (P
    already zero where hidden), dQ = scale dS K, dK = scale dS^T Q; the repeated heads' dK, dV summed per KV head."""
    keys, vals, probs = _probs(q, k, v, mask, scale)
    work = probs.dtype
    B, Hkv, Tk, d = k.shape
    do = do.to(work)
    dp = torch.matmul(do, vals.transpose(-1, -2))
    ds = probs * (dp - (probs * dp).sum(-1, keepdim=True))
    dq = torch.matmul(ds, keys) * scale
    dk = (torch.matmul(ds.transpose(-1, -2), q.to(work)) * scale).view(B, Hkv, -1, Tk, d).sum(2)
    dv = torch.matmul(probs.transpose(-1, -2), do).view(B, Hkv, -1, Tk, d).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


@torch.library.custom_op("ptune::reference", mutates_args=())
def reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    return attend(q, k, v, mask, scale)


@reference.register_fake
def _(q, k, v, mask, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("ptune::reference_bwd", mutates_args=())
def reference_bwd(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attend_backward(do, q, k, v, mask, scale)


@reference_bwd.register_fake
def _(do, q, k, v, mask, scale):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, mask, scale = inputs
    ctx.save_for_backward(q, k, v, mask)
    ctx.scale = scale


def _autograd(ctx, do):
    q, k, v, mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.ptune.reference_bwd(do, q, k, v, mask, ctx.scale)
    return dq, dk, dv, None, None


reference.register_autograd(_autograd, setup_context=_setup_context)
