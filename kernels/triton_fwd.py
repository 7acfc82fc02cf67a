"""Fused forward kernel of prefix attention (Triton), after Triton's fused-attention tutorial.

One program computes BLOCK_M queries of one (row b, query head h): it streams the P prefix keys of
KV head h // GROUP (prefix strides over the batch are 0 when the prefix is shared, so it is read,
never copied, per row), then the sequence keys (bottom-right causal and/or key padding), keeping an
online softmax in fp32. It writes the output and the natural-log log-sum-exp (-inf for a query that
sees no key, whose output is 0) that the backward kernels recompute probabilities from.

Packed rows (constexpr PACKED; META, the layout of triton_packed.py): a query sees the keys of its own
segment only; the block visits only the keys its queries' segments cover, and the prefix entries its
queries name (a table [N, Hkv, P, D], entry e at e * stride_pke; a shared or per-row prefix is entry 0).
Without PACKED the entry loop runs once (e = 0, constant bounds) and nothing else changes.

Shapes: Q [B, H, Tq, D]; K, V [B, Hkv, Tk, D]; PK, PV [B|-, Hkv, P, D] or a table [N, Hkv, P, D];
KPM [B, Tk] uint8 (1 = real); META int32 [4, B, Tk]; O [B, H, Tq, D]; LSE [B, H, Tq] fp32. The last
dimension of every tensor is contiguous. D is padded to BLOCK_D (a power of two >= 16) by masked loads.
"""

import triton
import triton.language as tl

from .triton_packed import query_layout, same_segment

# constexpr instances, not annotated globals: the compiler refuses `X: tl.constexpr = ...` inside @triton.jit
# (the interpreter accepts it; tests/test_kernels_triton_aot.py compiles the kernels to catch that)
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# arguments that change from batch to batch (lengths, the mask's and the packed layout's row strides) or from
# model to model (heads) and gain nothing from Triton's specialisation (divisible by 16, or == 1): left
# unspecialised, one binary serves every batch. The head dim D and the q/k/v/o strides (multiples of D) stay
# specialised: they make the [rows, BLOCK_D] tile loads and stores vectorised.
SIZES = ("H", "GROUP", "Tq", "Tk", "P", "stride_mb", "stride_sp")


@triton.jit
def load_tile(base, offs_t, stride_t, offs_d, t_ok, d_ok, UPCAST: tl.constexpr):
    """A [len(offs_t), BLOCK_D] tile; zeros outside (t_ok, d_ok); fp32 when UPCAST (the interpreter)."""
    x = tl.load(base + offs_t[:, None] * stride_t + offs_d[None, :], mask=t_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def sequence_end(pid_m, Tq, Tk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """One past the last sequence key any query of block pid_m may see."""
    if CAUSAL:
        return tl.minimum(Tk, (pid_m + 1) * BLOCK_M + Tk - Tq)
    return Tk


@triton.jit
def sequence_visible(offs_m, m_ok, n, n_ok, shift, kpm_row, CAUSAL: tl.constexpr, HAS_KPM: tl.constexpr):
    """[BLOCK_M, BLOCK_N]: which sequence keys n each query offs_m sees (bottom-right causal with
    shift = Tk - Tq, and not padding: kpm_row points at the row's key-padding mask)."""
    visible = m_ok[:, None] & n_ok[None, :]
    if CAUSAL:
        visible = visible & (n[None, :] <= offs_m[:, None] + shift)
    if HAS_KPM:
        visible = visible & (tl.load(kpm_row + n, mask=n_ok, other=0) != 0)[None, :]
    return visible


@triton.jit
def online_softmax_step(acc, m_i, l_i, q, k, v, visible, qk_scale, DOT_PRECISION: tl.constexpr):
    """Fold one block of keys into the running (acc, max, sum); scores in log2 units."""
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: keep everything at 0
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit(do_not_specialize=SIZES)
def prefix_attention_fwd(
    Q,
    K,
    V,
    PK,
    PV,
    KPM,
    META,
    O,
    LSE,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
    stride_pkb,
    stride_pke,
    stride_pkh,
    stride_pkt,
    stride_pvb,
    stride_pve,
    stride_pvh,
    stride_pvt,
    stride_mb,
    stride_sp,
    stride_ob,
    stride_oh,
    stride_ot,
    H,
    GROUP,
    Tq,
    Tk,
    P,
    D,
    scale,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    PACKED: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < Tq
    d_ok = offs_d < D
    qk_scale = scale * LOG2E

    q = load_tile(Q + b * stride_qb + h * stride_qh, offs_m, stride_qt, offs_d, m_ok, d_ok, UPCAST)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    lo = 0
    hi = sequence_end(pid_m, Tq, Tk, CAUSAL, BLOCK_M)
    e_lo, e_hi = 0, 1
    if PACKED:  # the keys of the queries' segments, the prefix entries they name
        seg_q, ent, key_lo, key_hi, e_lo, e_hi = query_layout(META, stride_sp, b * Tk, Tk - Tq + offs_m, m_ok)
        lo = key_lo
        hi = tl.minimum(hi, key_hi)

    # the prefix: visible to every query (packed: of its entry e, and not padding)
    for e in range(e_lo, e_hi):
        pk_base = PK + b * stride_pkb + e * stride_pke + hk * stride_pkh
        pv_base = PV + b * stride_pvb + e * stride_pve + hk * stride_pvh
        for start in range(0, P, BLOCK_N):
            n = start + offs_n
            n_ok = n < P
            k = load_tile(pk_base, n, stride_pkt, offs_d, n_ok, d_ok, UPCAST)
            v = load_tile(pv_base, n, stride_pvt, offs_d, n_ok, d_ok, UPCAST)
            visible = m_ok[:, None] & n_ok[None, :]
            if PACKED:
                visible = visible & (ent == e)[:, None]
            acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, q, k, v, visible, qk_scale, DOT_PRECISION)

    # the sequence: query i (of the last Tq positions) sees key j <= i + Tk - Tq when causal
    k_base = K + b * stride_kb + hk * stride_kh
    v_base = V + b * stride_vb + hk * stride_vh
    for start in range(lo, hi, BLOCK_N):
        n = start + offs_n
        n_ok = n < hi
        k = load_tile(k_base, n, stride_kt, offs_d, n_ok, d_ok, UPCAST)
        v = load_tile(v_base, n, stride_vt, offs_d, n_ok, d_ok, UPCAST)
        visible = sequence_visible(offs_m, m_ok, n, n_ok, Tk - Tq, KPM + b * stride_mb, CAUSAL, HAS_KPM)
        if PACKED:
            visible = visible & same_segment(META, b * Tk, seg_q, n, n_ok)
        acc, m_i, l_i = online_softmax_step(acc, m_i, l_i, q, k, v, visible, qk_scale, DOT_PRECISION)

    seen = l_i > 0.0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=m_ok)
