"""`impl="auto"`: the implementation that runs a call, by device, dtype and shape.

The rule (measurements: bench/attention.py; CPU tables in docs/bench_attention.md, the GPU table,
pending a GPU run, in docs/bench_attention_gpu.md):

- CPU: `sdpa`. On the 2-core CPU this was measured on, PyTorch's fused CPU flash-attention kernel with
  the prefix concatenated (the baseline) was never clearly beaten on forward+backward time: `split`
  runs the same fused kernel twice (prefix part, sequence part), which makes its forward faster or
  equal but its backward slower (two kernel launches, two zero-filled gradient buffers, one merge):
  per-cell median 1.05x the baseline's time (0.8x-1.55x in a noisy run), never reliably below 1.
  `split` holds 0.3x-0.6x the memory for the backward, so choose it by name when activation memory
  is what limits the batch. The Triton kernels run on CPU
  only in the interpreter (a test tool, orders of magnitude slower): never chosen here.
- CUDA, float16/bfloat16: `triton` (the fused kernel reads a shared prefix once per row with stride 0
  over the batch and never materialises it per row) when triton is installed and the head dim is
  <= 256; otherwise `flash` when flash-attn is installed; otherwise `sdpa`. This order follows the
  design, not a table: it is pending the measured one (`python bench/attention.py --device cuda
  --out docs/bench_attention_gpu.md`, against SDPA/FlashAttention-2 in the same run; none was
  available when this was written). `split` is CPU-only: its math path on CUDA was 15-50x slower
  than torch's FlashAttention with ~10 GB of intermediates at Llama-8B shapes, so it refuses CUDA.
- CUDA, float32: `sdpa` (flash-attn has no fp32; the Triton kernel's fp32 path uses full-precision
  dots, without tensor cores).
- Attention dropout (dropout_p > 0): `flash` on CUDA fp16/bf16 when installed, else `sdpa`; the
  `split` and `triton` paths implement no dropout.
- Anything else (other devices, float64): `sdpa`.

Packed rows (segment_ids; `choose_packed`): the same rule among the implementations that take them
(reference, sdpa, triton): `triton` on CUDA fp16/bf16 without dropout when it can run (it skips key blocks
of other sequences and reads the prefix, or prefix table, in place; sdpa builds a dense
[B, 1, Tq, N*P + Tk] mask and computes every block), otherwise `sdpa`; on CPU always `sdpa`. Like the
unpacked choice this follows the design, not a measurement: the packed Triton kernels have been checked
in Triton's CPU interpreter and compiled for sm_80/sm_90, not yet run or timed on a GPU.

The rule is one pure function, `rule(device, dtype, packed, dropout_p, can_run)`, of the device kind, the dtype,
whether rows are packed, the dropout and which implementations can run (for a call: `available.unavailable`
on its query, which holds the shape limits such as Triton's head dim <= 256). `choose` / `choose_packed` ask it
for a call; the planner (ptune_dist/plan/request.py planned_kernel) asks it for the GPU a run will have.
SHARED_PREFIX names the implementations that keep a shared prefix [Hkv, P, d] once, with no per-row copy
(the planner's activation term, plan/memory.py).
"""

from __future__ import annotations

from typing import Callable

import torch

from .available import unavailable

HALF = ("float16", "bfloat16")
SHARED_PREFIX = ("split", "flash", "triton")


def rule(
    device: str,
    dtype: torch.dtype | str,
    packed: bool = False,
    dropout_p: float = 0.0,
    can_run: Callable[[str], bool] = lambda name: True,
) -> str:
    """The implementation `auto` runs: `device` a device type (cuda, cpu, ...), `dtype` a torch dtype or its
    name, `can_run(name)` whether that implementation can run this call (installed, shape within its limits)."""
    name = str(dtype).removeprefix("torch.")
    if device != "cuda" or name not in HALF:
        return "sdpa"
    if packed:  # among the implementations that take packed rows (reference, sdpa, triton)
        order = () if dropout_p > 0.0 else ("triton",)
    else:
        order = ("flash",) if dropout_p > 0.0 else ("triton", "flash")
    return next((n for n in order if can_run(n)), "sdpa")


def choose(q: torch.Tensor, prefix_k=None, key_padding_mask=None, causal=True, dropout_p: float = 0.0) -> str:
    return rule(
        q.device.type, q.dtype, dropout_p=dropout_p, can_run=lambda name: unavailable(name, q, dropout_p) is None
    )


def choose_packed(q: torch.Tensor, dropout_p: float = 0.0) -> str:
    return rule(
        q.device.type,
        q.dtype,
        packed=True,
        dropout_p=dropout_p,
        can_run=lambda name: unavailable(name, q, dropout_p) is None,
    )
