"""The fused Triton kernels on packed rows (segment_ids, prefix_ids) against the float64 reference, forward
and backward, and the block skipping that packed rows are for.

Covered: causal and bidirectional; a shared, a per-row, no prefix, and a prefix table with a different
entry per sequence; sequences of length 1, a sequence filling its row, many short ones, space left over at
the end of a row (and padding between sequences); Tq < Tk with a key padding mask; block sizes; the
table's gradient bit-for-bit deterministic. Skipping: `triton_packed.key_ranges` (the keys each query block
visits) against the segment layout, and NaN planted outside those ranges, which a kernel that loaded the
block (even masked) would carry into the result. As in test_kernels_triton.py, without CUDA the kernels run
in Triton's interpreter (TRITON_INTERPRET=1 set at import), so shapes are tiny with 16-wide blocks; with CUDA
the same cases run compiled in bf16 (float32 is not launched there), all but the fp32 property sweep.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ptune_dist.kernels import dispatch, triton_impl  # noqa: E402
from ptune_dist.kernels.api import ImplUnavailable, prefix_attention  # noqa: E402
from ptune_dist.kernels.triton_packed import key_ranges, layout  # noqa: E402
from test_kernels_packed import packed_case, rows_strategy  # noqa: E402
from test_kernels_props import NAMES, run  # noqa: E402

# first: triton_env picks the interpreter; its pytestmark skips where Triton cannot run
from triton_env import DEVICE, DTYPE, TOL, interpreter_only, pytestmark  # noqa: F401

# the interpreter's reductions over the NaN planted in the skipping tests warn (numpy), harmlessly
nan_rows = pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")


def segments(rows, T):
    """segment_ids [B, T] from per-row sequence lengths (a negative length: that many padding positions);
    what a row leaves over at its end is padding (-1)."""
    seg = torch.full((len(rows), T), -1, dtype=torch.long)
    for b, lengths in enumerate(rows):
        start, s = 0, 0
        for n in lengths:
            if n > 0:
                seg[b, start : start + n] = s
                s += 1
            start += abs(n)
        assert start <= T, (rows, T)
    return seg


def packed_inputs(rows, T, prefix, Tq=None, Hq=4, Hkv=2, d=8, P=5, N=3, seed=0, entries=None):
    """float64 (q, k, v, prefix_k, prefix_v), an upstream gradient, and the packed keywords. prefix: "shared",
    "per_row", "none" or "table" (each sequence names an entry: entries[b][s], or drawn)."""
    g = torch.Generator().manual_seed(seed)
    B, Tq = len(rows), Tq or T
    seg = segments(rows, T)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    shape = {"shared": (Hkv, P, d), "per_row": (B, Hkv, P, d), "table": (N, Hkv, P, d), "none": (Hkv, 0, d)}[prefix]
    tensors = [r(B, Hq, Tq, d), r(B, Hkv, T, d), r(B, Hkv, T, d), r(*shape), r(*shape)]
    kw = dict(segment_ids=seg)
    if prefix == "table":
        per_seq = entries or [[int(torch.randint(N, (1,), generator=g)) for _ in range(T)] for _ in rows]
        ids = torch.tensor([[per_seq[b][s] if s >= 0 else 0 for s in seg[b].tolist()] for b in range(B)])
        kw["prefix_ids"] = ids[:, T - Tq :]
    return tensors, r(B, Hq, Tq, d), kw


def on(device, kw):
    return {k: v.to(device) for k, v in kw.items()}


def assert_matches_reference(tensors, up, kw, causal, mask=None, fn=None, **extra):
    got = run("triton", tensors, mask, up, causal, DTYPE, device=DEVICE, fn=fn, **on(DEVICE, kw), **extra)
    want = run("reference", tensors, mask, up, causal, torch.float64, **kw)
    for name, a, b in zip(NAMES, got, want):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m: f"{name}: {m}")


# length-1 sequences, a sequence filling its row, many short ones, space left over, padding between sequences
CORNER_ROWS = [[1, 5, 1, 17, 3], [33], [2, 1, 3, 2, 1, 1, 4, 2, 3, 1, 2], [4, -3, 9, -2, 6]]


@pytest.mark.parametrize("prefix", ["shared", "per_row", "table", "none"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_packed_rows_match_the_reference(causal, prefix):
    tensors, up, kw = packed_inputs(CORNER_ROWS, 33, prefix, seed=1)
    assert_matches_reference(tensors, up, kw, causal)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_fewer_queries_than_keys_with_a_padding_mask(causal):
    tensors, up, kw = packed_inputs([[7, 12, 9], [1, 30]], 33, "table", Tq=21, Hq=6, seed=2)
    mask = torch.rand(2, 33, generator=torch.Generator().manual_seed(3)) > 0.2
    assert_matches_reference(tensors, up, kw, causal, mask=mask)


@interpreter_only
@settings(max_examples=10, deadline=None, derandomize=True, database=None)
@given(rows=rows_strategy, causal=st.booleans(), table=st.booleans(), seed=st.integers(0, 2**16))
def test_random_packings_match_the_reference(rows, causal, table, seed):
    """The layouts of test_kernels_packed.py (1-3 rows of 1-4 sequences of length 1-6, space left over)."""
    q, k, v, pk, pv, seg, pid, _ = packed_case(rows, table, seed)
    tensors = [q, k, v, pk if table else pk[0], pv if table else pv[0]]
    kw = dict(segment_ids=seg, **({"prefix_ids": pid} if table else {}))
    up = torch.randn(q.shape, generator=torch.Generator().manual_seed(seed), dtype=q.dtype)
    assert_matches_reference(tensors, up, kw, causal)


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16)])
def test_block_sizes_are_parameters(blocks):
    tensors, up, kw = packed_inputs([[20, 3, 9, 1], [40]], 41, "table", Hq=2, Hkv=1, seed=4)
    assert_matches_reference(
        tensors, up, kw, True, fn=triton_impl.prefix_attention, block_m=blocks[0], block_n=blocks[1]
    )


@pytest.mark.parametrize("rows_per_program", [1, 3])
def test_prefix_table_gradient_is_deterministic(rows_per_program):
    """Partial sums over rows in fp32, added up in torch in a fixed order: the same bits on every run."""
    tensors, up, kw = packed_inputs([[5, 4], [9], [2, 2, 2]], 10, "table", Hq=2, Hkv=1, seed=5)
    first, again = (
        run(
            "triton",
            tensors,
            None,
            up,
            True,
            DTYPE,
            device=DEVICE,
            fn=triton_impl.prefix_attention,
            prefix_rows_per_program=rows_per_program,
            **on(DEVICE, kw),
        )
        for _ in range(2)
    )
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    want = run("reference", tensors, None, up, True, torch.float64, **kw)
    torch.testing.assert_close(first[4], want[4], **TOL)


# ---- block skipping ----


def test_query_blocks_visit_only_their_sequences_keys():
    """key_ranges: per query block, [first segment start, last segment end) of its queries (causal: cut at its
    last query); a block of padding visits nothing."""
    aligned = layout(segments([[16, 16, 32]], 64), None, 64, False)
    assert key_ranges(aligned, 64, False, 16).tolist() == [[[0, 16], [16, 32], [32, 64], [32, 64]]]
    assert key_ranges(aligned, 64, True, 16).tolist() == [[[0, 16], [16, 32], [32, 48], [32, 64]]]
    straddling = layout(segments([[10, 30]], 64), None, 64, False)  # then 24 positions of padding
    assert key_ranges(straddling, 64, False, 16).tolist() == [[[0, 40], [10, 40], [10, 40], [64, 0]]]
    assert key_ranges(straddling, 64, True, 16).tolist() == [[[0, 16], [10, 32], [10, 40], [64, 0]]]
    # 8 sequences of 8: one 16-key tile per 16-query block, against 4 (bidirectional) unpacked
    short = key_ranges(layout(segments([[8] * 8], 64), None, 64, False), 64, False, 16)
    assert short.tolist() == [[[0, 16], [16, 32], [32, 48], [48, 64]]]


@nan_rows
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_the_forward_loads_no_key_outside_its_range(causal):
    """NaN in every key/value outside key_ranges[block]: a key tile loaded, even if masked, would carry it
    (0 * NaN) into that block's output. Sequences straddle the block edges here."""
    rows = [[10, 30, 1, 5], [3, 13, 29]]
    tensors, up, kw = packed_inputs(rows, 48, "shared", Hq=2, Hkv=1, seed=6)
    pl = layout(kw["segment_ids"], None, 48, True)
    clean = run(
        "triton",
        tensors,
        None,
        up,
        causal,
        DTYPE,
        device=DEVICE,
        fn=triton_impl.prefix_attention,
        block_m=16,
        block_n=16,
        **on(DEVICE, kw),
    )[0]
    for b, blocks in enumerate(key_ranges(pl, 48, causal, 16).tolist()):
        for j, (lo, hi) in enumerate(blocks):
            poisoned = [t.clone() for t in tensors]
            outside = torch.ones(48, dtype=torch.bool)
            outside[lo : max(lo, hi)] = False
            for t in poisoned[1:3]:
                t[b, :, outside] = float("nan")
            out = run(
                "triton",
                poisoned,
                None,
                up,
                causal,
                DTYPE,
                device=DEVICE,
                fn=triton_impl.prefix_attention,
                block_m=16,
                block_n=16,
                **on(DEVICE, kw),
            )[0]
            rows_of_block = slice(16 * j, 16 * j + 16)
            assert torch.equal(out[b, :, rows_of_block], clean[b, :, rows_of_block]), (b, j, lo, hi)


@nan_rows
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_no_kernel_reads_another_sequence_or_its_prefix(causal):
    """Three sequences on 16-position block edges, each with its own prefix-table entry. NaN in every other
    sequence's q, k, v, upstream gradient and prefix entry leaves this sequence's output and gradients (q, k,
    v, its prefix entry) bit for bit as they were: the forward, dq, dk/dv and prefix-gradient kernels never
    load a block of another sequence nor another sequence's prefix."""
    spans = [(0, 16), (16, 32), (32, 64)]
    tensors, up, kw = packed_inputs([[16, 16, 32]], 64, "table", Hq=2, Hkv=1, seed=7, entries=[[0, 1, 2]])
    opts = dict(device=DEVICE, fn=triton_impl.prefix_attention, block_m=16, block_n=16, **on(DEVICE, kw))
    clean = run("triton", tensors, None, up, causal, DTYPE, **opts)
    for s, (lo, hi) in enumerate(spans):
        poisoned, up_poisoned = [t.clone() for t in tensors], up.clone()
        for t in (*poisoned[:3], up_poisoned):
            t[:, :, :lo] = t[:, :, hi:] = float("nan")
        for t in poisoned[3:]:
            t[[e for e in range(3) if e != s]] = float("nan")
        got = run("triton", poisoned, None, up_poisoned, causal, DTYPE, **opts)
        for name, a, b in zip(NAMES, got, clean):
            part = (slice(None), slice(None), slice(lo, hi)) if name in ("out", "dq", "dk", "dv") else s
            assert torch.equal(a[part], b[part]), (s, name)


# ---- inputs and dispatch ----


def test_a_segment_split_in_two_runs_is_refused():
    q = torch.zeros(1, 2, 6, 8, device=DEVICE, dtype=DTYPE)
    seg = torch.tensor([[0, 0, 1, 1, 0, -1]], device=DEVICE)
    with pytest.raises(ValueError, match="segment_ids row 0: segment 0 is split"):
        prefix_attention(q, q, q, causal=True, impl="triton", segment_ids=seg)
    # padding may lie anywhere: between sequences is fine
    prefix_attention(
        q, q, q, causal=True, impl="triton", segment_ids=torch.tensor([[0, -1, 1, 1, -1, 2]], device=DEVICE)
    )


def test_dispatch_runs_packed_rows_on_triton_and_auto_keeps_sdpa_on_cpu():
    assert "triton" in dispatch.PACKED
    q = torch.zeros(1, 2, 4, 8)
    seg = torch.tensor([[0, 0, 1, -1]])
    assert dispatch._packed_impl("auto", q) == "sdpa"
    assert dispatch._packed_impl("auto", q.to(torch.bfloat16)) == "sdpa"  # CPU: the interpreter is never picked
    for name in ("split", "flash"):
        with pytest.raises(ImplUnavailable, match="packed rows"):
            prefix_attention(q, q, q, causal=True, impl=name, segment_ids=seg)
    with pytest.raises(ImplUnavailable, match="dropout"):
        prefix_attention(q, q, q, causal=True, impl="triton", segment_ids=seg, dropout_p=0.1)


# ---- GPU-sized (CUDA only) ----

requires_cuda = pytest.mark.skipif(
    DEVICE != "cuda",
    reason="needs CUDA: the Triton kernels run compiled only on "
    "a GPU (here they run in the CPU interpreter, far too slow for these shapes)",
)


@pytest.mark.gpu
@requires_cuda
def test_packed_bf16_at_gpu_sizes():
    """Llama-1B-like heads, rows of 2048 packed with a log-normal-ish mix and a 4-task prefix table, bf16,
    against float64 on the same bf16-rounded values: within 1e-2 of each tensor's largest magnitude."""
    g = torch.Generator().manual_seed(31)
    rows = []
    for _ in range(2):
        lengths, left = [], 2048
        while left > 64:
            n = min(left - 32, int(torch.randint(1, 600, (1,), generator=g)))
            lengths.append(n)
            left -= n
        rows.append(lengths)
    tensors, up, kw = packed_inputs(rows, 2048, "table", Hq=32, Hkv=8, d=64, P=32, N=4, seed=32)
    rounded = [t.to(torch.bfloat16).double() for t in tensors]
    up = up.to(torch.bfloat16).double()
    got = run("triton", rounded, None, up, True, torch.bfloat16, device=DEVICE, **on(DEVICE, kw))
    want = run("reference", rounded, None, up, True, torch.float64, device=DEVICE, **on(DEVICE, kw))
    for what, a, b in zip(NAMES, got, want):
        err, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert torch.isfinite(a).all() and err <= 1e-2 * scale, f"{what}: error {err:.3g}, max |ref| {scale:.3g}"


@pytest.mark.gpu
@requires_cuda
def test_auto_picks_triton_for_packed_bf16_on_cuda():
    q = torch.zeros(1, 4, 8, 64, device=DEVICE, dtype=torch.bfloat16)
    assert dispatch._packed_impl("auto", q) == "triton"
    assert dispatch._packed_impl("auto", q.float()) == "sdpa"
    assert dispatch._packed_impl("auto", q, dropout_p=0.1) == "sdpa"


def test_layout_is_built_once_per_batch_not_per_layer():
    """Every layer passes the same segment_ids / prefix_ids objects: one layout for all; a new tensor (a new
    batch, even with the same values and address) or one changed in place gets its own."""
    from ptune_dist.kernels.triton_packed import cached_layout

    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    ids = torch.tensor([[0, 0, 1, 1, 1, 0]])
    first = cached_layout(seg, ids, 6, True, 2)
    assert cached_layout(seg, ids, 6, True, 2) is first
    assert cached_layout(seg, ids, 6, True, 3) is not first  # other arguments
    again = cached_layout(seg.clone(), ids, 6, True, 2)
    assert again is not first and torch.equal(again.meta, first.meta)
    seg[0, 5] = 1  # in place: its version moves
    changed = cached_layout(seg, ids, 6, True, 2)
    assert changed is not again and int(changed.meta[0, 0, 5]) == 1
