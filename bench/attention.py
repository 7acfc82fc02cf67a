"""Prefix attention: forward+backward time and memory of each implementation against the baseline
"expand the prefix per row, concatenate, SDPA", measured in the same run.

    python bench/attention.py [--device cpu|cuda] [--dtype float32|bfloat16|float16]
                              [--batch 1 8 32] [--prefix 16 64 256] [--seq 128 512]
                              [--heads 9 3] [--dim 64] [--reps 5] [--impls sdpa split auto]
                              [--threads 2] [--out docs/bench_attention.md]

Shapes follow SmolLM2 (9 query heads over 3 KV heads, head dim 64): q [B, 9, T, 64], k/v [B, 3, T, 64],
a prefix [3, P, 64] shared by the batch, causal, everything requiring grad (as in prompt training,
where the gradient flows through q/k/v into the frozen model and into the prefix). One warm-up call,
then --reps timed forward+backward calls; the median is reported.

Memory. On CUDA: torch.cuda.max_memory_allocated during forward+backward, above what was allocated
before it. On CPU, PyTorch's allocator keeps no statistics (and tracemalloc does not see it), so the
measure is the bytes the forward leaves alive for the backward: every tensor autograd saves (captured
with torch.autograd.graph.saved_tensors_hooks, each storage counted once), minus the storages of the
inputs themselves, which every implementation keeps anyway. That is the attention's activation memory,
the part that grows with the batch in training; transient buffers inside one kernel call are not in it.

Ratios are implementation / baseline: below 1 is faster or smaller.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ptune_dist.kernels import prefix_attention, resolve_impl, unavailable  # noqa: E402
from ptune_dist.kernels.masks import visible_mask  # noqa: E402


def baseline(q, k, v, prefix_k, prefix_v, causal=True):
    """The peer: the prefix expanded per row and concatenated in front of the keys, then SDPA with a mask."""
    B, Hq, T, _ = q.shape
    P = prefix_k.shape[-2]
    k = torch.cat([prefix_k.expand(B, -1, -1, -1), k], dim=2)
    v = torch.cat([prefix_v.expand(B, -1, -1, -1), v], dim=2)
    mask = visible_mask(B, T, T, P, causal, None, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=Hq != k.shape[1])


def inputs(B, P, T, Hq, Hkv, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype).requires_grad_()

    return t(B, Hq, T, d), t(B, Hkv, T, d), t(B, Hkv, T, d), t(Hkv, P, d), t(Hkv, P, d)


def run_once(fn, xs, grad):
    for x in xs:
        x.grad = None
    out = fn(*xs)
    out.backward(grad)


def saved_bytes(fn, xs):
    """Bytes autograd holds for the backward beyond the inputs' own storages (CPU memory measure)."""
    seen = {x.untyped_storage().data_ptr() for x in xs}
    total = 0

    def pack(t):
        nonlocal total
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*xs)
    del out
    return total


def measure(fn, xs, grad, reps, device):
    run_once(fn, xs, grad)  # warm-up (and compilation on a GPU)
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run_once(fn, xs, grad)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        for x in xs:
            x.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        run_once(fn, xs, grad)
        torch.cuda.synchronize()
        mem = torch.cuda.max_memory_allocated() - before
    else:
        mem = saved_bytes(fn, xs)
    return statistics.median(times), mem


def cpu_name():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prefix", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--seq", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--heads", type=int, nargs=2, default=[9, 3], metavar=("HQ", "HKV"))
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--impls", nargs="+", default=["sdpa", "split", "triton", "flash", "auto"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    Hq, Hkv = args.heads
    probe = torch.empty(1, Hq, 1, args.dim, device=args.device, dtype=dtype)
    impls = []
    for name in args.impls:
        why = None if name == "auto" else unavailable(name, probe)
        if why is None and name == "triton":
            from ptune_dist.kernels import triton_impl

            why = "runs in the interpreter here (TRITON_INTERPRET=1): not a timing" if triton_impl.INTERPRETED else None
        if why:
            print(f"# skipping {name}: {why}", file=sys.stderr)
        else:
            impls.append(name)

    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"{cpu_name()}, {torch.get_num_threads()} threads")
    mem_what = "peak CUDA memory" if args.device == "cuda" else "bytes saved for backward beyond the inputs"
    head = ["B", "P", "T", "baseline ms", "baseline MB"]
    for name in impls:
        head += [f"{name} time x", f"{name} mem x"]
    lines = [f"device: {device_name}; torch {torch.__version__}; {args.dtype}; Hq/Hkv {Hq}/{Hkv}, d {args.dim}; "
             f"causal, prefix shared; median of {args.reps}; memory = {mem_what}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    print(lines[0])
    print("\n".join(lines[2:4]), flush=True)
    for B in args.batch:
        for P in args.prefix:
            for T in args.seq:
                xs = inputs(B, P, T, Hq, Hkv, args.dim, dtype, args.device)
                grad = torch.randn(B, Hq, T, args.dim, generator=torch.Generator().manual_seed(1)).to(xs[0])
                t_base, m_base = measure(baseline, xs, grad, args.reps, args.device)
                row = [str(B), str(P), str(T), f"{t_base * 1e3:.1f}", f"{m_base / 2**20:.1f}"]
                for name in impls:
                    label = name
                    if name == "auto":
                        label = resolve_impl("auto", xs[0], xs[3], None, True)

                    def fn(q, k, v, pk, pv, _impl=name):
                        return prefix_attention(q, k, v, pk, pv, causal=True, impl=_impl)

                    t, m = measure(fn, xs, grad, args.reps, args.device)
                    row += [f"{t / t_base:.2f}" + (f" ({label})" if name == "auto" else ""),
                            f"{m / m_base:.2f}" if m_base else "-"]
                line = "| " + " | ".join(row) + " |"
                lines.append(line)
                print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
