"""Fused backward kernels of prefix attention (Triton), FlashAttention-2 style, without atomics.

With p = exp(s - lse) recomputed from the forward's log-sum-exp and delta = rowsum(dO * O):
    dV = p^T dO,  dS = p * (dO V^T - delta),  dQ = scale * dS K,  dK = scale * dS^T Q.

`prefix_attention_bwd_dq`: one program per (BLOCK_M queries, row, query head); loops over the prefix and
the sequence keys, like the forward.
`prefix_attention_bwd_dkdv`: one program per (BLOCK_N keys, KV head, row group). It loops over the GROUP
query heads that share the KV head and over the query blocks, so every key block is owned by exactly
one program and written once. It serves both key sets:
  - the sequence keys (ROWS = 1: one program per row; causal and padding masks apply);
  - the prefix keys (PREFIX; no mask). A per-row prefix uses ROWS = 1 and writes its gradient directly. A
    shared prefix (or a prefix table) is read with batch stride 0 and its program sums ROWS consecutive
    batch rows in a fixed order into a partial [ceil(B/ROWS), E, Hkv, P, D] fp32 buffer, which the caller
    sums over its first axis: deterministic, no atomic adds whose order changes the result. The third
    program axis is (row group, entry e of E): E = N for a prefix table, else 1.

Packed rows (constexpr PACKED; see triton_packed.py for the layout META and RANGES): every loop runs over
the keys (dq) or queries (dk/dv) that can see each other only, masked by segment (sequence keys) or
prefix-entry (prefix keys) equality.
"""

import triton
import triton.language as tl

from .triton_fwd import LOG2E, SIZES, load_tile, sequence_end, sequence_visible
from .triton_packed import entry_queries, key_block_queries, query_layout, same_segment


@triton.jit
def probabilities(q, k, lse2, visible, qk_scale, DOT_PRECISION: tl.constexpr):
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    return tl.where(visible, tl.exp2(s - lse2[:, None]), 0.0)


@triton.jit
def load_row_stats(LSE, DELTA, row, offs_m, m_ok):
    """log2-unit lse (+inf for a query that sees nothing, so its p is 0) and delta of BLOCK_M queries."""
    lse = tl.load(LSE + row + offs_m, mask=m_ok, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * LOG2E)
    delta = tl.load(DELTA + row + offs_m, mask=m_ok, other=0.0)
    return lse2, delta


@triton.jit
def dq_step(dq, q, do, k, v, lse2, delta, visible, qk_scale, DOT_PRECISION: tl.constexpr):
    p = probabilities(q, k, lse2, visible, qk_scale, DOT_PRECISION)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)


@triton.jit(do_not_specialize=SIZES)
def prefix_attention_bwd_dq(
    Q,
    K,
    V,
    PK,
    PV,
    KPM,
    META,
    DO,
    LSE,
    DELTA,
    DQ,
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
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dqb,
    stride_dqh,
    stride_dqt,
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
    do = load_tile(DO + b * stride_dob + h * stride_doh, offs_m, stride_dot, offs_d, m_ok, d_ok, UPCAST)
    lse2, delta = load_row_stats(LSE, DELTA, pid_bh * Tq, offs_m, m_ok)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    lo = 0
    hi = sequence_end(pid_m, Tq, Tk, CAUSAL, BLOCK_M)
    e_lo, e_hi = 0, 1
    if PACKED:  # as in the forward: the keys of the queries' segments, the prefix entries they name
        seg_q, ent, key_lo, key_hi, e_lo, e_hi = query_layout(META, stride_sp, b * Tk, Tk - Tq + offs_m, m_ok)
        lo = key_lo
        hi = tl.minimum(hi, key_hi)

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
            dq = dq_step(dq, q, do, k, v, lse2, delta, visible, qk_scale, DOT_PRECISION)

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
        dq = dq_step(dq, q, do, k, v, lse2, delta, visible, qk_scale, DOT_PRECISION)

    dq_ptrs = DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, (dq * scale).to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


@triton.jit(
    do_not_specialize=("B", "H", "GROUP", "Tq", "N", "SHIFT", "ROWS", "E", "stride_mb", "stride_sp", "stride_sb")
)  # as triton_fwd.SIZES: what changes from batch to batch
def prefix_attention_bwd_dkdv(
    Q,
    K,
    V,
    KPM,
    META,
    RANGES,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    stride_qb,
    stride_qh,
    stride_qt,
    stride_kb,
    stride_ke,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_ve,
    stride_vh,
    stride_vt,
    stride_mb,
    stride_sp,
    stride_sb,
    stride_dob,
    stride_doh,
    stride_dot,
    stride_dkb,
    stride_dke,
    stride_dkh,
    stride_dkt,
    stride_dvb,
    stride_dve,
    stride_dvh,
    stride_dvt,
    B,
    H,
    GROUP,
    Tq,
    N,
    SHIFT,
    D,
    scale,
    ROWS,
    E,
    CAUSAL: tl.constexpr,
    HAS_KPM: tl.constexpr,
    PACKED: tl.constexpr,
    PREFIX: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Gradients of N keys (K/V strides over the batch are 0 for a shared prefix or a table, whose entry e
    is at e * stride_ke); SHIFT = Tk - Tq; stride_sb: META's row stride (Tk)."""
    pid_n = tl.program_id(0)
    hk = tl.program_id(1)
    pid_b = tl.program_id(2)
    e = 0
    if PACKED:
        if PREFIX:  # a prefix table: axis 2 is (row group, entry e of E)
            pid_b = tl.program_id(2) // E
            e = tl.program_id(2) % E
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < N
    d_ok = offs_d < D
    qk_scale = scale * LOG2E

    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    # the first query that can see this key block (causal); earlier query blocks are skipped
    lo = 0
    if CAUSAL:
        lo = tl.maximum(pid_n * BLOCK_N - SHIFT, 0) // BLOCK_M * BLOCK_M
    for b in range(pid_b * ROWS, tl.minimum(B, pid_b * ROWS + ROWS)):
        k_base = K + b * stride_kb + e * stride_ke + hk * stride_kh
        v_base = V + b * stride_vb + e * stride_ve + hk * stride_vh
        k = load_tile(k_base, offs_n, stride_kt, offs_d, n_ok, d_ok, UPCAST)
        v = load_tile(v_base, offs_n, stride_vt, offs_d, n_ok, d_ok, UPCAST)
        key_ok = n_ok
        if HAS_KPM:
            key_ok = key_ok & (tl.load(KPM + b * stride_mb + offs_n, mask=n_ok, other=0) != 0)
        q_lo = lo
        q_hi = Tq
        if PACKED:  # only the queries that can see these keys: of their segments, or naming prefix entry e
            if PREFIX:
                q_lo, q_hi = entry_queries(RANGES, b, e, E)
            else:
                seg_k = tl.load(META + b * stride_sb + offs_n, mask=n_ok, other=-1)
                q_lo, q_hi = key_block_queries(META, stride_sp, b * stride_sb, offs_n, n_ok, Tq, SHIFT, CAUSAL)
        for g in range(0, GROUP):
            h = hk * GROUP + g
            row = (b * H + h) * Tq
            for start in range(q_lo, q_hi, BLOCK_M):
                m = start + offs_m
                m_ok = m < q_hi
                q = load_tile(Q + b * stride_qb + h * stride_qh, m, stride_qt, offs_d, m_ok, d_ok, UPCAST)
                do = load_tile(DO + b * stride_dob + h * stride_doh, m, stride_dot, offs_d, m_ok, d_ok, UPCAST)
                lse2, delta = load_row_stats(LSE, DELTA, row, m, m_ok)
                visible = m_ok[:, None] & key_ok[None, :]
                if CAUSAL:
                    visible = visible & (offs_n[None, :] <= m[:, None] + SHIFT)
                if PACKED:
                    q_pos = (b + 1) * stride_sb - Tq + m  # the queries are the last Tq positions of the row
                    if PREFIX:
                        ent = tl.load(META + 3 * stride_sp + q_pos, mask=m_ok, other=-1)
                        visible = visible & (ent == e)[:, None]
                    else:
                        seg_q = tl.load(META + q_pos, mask=m_ok, other=-1)
                        visible = visible & (seg_q[:, None] == seg_k[None, :]) & (seg_q >= 0)[:, None]
                p = probabilities(q, k, lse2, visible, qk_scale, DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
                dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=DOT_PRECISION)
                dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION)

    tile = offs_n[:, None] * stride_dkt + offs_d[None, :]
    ok = n_ok[:, None] & d_ok[None, :]
    dk_out = DK + pid_b * stride_dkb + e * stride_dke + hk * stride_dkh + tile
    tl.store(dk_out, (dk * scale).to(DK.dtype.element_ty), mask=ok)
    tile = offs_n[:, None] * stride_dvt + offs_d[None, :]
    tl.store(DV + pid_b * stride_dvb + e * stride_dve + hk * stride_dvh + tile, dv.to(DV.dtype.element_ty), mask=ok)
