"""Split prefix attention: the prefix part and the sequence part computed apart, merged by log-sum-exp.

    out = w * softmax(q Kp^T) Vp + (1 - w) * softmax_masked(q Ks^T) Vs,   w = sigmoid(lse_prefix - lse_seq)

(the cascade / shared-prefix idea of FlashInfer's cascade attention and Hydragen). The prefix part has
no mask; the sequence part is causal and/or padded. Neither concatenates anything, and a prefix shared
by the batch is never copied per row.

On CPU both parts run PyTorch's fused flash-attention kernel (aten._scaled_dot_product_flash_attention_for_cpu,
which returns the log-sum-exp), the shared prefix handed to it as a stride-0 view over the batch. The
backward is written out in `_SplitCPU`: each part's flash backward kernel is handed the *merged* output
and log-sum-exp, which makes it return exactly that part's share of the gradients; the shared prefix's
per-row gradients are summed over the batch by torch (a fixed order: deterministic). On other devices,
a plain autograd math path (`backend="math"`) computes the same thing, with the queries of every row
folded into one matrix product per KV head against the shared prefix. `unavailable` refuses CUDA
tensors: there that math path is 15-50x slower than torch's FlashAttention, with ~10 GB of
intermediates at Llama-8B shapes; the fused paths (triton, flash, sdpa) are the ones for a GPU.
"""

from __future__ import annotations

import torch

from .masks import visible_mask

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_cpu_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def unavailable(q: torch.Tensor, dropout_p: float = 0.0) -> str | None:
    if dropout_p > 0.0:
        return "split does not implement attention dropout (impl='sdpa' does; 'auto' picks it)"
    if not q.is_floating_point():
        return f"split needs floating-point tensors, got {q.dtype}"
    if q.device.type == "cuda":
        return (
            "split is CPU-only: on CUDA its math path is 15-50x slower than torch's FlashAttention and holds "
            "~10 GB at Llama-8B shapes; use impl='triton' (fused, fp16/bf16), 'flash', 'sdpa' or 'auto'"
        )
    return None


def prefix_attention(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, scale, dropout_p=0.0, backend=None):
    if dropout_p > 0.0:
        raise NotImplementedError(unavailable(q, dropout_p))
    if backend is None:
        backend = "cpu" if q.device.type == "cpu" and q.dtype in _CPU_DTYPES else "math"
    if backend == "cpu":
        pk, pv = (prefix_k, prefix_v) if prefix_k is not None else (q.new_empty(0), q.new_empty(0))
        return _SplitCPU.apply(q, k, v, pk, pv, key_padding_mask, causal, scale)
    if backend == "math":
        return _split_math(q, k, v, prefix_k, prefix_v, causal, key_padding_mask, scale)
    raise ValueError(f"split backend {backend!r} is not 'cpu' or 'math'")


# ---- folding the queries of a KV-head group (and, for a shared prefix, of every row) into matrix rows ----


def _fold(x, Hkv, shared):
    """[B, Hq, Tq, e] -> [Hkv, B*g*Tq, e] (shared prefix) or [B*Hkv, g*Tq, e] (per-row prefix)."""
    B, Hq, Tq, e = x.shape
    x = x.reshape(B, Hkv, (Hq // Hkv) * Tq, e)
    return x.transpose(0, 1).reshape(Hkv, -1, e) if shared else x.reshape(B * Hkv, -1, e)


def _unfold(x, B, Hq, Tq, shared):
    e = x.shape[-1]
    if shared:
        x = x.reshape(x.shape[0], B, -1, e).transpose(0, 1)
    return x.reshape(B, Hq, Tq, e)


def _prefix_scores(q, prefix_k, scale, work):
    """Scores of every query against the prefix: [Hkv, B*g*Tq, P] or [B*Hkv, g*Tq, P], in `work` dtype."""
    shared = prefix_k.dim() == 3
    Hkv = prefix_k.shape[-3]
    qr = _fold(q.to(work), Hkv, shared)
    kr = prefix_k.to(work).reshape(-1, *prefix_k.shape[-2:])
    return torch.bmm(qr, kr.transpose(1, 2)).mul_(scale)


def _additive_mask(B, Tq, Tk, causal, key_padding_mask, dtype, device):
    """(float mask [B|1, 1, Tq, Tk] of 0/-inf or None, is_causal flag, boolean [B|1, 1, Tq] 'sees no key')."""
    if not causal and key_padding_mask is None:
        return None, False, None
    if causal and key_padding_mask is None and Tq == Tk:
        return None, True, None
    seen = visible_mask(B, Tq, Tk, 0, causal, key_padding_mask, device)
    mask = torch.zeros(seen.shape, dtype=dtype, device=device).masked_fill_(~seen, float("-inf"))
    return mask, False, ~seen.any(-1)


class _SplitCPU(torch.autograd.Function):
    """Both parts through PyTorch's fused CPU flash-attention kernels (the forward returns the log-sum-exp).

    The prefix part is plain (unmasked) grouped-query attention of q over the prefix; a shared prefix is
    handed to the kernel as a stride-0 view over the batch (read per row, never copied), and its gradient
    comes back per row ([B, Hkv, P, d], a small buffer) and is summed over the batch by torch: fixed order.
    """

    @staticmethod
    def forward(ctx, q, k, v, prefix_k, prefix_v, key_padding_mask, causal, scale):
        B, Hq, Tq, _ = q.shape
        Tk = k.shape[2]
        P = prefix_k.shape[-2] if prefix_k.dim() >= 3 else 0
        mask, is_causal, empty = _additive_mask(B, Tq, Tk, causal, key_padding_mask, q.dtype, q.device)
        out, lse = _flash_cpu(q, k, v, 0.0, is_causal, attn_mask=mask, scale=scale)
        if empty is not None:  # the kernel reports lse 0 for a query that sees no key; it is log(0)
            lse = lse.masked_fill(empty, float("-inf"))
        if P:
            out_p, lse_p = _flash_cpu(q, *_rows(prefix_k, prefix_v, B, q.dtype), 0.0, False, scale=scale)
            work = torch.promote_types(q.dtype, torch.float32)
            weight = torch.sigmoid(lse_p - lse).unsqueeze(-1).to(work)  # = exp(lse_p - logaddexp(lse, lse_p))
            out = torch.lerp(out.to(work), out_p.to(work), weight).to(q.dtype)
            lse = torch.logaddexp(lse, lse_p)
        ctx.save_for_backward(q, k, v, prefix_k, prefix_v, out, lse, mask)
        ctx.flags = (is_causal, scale, P)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, prefix_k, prefix_v, out, lse, mask = ctx.saved_tensors
        is_causal, scale, P = ctx.flags
        dout = dout.contiguous().to(q.dtype)
        # The kernels recompute p = exp(s - lse) and delta = rowsum(dout * out): handed the MERGED out and
        # lse, each returns exactly its part's share of the gradients. A query that sees nothing: lse = +inf.
        if not P:
            lse = lse.masked_fill(lse == float("-inf"), float("inf"))
        dq, dk, dv = _flash_cpu_backward(dout, q, k, v, out, lse, 0.0, is_causal, attn_mask=mask, scale=scale)
        dpk = dpv = None
        if P:
            pk, pv = _rows(prefix_k, prefix_v, q.shape[0], q.dtype)
            dq_p, dpk, dpv = _flash_cpu_backward(dout, q, pk, pv, out, lse, 0.0, False, scale=scale)
            dq = dq + dq_p
            if prefix_k.dim() == 3:  # shared: the per-row gradients summed over the batch
                dpk, dpv = dpk.sum(0), dpv.sum(0)
            dpk, dpv = dpk.to(prefix_k.dtype), dpv.to(prefix_v.dtype)
        return dq, dk, dv, dpk, dpv, None, None, None


def _rows(prefix_k, prefix_v, B, dtype):
    """The prefix as [B, Hkv, P, d]: a shared one as a stride-0 view (no copy), a per-row one as it is."""
    if prefix_k.dim() == 3:
        prefix_k, prefix_v = prefix_k.expand(B, -1, -1, -1), prefix_v.expand(B, -1, -1, -1)
    return prefix_k.to(dtype), prefix_v.to(dtype)


def _split_math(q, k, v, prefix_k, prefix_v, causal, key_padding_mask, scale):
    """The same split computation in differentiable PyTorch ops (any device)."""
    B, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    g = Hq // Hkv
    work = torch.promote_types(q.dtype, torch.float32)
    q5 = q.to(work).reshape(B, Hkv, g, Tq, d)
    s = torch.matmul(q5, k.to(work).unsqueeze(2).transpose(-1, -2)) * scale  # [B, Hkv, g, Tq, Tk]
    seen = visible_mask(B, Tq, Tk, 0, causal, key_padding_mask, q.device)
    if seen is not None:
        seen = seen.unsqueeze(2)
        s = s.masked_fill(~seen, torch.finfo(work).min)
    lse = torch.logsumexp(s, -1, keepdim=True).reshape(B, Hq, Tq, 1)
    if prefix_k is not None:
        shared = prefix_k.dim() == 3
        sp = _prefix_scores(q, prefix_k, scale, work)
        lse_p = _unfold(torch.logsumexp(sp, -1, keepdim=True), B, Hq, Tq, shared)
        lse = torch.logaddexp(lse, lse_p)
    p = torch.exp(s - lse.reshape(B, Hkv, g, Tq, 1))
    if seen is not None:
        p = p * seen  # a query that sees no key gets zeros
    out = torch.matmul(p, v.to(work).unsqueeze(2)).reshape(B, Hq, Tq, d)
    if prefix_k is not None:
        p = torch.exp(sp - _fold(lse, Hkv, shared))
        out = out + _unfold(torch.bmm(p, prefix_v.to(work).reshape(-1, *prefix_v.shape[-2:])), B, Hq, Tq, shared)
    return out.to(q.dtype)
