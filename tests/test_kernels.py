"""prefix_attention: the SDPA path against the float64 plain-PyTorch reference, forward and backward; the
dispatch (names, availability, auto); the flash-attn wrapper against a CPU emulation of flash-attn."""

import contextlib
import importlib.machinery
import itertools
import sys
import types
from unittest import mock

import pytest
import torch

from ptune_dist.kernels.api import prefix_attention


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


CASES = list(
    itertools.product([(3, 3), (9, 3), (8, 1)], [0, 4, 11], [False, True], [None, "left", "right"], [True, False])
)


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
    prefix_attention(
        q.detach(), k.detach(), v.detach(), rows, pv.detach().expand(3, -1, -1, -1), causal=True
    ).sum().backward()
    torch.testing.assert_close(shared, rows.grad.sum(0))


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(k=torch.zeros(2, 4, 5, 8)), "multiple of Hkv"),
        (dict(pk=torch.zeros(2, 4, 8)), "prefix_k"),
        (dict(mask=torch.ones(2, 4, dtype=torch.bool)), "key_padding_mask"),
    ],
)
def test_shape_errors(bad, match):
    q, k, v, pk, pv, mask = make(2, 6, 3, 5, 5, 4, 8, False, "left", dtype=torch.float32)
    args = dict(k=k, pk=pk, mask=mask) | bad
    with pytest.raises(ValueError, match=match):
        prefix_attention(
            q,
            args["k"],
            args["k"] if "k" in bad else v,
            args["pk"],
            args["pk"] if "pk" in bad else pv,
            causal=True,
            key_padding_mask=args["mask"],
        )


# ---- the dispatch: names, availability, auto ----

from hypothesis import given, settings  # noqa: E402

from ptune_dist.kernels import flash as flash_impl  # noqa: E402
from ptune_dist.kernels import split as split_impl  # noqa: E402
from ptune_dist.kernels.api import CHOICES, ImplUnavailable, available, resolve_impl  # noqa: E402
from test_kernels_props import assert_matches_reference, cases  # noqa: E402


def test_every_implementation_is_a_config_choice():
    assert set(CHOICES) == {"auto", "reference", "sdpa", "split", "triton", "flash"}
    from ptune_dist.config import load_config

    assert load_config([], ["model.attention=split"]).model.attention == "split"
    with pytest.raises(Exception, match="attention"):
        load_config([], ["model.attention=fastest"])


def test_unknown_impl_and_float_mask_are_named():
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="'fastest' is not one of"):
        prefix_attention(q, q, q, causal=True, impl="fastest")
    with pytest.raises(ValueError, match="additive float mask"):
        prefix_attention(q, q, q, causal=True, key_padding_mask=torch.zeros(1, 3))


def test_integer_padding_mask_means_real_tokens():
    q, k, v, pk, pv, mask = make(2, 4, 2, 5, 5, 3, 8, False, "left")
    as_bool = prefix_attention(q, k, v, pk, pv, causal=True, key_padding_mask=mask)
    as_long = prefix_attention(q, k, v, pk, pv, causal=True, key_padding_mask=mask.long())
    assert torch.equal(as_bool, as_long)


def test_unavailable_impls_say_why_and_auto_picks_sdpa_on_cpu():
    q = torch.zeros(1, 2, 3, 8)
    assert {"reference", "sdpa", "split"} <= set(available(q))
    with pytest.raises(ImplUnavailable, match="flash-attn"):
        prefix_attention(q, q, q, causal=True, impl="flash")
    with pytest.raises(ImplUnavailable, match="dropout"):
        prefix_attention(q, q, q, causal=True, impl="split", dropout_p=0.1)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        assert resolve_impl("auto", q.to(dtype)) == "sdpa"
    assert resolve_impl("auto", q, dropout_p=0.1) == "sdpa"


def test_dropout_still_works_through_auto():
    q, k, v, pk, pv, _ = make(2, 4, 2, 5, 5, 3, 8, False, None, dtype=torch.float32)
    torch.manual_seed(0)
    out = prefix_attention(q, k, v, pk, pv, causal=True, dropout_p=0.5)
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, prefix_attention(q, k, v, pk, pv, causal=True))


@pytest.mark.parametrize("impl", ["sdpa", "split"])
def test_split_and_sdpa_return_zeros_for_a_query_that_sees_nothing(impl):
    q, k, v, _, _, _ = make(2, 3, 1, 4, 4, 0, 8, False, None)
    mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    out = prefix_attention(q, k, v, causal=True, key_padding_mask=mask, impl=impl)
    assert torch.equal(out[0, :, :2], torch.zeros_like(out[0, :, :2]))  # queries 0, 1 of row 0 see no key
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.equal(q.grad[0, :, :2], torch.zeros_like(q.grad[0, :, :2]))


def test_split_shared_prefix_gradient_is_deterministic():
    q, k, v, pk, pv, mask = make(4, 6, 2, 9, 9, 7, 16, False, "left", dtype=torch.float32)
    runs = []
    for _ in range(2):
        pk.grad = None
        prefix_attention(q, k, v, pk, pv, causal=True, key_padding_mask=mask, impl="split").sum().backward()
        runs.append(pk.grad.clone())
    assert torch.equal(*runs)


def test_split_refuses_cuda_and_names_what_to_use():
    """On CUDA split's math path is far slower than the fused kernels: refused, naming them."""
    if torch.cuda.is_available():
        q = torch.zeros(1, 2, 3, 8, device="cuda")
    else:  # what unavailable() reads of a CUDA tensor
        q = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32, is_floating_point=lambda: True)
    why = split_impl.unavailable(q)
    assert why and "CPU-only" in why and all(name in why for name in ("triton", "sdpa", "flash", "auto"))
    with pytest.raises(ImplUnavailable, match="CPU-only"):
        resolve_impl("split", q)


# ---- flash: the real library needs CUDA; its wrapper's packing logic is checked against an emulation ----


def _attend(q, k, v, scale, causal):
    """flash-attn's semantics for one sequence: q [Tq, Hq, d], k/v [Tk, Hkv, d], causal bottom-right."""
    Tq, Hq, _ = q.shape
    Tk, Hkv, _ = k.shape
    if Tq == 0:
        return q.clone()
    k = k.repeat_interleave(Hq // Hkv, 1)
    v = v.repeat_interleave(Hq // Hkv, 1)
    s = torch.einsum("qhd,khd->hqk", q, k) * scale
    seen = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        seen = torch.tril(seen, diagonal=Tk - Tq)
    p = torch.softmax(s.masked_fill(~seen, float("-inf")), -1).nan_to_num(0.0)
    return torch.einsum("hqk,khd->qhd", p, v)


class FakeFlashAttn:
    """CPU stand-in for flash_attn's two functions (same arguments, same layout)."""

    __version__ = "2.8.3"

    @staticmethod
    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        return torch.stack([_attend(q[b], k[b], v[b], softmax_scale, causal) for b in range(q.shape[0])])

    @staticmethod
    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        assert int((cu_q[1:] - cu_q[:-1]).max()) <= max_q and int((cu_k[1:] - cu_k[:-1]).max()) <= max_k
        parts = [
            _attend(q[cu_q[i] : cu_q[i + 1]], k[cu_k[i] : cu_k[i + 1]], v[cu_k[i] : cu_k[i + 1]], softmax_scale, causal)
            for i in range(len(cu_q) - 1)
        ]
        return torch.cat(parts)


@contextlib.contextmanager
def fake_flash_installed():
    """`import flash_attn` finds the emulation, and the wrapper's CUDA/dtype check is lifted."""
    mod = types.ModuleType("flash_attn")
    mod.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    for name in ("__version__", "flash_attn_func", "flash_attn_varlen_func"):
        setattr(mod, name, getattr(FakeFlashAttn, name))
    # only the one entry: patch.dict(sys.modules) would also drop every module first imported inside
    # the block (torch imports some lazily, and importing those twice fails)
    saved = sys.modules.get("flash_attn")
    sys.modules["flash_attn"] = mod
    try:
        with mock.patch.object(flash_impl, "unavailable", lambda q, dropout_p=0.0: None):
            yield
    finally:
        if saved is None:
            sys.modules.pop("flash_attn", None)
        else:
            sys.modules["flash_attn"] = saved


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(cases())
def test_flash_wrapper_packs_prefix_and_padding_right(case):
    """keys = [prefix; real keys] per row, real queries causal (bottom-right), padded queries as the reference."""
    if case["pad"] == "scattered":  # flash takes one run of real tokens per row
        case = case | {"pad": "left"}
    with fake_flash_installed():
        assert_matches_reference(case, "flash", fn=flash_impl.prefix_attention)


@pytest.mark.parametrize(
    "case",
    [
        dict(B=1, Hq=1, Hkv=1, Tq=2, Tk=1, P=0, d=4, per_row=False, pad="left", causal=False, seed=2),
        dict(B=2, Hq=3, Hkv=1, Tq=7, Tk=3, P=2, d=4, per_row=True, pad="right", causal=False, seed=5),
    ],
)
def test_flash_wrapper_bidirectional_queries_beyond_the_keys(case):
    """More bidirectional queries than keys, with padding (found by hypothesis): each sees every real key."""
    with fake_flash_installed():
        assert_matches_reference(case, "flash", fn=flash_impl.prefix_attention)


def test_flash_refuses_padding_that_is_not_one_run():
    q, k, v, pk, pv, _ = make(1, 2, 2, 5, 5, 2, 8, False, None)
    mask = torch.tensor([[True, False, True, True, True]])
    with fake_flash_installed(), pytest.raises(ValueError, match="contiguous"):
        flash_impl.prefix_attention(q, k, v, pk, pv, causal=True, key_padding_mask=mask, scale=0.3)


@pytest.mark.skipif(
    not torch.cuda.is_available()
    or flash_impl.unavailable(torch.empty(1, device="cuda", dtype=torch.float16)) is not None
    if torch.cuda.is_available()
    else True,
    reason="flash-attn needs CUDA and an installed flash-attn (it cannot be built on this CPU machine)",
)
def test_flash_on_cuda():
    q, k, v, pk, pv, mask = make(2, 9, 3, 33, 33, 16, 64, False, "left", dtype=torch.float16)
    to = [x.detach().cuda().requires_grad_() if x is not None else None for x in (q, k, v, pk, pv)]
    out = prefix_attention(*to, causal=True, key_padding_mask=mask.cuda(), impl="flash")
    ref = prefix_attention(
        *[x.detach().double() for x in (q, k, v, pk, pv)], causal=True, key_padding_mask=mask, impl="reference"
    )
    torch.testing.assert_close(out.double().cpu(), ref, rtol=2e-2, atol=2e-2)
