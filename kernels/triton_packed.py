"""Packed rows in the Triton kernels: the per-position layout the wrapper builds (torch) and the helpers
the kernels read it with (triton.jit). The kernels take packed rows when their constexpr PACKED is set;
with it unset none of this is read and the kernels compute exactly what they did without it.

The layout, `PackedLayout.meta`: int32 [4, B, Tk], planes
    0  segment id of each position (-1: padding)
    1  first position of its segment (Tk for padding)
    2  one past the last position of its segment (0 for padding)
    3  at the query positions (the last Tq): the prefix entry the query sees (-1: none: padding, or P = 0);
       0 for a shared or per-row prefix, prefix_ids for a prefix table; -1 before the queries.
Segments must be contiguous runs of positions (`layout` checks; padding may lie anywhere), so planes 1-2
bound what a query can see. The prefix is never copied: a table [N, Hkv, P, d] is read in place, entry e
at e * stride(0) (its row stride is 0), as a shared prefix is read with row stride 0.

Block skipping (forward and dq: one program per BLOCK_M queries): the sequence keys visited are
[min segment start, max segment end) of the block's queries (causal: cut at its last query), so key blocks
that lie wholly in other sequences are never loaded; inside that range keys are masked by segment
equality. The prefix: the block loops over the table entries min..max its queries name (a shared or
per-row prefix: the one entry 0), masked by entry equality.

dK/dV (one program per BLOCK_N keys): sequence keys loop over the queries [min segment start, max segment
end) of the key block (causal: from its first key), masked by segment equality. Prefix keys: one program
per (key block, KV head, group of rows, table entry e) loops, in each row, over the queries from the first
to the last that name e (`PackedLayout.ranges`), masked by entry equality; the table's gradient goes to fp32
partial sums [row groups, N, Hkv, P, d] that the caller adds up in a fixed order (deterministic, no atomics).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

BIG = tl.constexpr(1 << 30)  # "no position": larger than any position or entry


class PackedLayout(NamedTuple):
    meta: torch.Tensor  # int32 [4, B, Tk]: see the module docstring
    ranges: torch.Tensor  # int32 [B, E, 2]: per row and prefix entry, the first query naming it and one past the last
    table: bool  # the prefix is a table [N, Hkv, P, d] indexed by prefix_ids (E = N); else E = 1


def layout(segment_ids: torch.Tensor, prefix_ids, Tq: int, has_prefix: bool, entries: int = 1) -> PackedLayout:
    """The layout of packed rows; ValueError (naming segment_ids) when a segment is not one contiguous run."""
    seg = segment_ids.to(torch.int64)
    B, Tk = seg.shape
    pos = torch.arange(Tk, device=seg.device).expand(B, Tk)
    real = seg >= 0
    starts = seg != F.pad(seg[:, :-1], (1, 0), value=-2)
    ends = seg != F.pad(seg[:, 1:], (0, 1), value=-2)
    _check_contiguous(seg, starts & real)
    first = torch.where(starts, pos, 0).cummax(1).values
    last = torch.where(ends, pos + 1, Tk).flip(1).cummin(1).values.flip(1)
    entry = torch.full_like(seg, -1)
    q_real = real[:, Tk - Tq :]
    if has_prefix:
        chosen = prefix_ids.to(torch.int64) if prefix_ids is not None else torch.zeros_like(q_real, dtype=torch.int64)
        entry[:, Tk - Tq :] = torch.where(q_real, chosen, -1)
    meta = torch.stack([seg, torch.where(real, first, Tk), torch.where(real, last, 0), entry]).to(torch.int32)
    E = entries if prefix_ids is not None else 1
    idx = entry[:, Tk - Tq :] + 1  # 0: no entry
    i = torch.arange(Tq, device=seg.device).expand(B, Tq)
    lo = torch.full((B, E + 1), Tq, dtype=torch.int64, device=seg.device).scatter_reduce(1, idx, i, "amin")
    hi = torch.zeros(B, E + 1, dtype=torch.int64, device=seg.device).scatter_reduce(1, idx, i + 1, "amax")
    ranges = torch.stack([lo[:, 1:], hi[:, 1:]], dim=-1).to(torch.int32).contiguous()
    return PackedLayout(meta.contiguous(), ranges, prefix_ids is not None)


_LAST: list = []  # the last layout built: [(weak references to its segment_ids and prefix_ids, versions, args, layout)]


def cached_layout(segment_ids: torch.Tensor, prefix_ids, Tq: int, has_prefix: bool, entries: int = 1) -> PackedLayout:
    """`layout`, built once for the same tensors: every layer of a forward passes the same segment_ids and
    prefix_ids objects, and building it costs a dozen small kernels.
    Identity, not address: a new batch is a new tensor even where the allocator reuses the memory."""
    tensors = (segment_ids, prefix_ids)
    args = (Tq, has_prefix, entries, tuple(None if t is None else t._version for t in tensors))
    if _LAST:
        refs, last_args, pl = _LAST[0]
        if last_args == args and all(
            (r is None and t is None) or (r is not None and r() is t) for r, t in zip(refs, tensors)
        ):
            return pl
    pl = layout(segment_ids, prefix_ids, Tq, has_prefix, entries)
    _LAST[:] = [(tuple(None if t is None else weakref.ref(t) for t in tensors), args, pl)]
    return pl


def _check_contiguous(seg, run_starts):
    """Every segment id >= 0 of a row must be one run of positions. On a GPU this is a device-side assert (the
    host does not wait for the answer: data/packing.py makes contiguous runs); on the CPU a ValueError naming
    the row and the segment."""
    runs = run_starts.sum(1)
    srt = seg.sort(1).values
    distinct = ((srt[:, 1:] != srt[:, :-1]) & (srt[:, 1:] >= 0)).sum(1) + (srt[:, 0] >= 0)
    if seg.device.type != "cpu":
        torch._assert_async(
            (runs == distinct).all(),
            "triton prefix attention: a packed sequence in segment_ids "
            "is split into several runs of positions; the Triton kernels take each as one run",
        )
        return
    bad = (runs != distinct).nonzero()
    if bad.numel():
        b = int(bad[0, 0])
        split = int((torch.bincount(seg[b][run_starts[b]]) > 1).nonzero()[0, 0])
        raise ValueError(
            f"triton prefix attention: segment_ids row {b}: segment {split} is split into several "
            "runs of positions; the Triton kernels take each packed sequence as one contiguous run"
        )


def key_ranges(pl: PackedLayout, Tq: int, causal: bool, block_m: int) -> torch.Tensor:
    """int64 [B, ceil(Tq / block_m), 2]: the sequence keys [lo, hi) the forward and dq kernels visit for each
    query block (hi <= lo: none), computed as `query_layout` does; for tests and for reading the design."""
    B, Tk = pl.meta.shape[1:]
    blocks = triton.cdiv(Tq, block_m)
    pad = blocks * block_m - Tq
    lo = F.pad(pl.meta[1, :, Tk - Tq :].long(), (0, pad), value=1 << 30).view(B, blocks, block_m).amin(-1)
    hi = F.pad(pl.meta[2, :, Tk - Tq :].long(), (0, pad), value=0).view(B, blocks, block_m).amax(-1)
    if causal:
        last = torch.arange(1, blocks + 1, device=hi.device) * block_m + Tk - Tq
        hi = torch.minimum(hi, last.clamp(max=Tk))
    return torch.stack([lo, hi], dim=-1)


@triton.jit
def query_layout(META, stride_sp, row, pos, m_ok):
    """Of the queries at key positions `pos` of a row (row: its offset in META): segment ids, prefix entries
    (-1: none), the key range [lo, hi) their segments cover, and the entries [e_lo, e_hi) they name."""
    seg = tl.load(META + row + pos, mask=m_ok, other=-1)
    lo = tl.min(tl.load(META + stride_sp + row + pos, mask=m_ok, other=BIG), 0)
    hi = tl.max(tl.load(META + 2 * stride_sp + row + pos, mask=m_ok, other=0), 0)
    ent = tl.load(META + 3 * stride_sp + row + pos, mask=m_ok, other=-1)
    e_lo = tl.min(tl.where(ent >= 0, ent, BIG), 0)
    e_hi = tl.max(ent, 0) + 1
    return seg, ent, lo, hi, e_lo, e_hi


@triton.jit
def same_segment(META, row, seg_q, n, n_ok):
    """[len(seg_q), len(n)]: query and key n lie in the same segment (not padding)."""
    seg_k = tl.load(META + row + n, mask=n_ok, other=-1)
    return (seg_q[:, None] == seg_k[None, :]) & (seg_q >= 0)[:, None]


@triton.jit
def key_block_queries(META, stride_sp, row, offs_n, n_ok, Tq, shift, CAUSAL: tl.constexpr):
    """The queries [q_lo, q_hi) (query indices; shift = Tk - Tq) that may see the keys offs_n of a row."""
    lo = tl.min(tl.load(META + stride_sp + row + offs_n, mask=n_ok, other=BIG), 0)
    hi = tl.max(tl.load(META + 2 * stride_sp + row + offs_n, mask=n_ok, other=0), 0)
    if CAUSAL:
        lo = tl.maximum(lo, tl.min(tl.where(n_ok, offs_n, BIG), 0))
    return tl.maximum(lo - shift, 0), tl.minimum(hi - shift, Tq)


@triton.jit
def entry_queries(RANGES, b, e, E):
    """The queries [q_lo, q_hi) of row b that name prefix entry e (of E)."""
    q_lo = tl.load(RANGES + (b * E + e) * 2)
    q_hi = tl.load(RANGES + (b * E + e) * 2 + 1)
    return q_lo, q_hi
