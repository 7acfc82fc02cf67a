"""prefix_attention: the SDPA path against the float64 plain-PyTorch reference, forward and backward."""

import itertools

import pytest
import torch

from ptune_dist.kernels import prefix_attention


def make(B, Hq, Hkv, Tq, Tk, P, d, per_row, pad, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = lambda *s: torch.randn(*s, generator=g, dtype=dtype).requires_grad_()  # noqa: E731
    q, k, v = t(B, Hq, Tq, d), t(B, Hkv, Tk, d), t(B, Hkv, Tk, d)
    shape = (B, Hkv, P, d) if per_row else (Hkv, P, d)
    pk, pv = (t(*shape), t(*shape)) if P else (None, None)
    mask = None
    if pad:
        mask = torch.ones(B, Tk, dtype=torch.bool)
        mask[0, :2] = False if pad == "left" else mask[0, :2]
        if pad == "right":
            mask[0, -2:] = False
    return q, k, v, pk, pv, mask


CASES = list(itertools.product([(3, 3), (9, 3), (8, 1)], [0, 4, 11], [False, True], [None, "left", "right"],
                               [True, False]))


@pytest.mark.parametrize("heads, P, per_row, pad, causal", CASES)
def test_sdpa_matches_reference(heads, P, per_row, pad, causal):
    Hq, Hkv = heads
    inputs = make(2, Hq, Hkv, 6, 6, P, 8, per_row, pad)
    outs = {}
    for impl in ("reference", "sdpa"):
        for x in inputs:
            if x is not None and x.grad is not None:
                x.grad = None
        q, k, v, pk, pv, mask = inputs
        o = prefix_attention(q, k, v, pk, pv, causal=causal, key_padding_mask=mask, impl=impl)
        (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum().backward()
        outs[impl] = [o.detach()] + [x.grad.clone() for x in (q, k, v, pk, pv) if x is not None]
    for a, b in zip(outs["reference"], outs["sdpa"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_decode_step_against_cache():
    """T_q = 1 query at the end of T_k keys (bottom-right causal) equals the last row of the full pass."""
    q, k, v, pk, pv, _ = make(2, 9, 3, 7, 7, 5, 8, False, None)
    full = prefix_attention(q, k, v, pk, pv, causal=True)
    last = prefix_attention(q[:, :, -1:], k, v, pk, pv, causal=True)
    torch.testing.assert_close(full[:, :, -1:], last)


def test_prefix_is_seen_by_every_query_and_no_key_means_zero():
    q, k, v, pk, pv, _ = make(1, 2, 2, 3, 3, 2, 4, False, None)
    mask = torch.zeros(1, 3, dtype=torch.bool)  # every sequence key padded
    with_prefix = prefix_attention(q, k, v, pk, pv, causal=True, key_padding_mask=mask, impl="reference")
    alone = prefix_attention(q, pk[None], pv[None], causal=False, impl="reference")  # attend to the prefix only
    torch.testing.assert_close(with_prefix, alone)
    for impl in ("reference", "sdpa"):
        none = prefix_attention(q, k, v, causal=True, key_padding_mask=mask, impl=impl)
        assert torch.equal(none, torch.zeros_like(none))


def test_shared_prefix_gradient_is_summed_over_rows():
    q, k, v, pk, pv, _ = make(3, 4, 2, 5, 5, 3, 8, False, None)
    prefix_attention(q, k, v, pk, pv, causal=True).sum().backward()
    shared = pk.grad.clone()
    rows = pk.detach().expand(3, -1, -1, -1).clone().requires_grad_()
    prefix_attention(q.detach(), k.detach(), v.detach(), rows, pv.detach().expand(3, -1, -1, -1), causal=True).sum().backward()
    torch.testing.assert_close(shared, rows.grad.sum(0))


@pytest.mark.parametrize("bad, match", [
    (dict(k=torch.zeros(2, 4, 5, 8)), "multiple of Hkv"),
    (dict(pk=torch.zeros(2, 4, 8)), "prefix_k"),
    (dict(mask=torch.ones(2, 4, dtype=torch.bool)), "key_padding_mask"),
])
def test_shape_errors(bad, match):
    q, k, v, pk, pv, mask = make(2, 6, 3, 5, 5, 4, 8, False, "left", dtype=torch.float32)
    args = dict(k=k, pk=pk, mask=mask) | bad
    with pytest.raises(ValueError, match=match):
        prefix_attention(q, args["k"], args["k"] if "k" in bad else v, args["pk"], args["pk"] if "pk" in bad else pv,
                         causal=True, key_padding_mask=args["mask"])
