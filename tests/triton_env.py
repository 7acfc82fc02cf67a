"""What the fused Triton kernel tests share: without CUDA the kernels run in Triton's interpreter, which has
to be chosen before the kernel module is imported (TRITON_INTERPRET=1, set here at import, before the tests'
own imports); the device the kernels take (the interpreter takes CPU tensors); the skip when Triton cannot
run; the fp32 tolerance against the float64 reference."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton", reason="triton is not installed (Linux only: pip install triton)")

from ptune_dist.kernels import triton_impl, unavailable  # noqa: E402

DEVICE = "cuda" if not triton_impl.INTERPRETED and torch.cuda.is_available() else "cpu"
WHY_NOT = unavailable("triton", torch.empty(1, device=DEVICE))
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"triton cannot run here: {WHY_NOT}")
FP32 = dict(rtol=2e-5, atol=2e-5)
