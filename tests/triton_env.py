"""What the fused Triton kernel tests share: without CUDA the kernels run in Triton's interpreter, which has
to be chosen before the kernel module is imported (TRITON_INTERPRET=1, set here at import, before the tests'
own imports); the device the kernels take (the interpreter takes CPU tensors); the skip when Triton cannot
run; the fp32 tolerance against the float64 reference; the dtype the corner cases check the kernels in here
(float32 in the interpreter, bfloat16 on CUDA, where fp32 is not launched: triton_impl.unavailable) and its
tolerance; the mark that keeps the fp32 property sweeps on the CPU."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton is not installed (Linux only: pip install triton)")

from ptune_dist.kernels import triton_impl  # noqa: E402
from ptune_dist.kernels.api import unavailable  # noqa: E402

DEVICE = "cuda" if not triton_impl.INTERPRETED and torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
WHY_NOT = unavailable("triton", torch.empty(1, device=DEVICE, dtype=DTYPE))
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"triton cannot run here: {WHY_NOT}")
FP32 = dict(rtol=2e-5, atol=2e-5)
TOL = (
    dict(rtol=1e-1, atol=1e-1) if DEVICE == "cuda" else FP32
)  # bf16 keeps 8 significant bits (test_kernels_triton.LOW)
interpreter_only = pytest.mark.skipif(
    DEVICE == "cuda",
    reason="the interpreter covers these fp32 property sweeps on the CPU; fp32 Triton is not launched on CUDA",
)
