"""Compile the Triton kernels for CUDA GPUs ahead of time, on a machine without one.

    TRITON_INTERPRET= python -m ptune_dist.kernels.triton_aot [--arch 80 90] [--json]

The launches compiled are the ones `triton_impl` makes (`forward_launch`, `backward_launches`: the same
argument lists, block sizes and options as a GPU run), built on meta tensors, so nothing is allocated
and no driver is needed: the target is given explicitly and the CUDA toolchain (ptxas) comes with
triton's wheel. Triton's interpreter (TRITON_INTERPRET=1) accepts code that its compiler refuses,
which is what this catches. A compiled kernel must also fit the target's shared memory per block,
which a launch would otherwise find out only on the GPU.

VARIANTS cover every dtype, both values of every boolean constexpr, the head dims 64 and 128 (the two
block shapes of `triton_impl._blocks`), a shared and a per-row prefix, and packed rows (PACKED: with a
prefix table and with a per-row prefix), without compiling their whole product.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from triton import compile as triton_compile
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import mangle_type

from . import triton_impl
from .triton_packed import PackedLayout

ARCHS = (80, 90)
# the most shared memory one block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100, H100/H200
MAX_SHARED = {80: 166912, 90: 232448}
VARIANTS = (  # fp32 (IEEE dots, emulated without tensor cores) compiles ~5x slower: its variant has the fewest launches
    dict(dtype=torch.float32, d=64, causal=False, kpm=False, per_row=True),
    dict(dtype=torch.float16, d=128, causal=True, kpm=True, per_row=False),
    dict(dtype=torch.bfloat16, d=64, causal=True, kpm=False, per_row=True),
    dict(dtype=torch.bfloat16, d=128, causal=False, kpm=True, per_row=False),
    # packed rows: a prefix table (fp32 partial sums of its gradient), and a per-row prefix
    dict(dtype=torch.bfloat16, d=128, causal=True, kpm=False, per_row=False, packed="table"),
    dict(dtype=torch.float16, d=64, causal=False, kpm=True, per_row=True, packed="rows"),
)


def launches(dtype, d, causal, kpm, per_row, packed=None, B=2, H=4, Hkv=2, T=96, P=20, N=3):
    """The forward and backward launches of one call, on meta tensors (packed: None, "rows" (segment ids
    only) or "table" (and prefix ids into a table of N prefixes))."""
    def t(*shape):
        return torch.empty(*shape, dtype=dtype, device="meta")

    q, k, v = t(B, H, T, d), t(B, Hkv, T, d), t(B, Hkv, T, d)
    pk, pv = (t(B, Hkv, P, d), t(B, Hkv, P, d)) if per_row else (t(Hkv, P, d), t(Hkv, P, d))
    layout = None
    if packed:
        E = N if packed == "table" else 1
        if packed == "table":
            pk, pv = t(N, Hkv, P, d), t(N, Hkv, P, d)
        ints = dict(dtype=torch.int32, device="meta")
        layout = PackedLayout(torch.empty(4, B, T, **ints), torch.empty(B, E, 2, **ints), packed == "table")
    mask = torch.empty(B, T, dtype=torch.uint8, device="meta") if kpm else None
    blocks = triton_impl.tiles(d)
    (o, lse), fwd = triton_impl.forward_launch(q, k, v, pk, pv, mask, causal, d ** -0.5, blocks, layout)
    _, bwd = triton_impl.backward_launches(q, k, v, pk, pv, mask, o, lse, torch.empty_like(o), causal, d ** -0.5,
                                           blocks, None, layout)
    return [fwd, *bwd]


def source(launch):
    """(ASTSource, compile options) of a launch: argument types as the launcher derives them (unspecialised)."""
    fn = launch.kernel
    names = fn.arg_names
    given = dict(zip(names, launch.args))
    named = {k: v for k, v in launch.meta.items() if k in names}
    if len(launch.args) > len(names) or given.keys() & named.keys() or len(given) + len(named) != len(names):
        raise TypeError(f"{fn.__name__}: launched with {len(launch.args)} positional arguments and "
                        f"{sorted(named)}; it takes {names}")
    given |= named
    constexprs = {n: given[n] for n, p in zip(names, fn.params) if p.is_constexpr}
    signature = {n: "constexpr" if n in constexprs else mangle_type(given[n]) for n in names}
    options = {k: v for k, v in launch.meta.items() if k not in names}
    return ASTSource(fn, signature, constexprs), options


def compile_all(archs=ARCHS, variants=VARIANTS):
    """Compile every launch of every variant for every arch; one record per compile (error: None or text)."""
    if triton_impl.INTERPRETED:
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1: there is nothing to compile; "
                           "run with TRITON_INTERPRET unset")
    records, done = [], set()
    for variant in variants:
        for launch in launches(**variant):
            src, options = source(launch)
            for arch in archs:
                key = (src.hash(), str(options), arch)
                if key in done:
                    continue
                done.add(key)
                rec = dict(kernel=src.name, arch=arch, signature=src.signature, options=options,
                           constexprs={src.fn.arg_names[i[0]]: v for i, v in src.constants.items()},
                           variant={k: str(v) for k, v in variant.items()}, error=None)
                start = time.perf_counter()
                try:
                    kernel = triton_compile(src, target=GPUTarget("cuda", arch, 32), options=options)
                    rec["shared"] = kernel.metadata.shared
                    if kernel.metadata.shared > MAX_SHARED[arch]:
                        rec["error"] = (f"needs {kernel.metadata.shared} bytes of shared memory per block; "
                                        f"sm_{arch} has {MAX_SHARED[arch]}")
                except Exception as e:  # noqa: BLE001 -- reported per launch, with its text
                    rec["error"] = f"{type(e).__name__}: {e}"
                rec["seconds"] = round(time.perf_counter() - start, 2)
                records.append(rec)
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(MAX_SHARED))
    ap.add_argument("--json", action="store_true", help="print the records as one JSON list")
    args = ap.parse_args(argv)
    records = compile_all(args.arch)
    if args.json:
        print(json.dumps(records))
    else:
        for r in records:
            what = r["error"].strip().splitlines()[-1] if r["error"] else f"ok, {r['shared']} bytes shared"
            print(f"sm_{r['arch']} {r['kernel']} {r['variant']}: {what}")
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
