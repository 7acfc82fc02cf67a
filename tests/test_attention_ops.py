"""The attention implementations as torch.library custom operators: `torch.library.opcheck` passes for each
(schema, fake implementation against the real one, autograd registration, AOT dispatch), the model's attention
call traces under FakeTensorMode on a fake CUDA device (nothing allocated, nothing launched), and it compiles
with torch.compile without a graph break (fullgraph=True; inductor for one case, aot_eager for the rest, which
traces the same graph and its backward in a fraction of the time).

The Triton ops run in Triton's interpreter here (tiny shapes); on a GPU the same checks run compiled.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.library import opcheck

from ptune_dist.kernels import reference, sdpa, triton_impl  # noqa: F401  (registers the ops)
from ptune_dist.kernels.triton_packed import layout
from ptune_dist.model.attention import PrefixKV, prefix_attention_forward
from triton_env import DEVICE  # noqa: F401  (first: it picks the interpreter)

ops = torch.ops.ptune


def on(device, t, grad=False):
    """`t` on `device` (under FakeTensorMode a cuda or meta tensor is made there: nothing moves to a fake device)."""
    t = torch.empty_like(t, device=device) if device != "cpu" else t
    return t.requires_grad_(grad) if t.is_floating_point() else t


def tensors(dtype=torch.float32, B=2, Hq=4, Hkv=2, T=9, P=5, d=16, per_row=False, device="cpu", grad=True):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: on(device, torch.randn(*s, generator=g, dtype=dtype), grad)  # noqa: E731
    prefix = (B, Hkv, P, d) if per_row else (Hkv, P, d)
    return r(B, Hq, T, d), r(B, Hkv, T, d), r(B, Hkv, T, d), r(*prefix), r(*prefix)


SEG = torch.tensor([[0, 0, 0, 1, 1, 1, 1, -1, -1], [0, 0, 1, 1, 1, 1, 2, 2, 2]])  # two packed rows
IDS = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 1, 1, 1]])  # each sequence's prefix entry
LAYOUT = layout(SEG, IDS, 9, True, 2)  # the Triton kernels' view of them (triton_packed.py)


@pytest.mark.parametrize("case", ["shared", "per_row_kpm", "packed_table"])
def test_opcheck_triton(case):
    q, k, v, pk, pv = tensors(per_row=case == "per_row_kpm")
    kpm, meta, ranges, table = None, None, None, False
    if case == "per_row_kpm":
        kpm = (torch.arange(9) >= torch.tensor([[2], [0]])).to(torch.uint8)
    if case == "packed_table":
        pk, pv = (torch.randn(2, *x.shape, dtype=x.dtype).requires_grad_() for x in (pk, pv))
        meta, ranges, table = LAYOUT
    opcheck(ops.triton_fwd.default, (q, k, v, pk, pv, kpm, meta, ranges, table, True, 0.25, None, None, None))


@pytest.mark.parametrize("mask", [False, True])
def test_opcheck_sdpa_and_reference(mask):
    q, k, v, _, _ = tensors()
    m = (torch.rand(2, 1, 9, 9, generator=torch.Generator().manual_seed(1)) > 0.3) if mask else None
    opcheck(ops.sdpa_fwd.default, (q, k, v, m, not mask, 0.25))
    opcheck(ops.reference.default, (q, k, v, m, 0.25))
    do = torch.randn_like(q)
    out, lse = ops.sdpa_fwd(q, k, v, m, not mask, 0.25)
    plain = ("test_schema", "test_faketensor")  # the backward ops have no gradient of their own
    opcheck(ops.sdpa_bwd.default, (do, q, k, v, out, lse, m, not mask, 0.25), test_utils=plain)
    opcheck(ops.reference_bwd.default, (do, q, k, v, m, 0.25), test_utils=plain)


def test_the_reference_backward_is_autograds():
    """ptune::reference_bwd (the softmax backward written out) against autograd through the same forward, float64,
    with grouped-query heads and a query that sees no key."""
    q, k, v, _, _ = tensors(dtype=torch.float64, Hq=6, T=7)
    mask = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[0, 0, 1] = False
    for m in (mask, None):
        do = torch.randn_like(q)
        want = torch.autograd.grad(reference.attend(q, k, v, m, 0.3), (q, k, v), do)
        got = ops.reference_bwd(do, q.detach(), k.detach(), v.detach(), m, 0.3)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_cpu_sdpa_op_is_what_torch_sdpa_computes():
    """ptune::sdpa is the kernel F.scaled_dot_product_attention picks on the CPU: the same bits, gradients too."""
    q, k, v, _, _ = tensors(T=7)
    mask = torch.rand(2, 1, 7, 7, generator=torch.Generator().manual_seed(2)) > 0.4
    mask[0, 0, 3] = False  # a query that sees nothing
    ours = sdpa.attention(q, k, v, mask, False, 0.3)
    torch_ = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True)
    assert torch.equal(ours, torch_)
    for a, b in zip(torch.autograd.grad(ours.sum(), (q, k, v)), torch.autograd.grad(torch_.sum(), (q, k, v))):
        assert torch.equal(a, b)


class Layer(torch.nn.Module):
    """What transformers hands the attention function: a module with layer_idx and is_causal."""

    def __init__(self, causal=True):
        super().__init__()
        self.layer_idx, self.is_causal = 0, causal


def attention_call(impl, packed, device, dtype=torch.bfloat16, grad=True):
    """The model's attention call (model/attention.py) on a deep prefix, padded or packed with a prefix table."""
    q, k, v, _, _ = tensors(dtype=dtype, device=device, grad=grad)
    L, N = 1, 2
    if packed:
        seg, ids = SEG, IDS
        kv = on(device, torch.randn(N, L, 2, 2, 5, 16, dtype=dtype), grad)
        prefix = PrefixKV(kv, impl, on(device, seg), on(device, ids), padded=True)
        mask = on(device, seg >= 0)
    else:
        kv = on(device, torch.randn(L, 2, 2, 5, 16, dtype=dtype), grad)
        prefix = PrefixKV(kv, impl, padded=True)
        mask = on(device, torch.arange(9) >= torch.tensor([[2], [0]]))
    out, _ = prefix_attention_forward(Layer(), q, k, v, mask, 0.25, ptune_prefix=prefix)
    return out, (q, k, v, kv)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("impl", ["triton_op", "sdpa", "reference"])
@pytest.mark.parametrize("device", ["cuda", "meta", "cpu"])
def test_the_attention_call_traces_under_fake_tensors(impl, packed, device):
    """Under FakeTensorMode nothing is allocated or launched: forward and backward on the fake CPU and meta devices.
    On a fake `cuda` device a CPU-only build of torch has no CUDA device guard, which autograd and Python indexing
    (`x[i]`) need: there the Triton op's forward, which needs neither, is traced (the fake implementations are the
    same on every device). The Triton op is called as the GPU path calls it: in this process the kernels are the
    interpreter's, which the dispatch offers for CPU tensors only."""
    if device == "cuda" and impl != "triton_op":
        pytest.skip("a CPU-only torch has no CUDA device guard for autograd and indexing: traced on cpu and meta")
    grad = device != "cuda"
    with FakeTensorMode(allow_non_fake_inputs=True):
        if impl == "triton_op":
            q, k, v, pk, pv = tensors(dtype=torch.bfloat16, device=device, grad=grad)
            meta = ranges = None
            if packed:
                meta, ranges = on(device, LAYOUT.meta), on(device, LAYOUT.ranges)
                pk, pv = (on(device, torch.empty(2, *x.shape, dtype=x.dtype), grad) for x in (pk, pv))
            out, _ = ops.triton_fwd(q, k, v, pk, pv, None, meta, ranges, packed, True, 0.25, None, None, None)
            inputs = (q, k, v, pk, pv)
        else:
            out, inputs = attention_call(impl, packed, device, grad=grad)
        grads = torch.autograd.grad(out.float().sum(), inputs) if grad else inputs
    assert out.device.type == device and out.dtype == torch.bfloat16 and out.numel() == inputs[0].numel()
    assert all(g.shape == x.shape and g.device.type == device for g, x in zip(grads, inputs))


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("impl", ["sdpa", "reference"])
def test_the_attention_call_compiles_without_a_graph_break(impl, packed):
    torch._dynamo.reset()
    out, inputs = attention_call(impl, packed, "cpu", dtype=torch.float32)

    def call(*inputs):
        return attention_call_from(impl, packed, *inputs)

    compiled = torch.compile(call, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    got = compiled(*inputs)
    torch.testing.assert_close(got, out)
    for a, b in zip(torch.autograd.grad(got.sum(), inputs), torch.autograd.grad(out.sum(), inputs)):
        torch.testing.assert_close(a, b)


def attention_call_from(impl, packed, q, k, v, kv):
    if packed:
        prefix, mask = PrefixKV(kv, impl, SEG, IDS, padded=True), SEG >= 0
    else:
        prefix, mask = PrefixKV(kv, impl, padded=True), torch.arange(9) >= torch.tensor([[2], [0]])
    return prefix_attention_forward(Layer(), q, k, v, mask, 0.25, ptune_prefix=prefix)[0]


def test_the_sdpa_attention_call_compiles_with_inductor():
    """The same call through inductor (C++ code for the mask and the layout around the fused kernel)."""
    torch._dynamo.reset()
    out, inputs = attention_call("sdpa", False, "cpu", dtype=torch.float32)
    compiled = torch.compile(lambda *x: attention_call_from("sdpa", False, *x), fullgraph=True)
    got = compiled(*inputs)
    torch.testing.assert_close(got, out)
    for a, b in zip(torch.autograd.grad(got.sum(), inputs), torch.autograd.grad(out.sum(), inputs)):
        torch.testing.assert_close(a, b)
