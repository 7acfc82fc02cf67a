"""flash-attn (CUDA, fp16/bf16) with keys = [prefix; sequence].

Since flash-attn 2.1 the causal mask is aligned to the bottom-right corner when there are more keys than
queries, so with the P prefix keys in front, causal=True is exactly "every prefix key visible, the
sequence causal" (and decoding, Tq < Tk, lines up too). The prefix is expanded over the batch here:
flash-attn has no broadcast over rows (the fused Triton kernel is the path that avoids that copy).

Padding goes through the varlen interface. Each row's real tokens must be one contiguous run (left or
right padding). Real queries attend, causally, to [prefix; real keys], which keeps the bottom-right
alignment exact. Padded query positions (which a model ignores, but which the contract defines) get
what the reference gives them: a padded query before the real run sees the prefix only, one after it
sees the prefix and every real key (everything when bidirectional); they go through a second,
non-causal varlen call, and a padded query that sees nothing at all (P = 0) stays 0.
"""

from __future__ import annotations

import importlib.util

import torch

FLASH_DTYPES = (torch.float16, torch.bfloat16)


def unavailable(q: torch.Tensor, dropout_p: float = 0.0) -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (it needs CUDA to build: pip install flash-attn on a GPU machine)"
    if q.device.type != "cuda":
        return f"flash-attn needs CUDA tensors, these are on {q.device.type}"
    if q.dtype not in FLASH_DTYPES:
        return f"flash-attn takes float16 or bfloat16, not {q.dtype}"
    if q.shape[-1] > 256:
        return f"flash-attn takes head dims up to 256, not {q.shape[-1]}"
    import flash_attn

    major, minor = (int(x) for x in flash_attn.__version__.split(".")[:2])
    if (major, minor) < (2, 1):
        return f"flash-attn {flash_attn.__version__} aligns its causal mask top-left; 2.1 or newer is needed"
    return None


def _cu_seqlens(lengths):
    return torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))


def prefix_attention(q, k, v, prefix_k, prefix_v, *, causal, key_padding_mask, scale, dropout_p=0.0):
    why = unavailable(q, dropout_p)
    if why is not None:
        raise RuntimeError(why)
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    B, Hq, Tq, d = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    P = 0 if prefix_k is None else prefix_k.shape[-2]
    qt = q.transpose(1, 2)  # [B, Tq, Hq, d] (flash layout)
    seq_k, seq_v = k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype)
    if P:
        pre_k = prefix_k.to(q.dtype).expand(B, Hkv, P, d).transpose(1, 2)  # [B, P, Hkv, d]
        pre_v = prefix_v.to(q.dtype).expand(B, Hkv, P, d).transpose(1, 2)
    if key_padding_mask is None:
        keys = torch.cat([pre_k, seq_k], 1) if P else seq_k
        vals = torch.cat([pre_v, seq_v], 1) if P else seq_v
        out = flash_attn_func(qt, keys, vals, dropout_p=dropout_p, softmax_scale=scale, causal=causal)
        return out.transpose(1, 2)

    real = key_padding_mask.to(torch.bool)
    pos = torch.arange(Tk, device=q.device)
    n_real = real.sum(1)
    start = torch.where(n_real > 0, real.int().argmax(1), torch.zeros_like(n_real))
    run = (pos >= start[:, None]) & (pos < (start + n_real)[:, None])
    if not torch.equal(run, real):
        raise ValueError(
            "impl='flash' needs each row's real tokens to be one contiguous run (left or right "
            "padding); use impl='triton', 'split' or 'sdpa' for other masks"
        )
    # queries are the last Tq sequence positions when causal (Tq <= Tk); a bidirectional query sees the
    # same keys wherever it sits (and Tq may exceed Tk), so all of them go the "real query" way
    q_real = real[:, Tk - Tq :] if causal else real.new_ones(B, Tq)
    ones = real.new_ones(B, P)
    out = torch.zeros_like(qt)

    # real queries: causal (bottom-right) over [prefix; real keys]
    key_sel = torch.cat([ones, real], 1)
    keys = (torch.cat([pre_k, seq_k], 1) if P else seq_k)[key_sel]
    vals = (torch.cat([pre_v, seq_v], 1) if P else seq_v)[key_sel]
    n_q = q_real.sum(1)
    if int(n_q.sum()):
        out[q_real] = flash_attn_varlen_func(
            qt[q_real],
            keys,
            vals,
            _cu_seqlens(n_q),
            _cu_seqlens(P + n_real),
            int(n_q.max()),
            int((P + n_real).max()),
            dropout_p=dropout_p,
            softmax_scale=scale,
            causal=causal,
        )

    # padded queries: non-causal over the prefix ("before" the real run, when causal) or over the prefix and
    # every real key ("after" it, or any padded query when bidirectional)
    padded = ~q_real
    before = padded & (pos[None, Tk - Tq :] < start[:, None]) if causal else torch.zeros_like(padded)
    after = padded & ~before
    if P == 0:
        before = torch.zeros_like(before)  # sees no key: stays 0
    chosen = before | after
    if int(chosen.sum()):
        # sequences in row-major order: (row 0, before), (row 0, after), (row 1, before), ...
        n_q = torch.stack([before.sum(1), after.sum(1)], 1).flatten()
        n_k = torch.stack([torch.full_like(n_real, P), P + n_real], 1).flatten()
        key_sel = torch.cat([ones, ones, real], 1)  # [prefix | prefix, real] per row
        keys = torch.cat([pre_k, pre_k, seq_k], 1)[key_sel] if P else seq_k[real]
        vals = torch.cat([pre_v, pre_v, seq_v], 1)[key_sel] if P else seq_v[real]
        out[chosen] = flash_attn_varlen_func(
            qt[chosen],
            keys,
            vals,
            _cu_seqlens(n_q),
            _cu_seqlens(n_k),
            int(n_q.max()),
            int(n_k.max()),
            dropout_p=dropout_p,
            softmax_scale=scale,
            causal=False,
        )
    return out.transpose(1, 2)
