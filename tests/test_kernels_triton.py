"""The fused Triton kernels against the float64 reference (computed on the CPU), forward and backward.

Without a GPU the kernels run in Triton's interpreter, which has to be chosen before the kernel module
is imported: this module sets TRITON_INTERPRET=1 at import (collection), before any test runs. The
interpreter is slow, so the shapes are tiny (T <= 20, d <= 16, B <= 2) with 16-wide blocks, which
still puts odd lengths across block edges. With CUDA the corner cases run compiled on the GPU in bf16
(float32 is not launched there, so its property sweep stays on the CPU), and the tests marked `gpu` add
GPU-sized bf16 shapes (they skip on the CPU).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings  # noqa: E402

from ptune_dist.kernels import triton_impl  # noqa: E402
from ptune_dist.kernels.api import prefix_attention  # noqa: E402
from test_kernels_props import NAMES, assert_matches_reference, build, cases, run  # noqa: E402

# first: triton_env picks the interpreter; its pytestmark skips where Triton cannot run
from triton_env import DEVICE, DTYPE, FP32, TOL, interpreter_only, pytestmark  # noqa: F401


@interpreter_only
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(cases(max_t=20, max_b=2, dims=(8, 16)))
def test_triton_fp32_matches_reference(case):
    assert_matches_reference(case, "triton", dtype=torch.float32, device=DEVICE, **FP32)


CORNERS = {
    # decoding one token against a cache (Tq = 1 < Tk), shared prefix longer than the sequence, GQA 8
    "decode_step": dict(B=2, Hq=8, Hkv=1, Tq=1, Tk=19, P=23, d=16, per_row=False, pad="left", causal=True, seed=1),
    # no prefix, left padding: early queries see no key at all and must return zeros (and zero grads)
    "no_prefix_empty_rows": dict(
        B=2, Hq=3, Hkv=1, Tq=17, Tk=17, P=0, d=8, per_row=False, pad="left", causal=True, seed=2
    ),
    # per-row prefix, right padding, bidirectional, Tq < Tk, head dim padded from 12 to 16
    "per_row_bidirectional": dict(
        B=2, Hq=6, Hkv=2, Tq=5, Tk=18, P=7, d=12, per_row=True, pad="right", causal=False, seed=3
    ),
    # lengths one past a block edge everywhere
    "block_edges": dict(
        B=1, Hq=3, Hkv=3, Tq=17, Tk=17, P=17, d=16, per_row=False, pad="scattered", causal=True, seed=4
    ),
}


@pytest.mark.parametrize("name", CORNERS)
def test_triton_corner_cases(name):
    assert_matches_reference(CORNERS[name], "triton", dtype=DTYPE, device=DEVICE, **TOL)


# fp16 keeps 11 significant bits, bf16 8: q, k, v are rounded to those before the fp32 accumulation,
# so outputs and gradients differ from float64 by a few of those units.
LOW = {torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=1e-1, atol=1e-1)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["decode_step", "per_row_bidirectional", "block_edges"])
def test_triton_low_precision(name, dtype):
    assert_matches_reference(CORNERS[name], "triton", dtype=dtype, device=DEVICE, **LOW[dtype])


def test_bf16_is_not_run_through_the_interpreters_bf16_dot():
    """Upcasting tiles is what makes bf16 right in the interpreter (triton issue 11584); this pins that the
    kernel result is the fp32 computation on bf16-rounded inputs, to fp32 accuracy before the output rounding."""
    tensors, mask, up = build(**CORNERS["block_edges"])
    rounded = [t.to(torch.bfloat16).double() for t in tensors]
    got = run("triton", tensors, mask, up, True, torch.bfloat16, device=DEVICE)[0]
    want = run("reference", rounded, mask, up, True, torch.float64)[0]
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)  # bf16 output rounding only


@pytest.mark.parametrize("rows", [1, 2, 3])
def test_shared_prefix_gradient_is_deterministic_and_summed_over_rows(rows):
    """Partial sums over `rows` batch rows per program, added up in torch: same bits on every run, and the
    batch sum of what each row would get with its own copy of the prefix."""
    case = dict(B=3, Hq=4, Hkv=2, Tq=9, Tk=9, P=5, d=8, per_row=False, pad="left", causal=True, seed=5)
    tensors, mask, up = build(**case)
    first = run(
        "triton",
        tensors,
        mask,
        up,
        True,
        DTYPE,
        device=DEVICE,
        prefix_rows_per_program=rows,
        fn=triton_impl.prefix_attention,
    )
    again = run(
        "triton",
        tensors,
        mask,
        up,
        True,
        DTYPE,
        device=DEVICE,
        prefix_rows_per_program=rows,
        fn=triton_impl.prefix_attention,
    )
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    per_row = [t if i < 3 else t.expand(3, -1, -1, -1) for i, t in enumerate(tensors)]
    rows_grads = run("triton", per_row, mask, up, True, DTYPE, device=DEVICE)
    torch.testing.assert_close(first[4], rows_grads[4].sum(0), **TOL)
    torch.testing.assert_close(first[5], rows_grads[5].sum(0), **TOL)


@pytest.mark.parametrize("blocks", [(16, 32), (32, 16)])
def test_block_sizes_are_parameters(blocks):
    case = dict(B=1, Hq=2, Hkv=1, Tq=20, Tk=20, P=9, d=8, per_row=False, pad="right", causal=True, seed=6)
    assert_matches_reference(
        case,
        "triton",
        dtype=DTYPE,
        device=DEVICE,
        fn=triton_impl.prefix_attention,
        block_m=blocks[0],
        block_n=blocks[1],
        **TOL,
    )


def test_bad_block_size_and_dropout_are_refused():
    q = torch.zeros(1, 2, 3, 8, device=DEVICE, dtype=DTYPE)
    with pytest.raises(ValueError, match="block_m=24"):
        triton_impl.prefix_attention(q, q, q, None, None, causal=True, key_padding_mask=None, scale=1.0, block_m=24)
    with pytest.raises(RuntimeError, match="dropout"):
        prefix_attention(q, q, q, causal=True, dropout_p=0.1, impl="triton")
    with pytest.raises(RuntimeError, match="float64"):
        prefix_attention(q.double(), q.double(), q.double(), causal=True, impl="triton")


@pytest.mark.gpu
@pytest.mark.skipif(
    DEVICE != "cuda", reason="needs CUDA: in the interpreter float32 is what the kernels are checked in"
)
def test_fp32_is_refused_on_cuda_with_the_way_out():
    from ptune_dist.kernels.api import ImplUnavailable

    q = torch.zeros(1, 2, 3, 16, device=DEVICE)
    with pytest.raises(ImplUnavailable, match="float32 on CUDA.*impl='sdpa'.*'auto'"):
        prefix_attention(q, q, q, causal=True, impl="triton")


@pytest.mark.skipif(not triton_impl.INTERPRETED, reason="checks the CPU interpreter path")
def test_auto_never_picks_the_interpreter():
    q = torch.zeros(1, 2, 3, 8)
    from ptune_dist.kernels.api import resolve_impl

    assert resolve_impl("auto", q) == "sdpa"


# ---- GPU-sized shapes (CUDA only): Llama-1B/8B-like heads, long sequences, bf16 as in training ----

requires_cuda = pytest.mark.skipif(
    DEVICE != "cuda",
    reason="needs CUDA: the Triton kernels run compiled only on "
    "a GPU (here they run in the CPU interpreter, far too slow for these shapes)",
)
GPU_CASES = {
    # Llama-3.2-1B heads (32 over 8, d 64), T 2048, a shared prefix, left padding
    "llama1b_shared_prefix": dict(
        B=2, Hq=32, Hkv=8, Tq=2048, Tk=2048, P=64, d=64, per_row=False, pad="left", causal=True, seed=21
    ),
    # Llama-3.1-8B heads (d 128: 64 x 32 blocks), a per-row prefix, right padding
    "llama8b_per_row_prefix": dict(
        B=2, Hq=32, Hkv=8, Tq=1024, Tk=1024, P=20, d=128, per_row=True, pad="right", causal=True, seed=22
    ),
    # lengths off every block edge, Tq < Tk, bidirectional, scattered padding, GQA 4
    "odd_lengths_bidirectional": dict(
        B=3, Hq=8, Hkv=2, Tq=777, Tk=1000, P=128, d=128, per_row=False, pad="scattered", causal=False, seed=23
    ),
    # one query against a long cache, GQA 8, a per-row prefix
    "decode_step": dict(B=4, Hq=32, Hkv=4, Tq=1, Tk=2047, P=100, d=64, per_row=True, pad="left", causal=True, seed=24),
}


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("name", GPU_CASES)
def test_triton_bf16_at_gpu_sizes(name):
    """bf16 inputs (and upstream gradient) against float64 on the same bf16-rounded values, so what is left
    is the kernel's own rounding (bf16 probabilities into the dots, bf16 outputs): within 1e-2 of each
    tensor's largest magnitude."""
    case = GPU_CASES[name]
    tensors, mask, up = build(**case)
    rounded = [t.to(torch.bfloat16).double() for t in tensors]
    up = up.to(torch.bfloat16).double()
    got = run("triton", rounded, mask, up, case["causal"], torch.bfloat16, device=DEVICE)
    want = run("reference", rounded, mask, up, case["causal"], torch.float64, device=DEVICE)
    for what, a, b in zip(NAMES, got, want):
        err, scale = (a - b).abs().max().item(), b.abs().max().item()
        assert torch.isfinite(a).all() and err <= 1e-2 * scale, f"{name} {what}: error {err:.3g}, max |ref| {scale:.3g}"


@pytest.mark.gpu
@requires_cuda
def test_auto_picks_triton_for_bf16_on_cuda():
    from ptune_dist.kernels.api import resolve_impl

    q = torch.zeros(1, 4, 8, 64, device=DEVICE, dtype=torch.bfloat16)
    assert resolve_impl("auto", q) == "triton"
    assert resolve_impl("auto", q.float()) == "sdpa"
