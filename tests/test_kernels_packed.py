"""Prefix attention over packed rows (kernels: segment_ids, prefix_ids): every sequence of a packed row
gets exactly what it gets alone (its own keys, causal or not, and its own prefix: shared, or its entry of
a prefix table), padding gets zeros, and sdpa matches the float64 reference forward and backward.
Segment boundaries covered: sequences of length 1, a sequence filling its row, many short ones, space
left over at the end of a row."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptune_dist.kernels.api import ImplUnavailable, prefix_attention

Hq, Hkv, d, P, N = 4, 2, 8, 3, 3


def packed_case(rows, table, seed, dtype=torch.float64):
    """q/k/v of packed rows (rows: per row, the lengths of its sequences; T = the longest row + 1 so every row
    has space left over), segment ids, and per query the prefix-table entry of its sequence."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(rows), max(sum(r) for r in rows) + 1
    q, k, v = (torch.randn(B, h, T, d, generator=g, dtype=dtype) for h in (Hq, Hkv, Hkv))
    pk, pv = (torch.randn(N if table else 1, Hkv, P, d, generator=g, dtype=dtype) for _ in range(2))
    seg = torch.full((B, T), -1, dtype=torch.long)
    pid = torch.zeros(B, T, dtype=torch.long)
    spans = []
    for b, lengths in enumerate(rows):
        start = 0
        for s, n in enumerate(lengths):
            seg[b, start : start + n] = s
            entry = int(torch.randint(N, (1,), generator=g)) if table else 0
            pid[b, start : start + n] = entry
            spans.append((b, start, n, entry))
            start += n
    return q, k, v, pk, pv, seg, pid, spans


rows_strategy = st.lists(st.lists(st.integers(1, 6), min_size=1, max_size=4), min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, causal=st.booleans(), table=st.booleans(), seed=st.integers(0, 2**16))
def test_each_packed_sequence_sees_what_it_sees_alone(rows, causal, table, seed):
    q, k, v, pk, pv, seg, pid, spans = packed_case(rows, table, seed)
    if table:
        out = prefix_attention(q, k, v, pk, pv, causal=causal, impl="reference", segment_ids=seg, prefix_ids=pid)
    else:
        out = prefix_attention(q, k, v, pk[0], pv[0], causal=causal, impl="reference", segment_ids=seg)
    for b, start, n, entry in spans:
        part = slice(start, start + n)
        alone = prefix_attention(
            q[b : b + 1, :, part],
            k[b : b + 1, :, part],
            v[b : b + 1, :, part],
            pk[entry],
            pv[entry],
            causal=causal,
            impl="reference",
        )
        torch.testing.assert_close(out[b : b + 1, :, part], alone, rtol=1e-12, atol=1e-12)
    padding = (seg < 0)[:, None, :, None].expand_as(out)
    assert bool((out[padding] == 0).all())


@settings(max_examples=25, deadline=None)
@given(rows=rows_strategy, causal=st.booleans(), table=st.booleans(), seed=st.integers(0, 2**16))
def test_sdpa_matches_the_reference_forward_and_backward(rows, causal, table, seed):
    base = packed_case(rows, table, seed, dtype=torch.float32)
    results = []
    for impl in ("reference", "sdpa"):
        q, k, v, pk, pv = (t.clone().requires_grad_() for t in base[:5])
        seg, pid = base[5], base[6]
        pk_in, pv_in = (pk, pv) if table else (pk[0], pv[0])
        out = prefix_attention(
            q, k, v, pk_in, pv_in, causal=causal, impl=impl, segment_ids=seg, prefix_ids=pid if table else None
        )
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), q.grad, k.grad, v.grad, pk.grad, pv.grad))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_a_row_filled_by_one_sequence_is_plain_attention():
    q, k, v, pk, pv, _, _, _ = packed_case([[5]], table=False, seed=1)
    seg = torch.zeros(1, q.shape[2], dtype=torch.long)
    packed = prefix_attention(q, k, v, pk[0], pv[0], causal=True, impl="sdpa", segment_ids=seg)
    torch.testing.assert_close(packed, prefix_attention(q, k, v, pk[0], pv[0], causal=True, impl="reference"))


def test_packed_inputs_are_checked_and_other_kernels_refuse_by_name():
    q, k, v, pk, pv, seg, pid, _ = packed_case([[2, 3]], table=True, seed=2)
    with pytest.raises(ValueError, match="prefix_ids index a prefix table"):
        prefix_attention(q, k, v, pk, pv, causal=True, prefix_ids=pid)
    # a value check, made where the values are (on a GPU a device-side assert: the host does not wait for it)
    with pytest.raises(RuntimeError, match="prefix_ids reach past the prefix table's 3 entries"):
        prefix_attention(q, k, v, pk, pv, causal=True, segment_ids=seg, prefix_ids=pid + 3)
    with pytest.raises(ValueError, match="segment_ids"):
        prefix_attention(q, k, v, pk[0], pv[0], causal=True, segment_ids=seg[:, :-1])
    with pytest.raises(ImplUnavailable, match="packed rows"):
        prefix_attention(q, k, v, pk[0], pv[0], causal=True, impl="split", segment_ids=seg)
