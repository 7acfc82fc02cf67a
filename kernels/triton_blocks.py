"""Block sizes and warps of the Triton kernels, per GPU architecture and head dim: the one place they are chosen.

    tiles = table(arch, d)            # Tiles: (BLOCK_M, BLOCK_N, num_warps) of each kernel, and BLOCK_D
    arch = device_arch(q)             # 80, 90, ...: the compute capability the launch will run on

The entries keep every kernel out of register spills on its architecture: ptxas of triton's wheel, at the
launcher's own specialisation, over every variant kernels/triton_aot.py compiles (the registers, spills and
shared memory are in docs/kernel_resources.md, which tests/test_kernels_triton_aot.py keeps current). The
forward and dQ keep the former 64-query blocks (64 keys per step at head dim 64, 32 at 128), except sm_80's dQ
at head dim 64, whose packed variants spilled with 64 keys. dK/dV holds two fp32 [BLOCK_N, BLOCK_D]
accumulators and the key block's K and V through its whole loop: at the former 64-query blocks and 4 warps
it sat at 255 registers and spilled (up to 340 B per thread on sm_90, more on sm_80), so it takes 16-32
queries per step and 8 warps where 4 were not enough; BLOCK_N, the keys a program owns, is kept as large as
the registers allow (64 where it fits), since every key block re-reads each query's q and dO. Head dim 256
(Gemma) takes smaller tiles in every kernel. These are register-pressure choices, not timings:
bench/attention.py on a GPU is what can move them (then rerun the table).

Architectures: 9.x and above take the sm_90 entries, 8.x the sm_80 ones (their tiles need at most 99 KB of
shared memory per block, what 8.6/8.9 offer); both are compiled and checked in CI. `device_arch` reads
torch.cuda.get_device_capability once per device. For a fake or meta tensor (a memory trace that builds the
launches under FakeTensorMode, on a machine that may have no GPU) it never touches CUDA and answers
DEFAULT_ARCH: the launch shapes (buffers, grids) it then builds are those of an sm_90 run.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import is_fake

DEFAULT_ARCH = 90
ARCHS = (80, 90)  # the table's architectures; kernels/triton_aot.py compiles for each

# arch -> largest BLOCK_D -> (forward, dQ, dK/dV) as (BLOCK_M, BLOCK_N, num_warps)
TABLE = {
    90: {
        64: ((64, 64, 4), (64, 64, 4), (32, 64, 8)),
        128: ((64, 32, 4), (64, 32, 4), (16, 64, 8)),
        256: ((32, 16, 4), (32, 16, 4), (16, 32, 8)),
    },
    80: {
        64: ((64, 64, 4), (64, 32, 4), (32, 32, 4)),
        128: ((64, 32, 4), (64, 32, 4), (16, 64, 8)),
        256: ((32, 16, 4), (32, 16, 4), (16, 32, 8)),
    },
}


class Tiles(NamedTuple):
    """The tiles of one call: BLOCK_D, then (BLOCK_M, BLOCK_N, num_warps) of the forward, the dQ and the dK/dV
    kernel. Ten ints, so it travels as a plain int list (Tiles(*ints) rebuilds it)."""

    BLOCK_D: int
    fwd_m: int
    fwd_n: int
    fwd_warps: int
    dq_m: int
    dq_n: int
    dq_warps: int
    kv_m: int
    kv_n: int
    kv_warps: int

    def of(self, kernel: str) -> dict:
        """Launch keywords of `kernel` ("fwd", "dq" or "kv"): BLOCK_M, BLOCK_N, BLOCK_D, num_warps."""
        m, n, w = getattr(self, f"{kernel}_m"), getattr(self, f"{kernel}_n"), getattr(self, f"{kernel}_warps")
        return dict(BLOCK_M=m, BLOCK_N=n, BLOCK_D=self.BLOCK_D, num_warps=w)


def block_d(d: int) -> int:
    """The head dim padded to a power of two >= 16 (masked loads fill the rest)."""
    return max(16, 1 << (d - 1).bit_length())


def table(arch: int, d: int) -> Tiles:
    """The tiles for head dim d on compute capability `arch` (80, 86, 90, ...; see the module docstring)."""
    bd = block_d(d)
    rows = TABLE[90 if arch >= 90 else 80]
    key = next((k for k in sorted(rows) if bd <= k), None)
    if key is None:
        raise ValueError(f"triton prefix attention: no block sizes for head dim {d} (up to {max(rows)})")
    fwd, dq, kv = rows[key]
    return Tiles(bd, *fwd, *dq, *kv)


def uniform(d: int, block_m: int, block_n: int, num_warps: int = 4) -> Tiles:
    """The same BLOCK_M x BLOCK_N and warps for every kernel (the interpreter's tiles, or blocks a caller gives)."""
    return Tiles(block_d(d), *(block_m, block_n, num_warps) * 3)


@functools.cache
def _capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def device_arch(x: torch.Tensor) -> int:
    """The compute capability the kernels run on for tensors like x: read once per CUDA device; DEFAULT_ARCH
    for a fake, meta or CPU tensor (no CUDA call)."""
    if x.device.type != "cuda" or is_fake(x):
        return DEFAULT_ARCH
    return _capability(x.device.index if x.device.index is not None else torch.cuda.current_device())
