"""Prefix attention: forward+backward time and memory of each implementation against the baseline
"expand the prefix per row, concatenate, SDPA", measured in the same run.

    python bench/attention.py [--device cpu|cuda] [--dtype float32|bfloat16|float16]
                              [--batch 1 8 32] [--prefix 16 64 256] [--seq 128 512]
                              [--heads 9 3] [--dim 64] [--reps 5] [--impls sdpa split auto]
                              [--threads 2] [--out docs/bench_attention.md]
    python bench/attention.py --device cuda [--budget-s S] [--out docs/bench_attention_gpu.md] [--json F]
                                                                                 (see "On CUDA" below)
    python bench/attention.py --tiny [--out F]    the CUDA code path on the CPU: one small bf16 cell, no flex

On CPU: shapes follow SmolLM2 (9 query heads over 3 KV heads, head dim 64): q [B, 9, T, 64], k/v [B, 3, T, 64],
a prefix [3, P, 64] shared by the batch, causal, everything requiring grad (as in prompt training,
where the gradient flows through q/k/v into the frozen model and into the prefix). One warm-up call,
then --reps timed forward+backward calls; the median is reported.

Memory. On CPU, PyTorch's allocator keeps no statistics (and tracemalloc does not see it), so the
measure is the bytes the forward leaves alive for the backward: every tensor autograd saves (captured
with torch.autograd.graph.saved_tensors_hooks, each storage counted once), minus the storages of the
inputs themselves, which every implementation keeps anyway. That is the attention's activation memory,
the part that grows with the batch in training; transient buffers inside one kernel call are not in it.

Ratios are implementation / baseline: below 1 is faster or smaller.

On CUDA (`gpu_main`) the defaults become Llama-like shapes (Hq 32 over Hkv 8, d 64 and 128), B 4,
T 1024 and 4096, P 20 and 128, bfloat16, and the peers are measured in the same run: `fa2` (the prefix
concatenated per row, SDPA with a bottom-right causal bias: FlashAttention-2's own causal alignment,
so SDPA runs its flash kernel where the shape allows), `sdpa-mask` (the baseline above: a boolean
mask, no flash kernel) and `flex` (torch.compile'd flex_attention with a block mask "prefix visible,
sequence causal"). Time: median of --reps CUDA-event timings after warm-up calls (which compile
Triton and flex kernels). Memory: torch.cuda.max_memory_allocated during one forward+backward, above
what was allocated before it. The table (--out, e.g. docs/bench_attention_gpu.md) names the GPU,
date and versions, and gives TFLOP/s and time/memory ratios against `fa2` (or `sdpa-mask` where the
flash kernel does not apply), and each output's largest difference from `sdpa-mask`'s. The peers and ours
run in every cell first, then flex in a second pass over the cells (torch.compile: its first call, and each new
shape's, compiles, tens of seconds); the table and the rows (--json) are rewritten after every line, so a run
cut short (scripts/gpu-check.sh's stage limit) keeps what it measured, and with --budget-s no cell (of either
pass) starts once that many seconds have passed.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from harness import Budget, cpu_name, version  # noqa: E402  (bench/ on sys.path)
from ptune_dist.kernels.api import prefix_attention, resolve_impl, unavailable  # noqa: E402
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


def measure(fn, xs, grad, reps):
    """(median seconds, bytes saved for backward) of forward+backward on the CPU."""
    run_once(fn, xs, grad)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run_once(fn, xs, grad)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), saved_bytes(fn, xs)


# ---- CUDA: peers in the same run, CUDA-event timing, TFLOP/s; the table of docs/bench_attention_gpu.md ----

GPU_MODELS = {"llama-1b": (32, 8, 64), "llama-8b": (32, 8, 128)}  # (Hq, Hkv, d) of Llama-3.2-1B, Llama-3.1-8B
GPU_WARMUP = 3


def concat_prefix(k, v, prefix_k, prefix_v):
    B = k.shape[0]
    return (
        torch.cat([prefix_k.expand(B, -1, -1, -1), k], dim=2),
        torch.cat([prefix_v.expand(B, -1, -1, -1), v], dim=2),
    )


def fa2_peer(q, k, v, prefix_k, prefix_v):
    """[prefix; sequence] keys, SDPA with a bottom-right causal bias: query i sees keys j <= i + P, i.e. the
    whole prefix and the sequence causally. That is FlashAttention-2's own causal alignment, so SDPA runs
    its flash kernel when the shape allows (`fa2_applies`), otherwise its memory-efficient one."""
    from torch.nn.attention.bias import causal_lower_right

    k, v = concat_prefix(k, v, prefix_k, prefix_v)
    bias = causal_lower_right(q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=q.shape[1] != k.shape[1])


def fa2_applies(q, k):
    """Whether SDPA can run its FlashAttention-2 kernel on q and the concatenated keys (with GQA)."""
    from torch.backends.cuda import SDPAParams, can_use_flash_attention

    return can_use_flash_attention(SDPAParams(q, k, k, None, 0.0, False, q.shape[1] != k.shape[1]), False)


_compiled_flex = None


def flex_peer(T, P, device):
    """torch.compile'd flex_attention on [prefix; sequence] keys with a block mask built once per shape
    (as a model would, once for all its layers): the prefix visible to every query, the sequence causal."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    block_mask = create_block_mask(
        lambda b, h, q_idx, kv_idx: (kv_idx < P) | (kv_idx - P <= q_idx), None, None, T, P + T, device=device
    )

    def fn(q, k, v, prefix_k, prefix_v):
        k, v = concat_prefix(k, v, prefix_k, prefix_v)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])

    return fn


def attention_flops(B, Hq, T, P, d):
    """Forward+backward FLOPs of the visible (query, key) pairs (causal, Tq = Tk = T): 4·d per pair forward
    (two matrix products), 2.5x that backward (five), FlashAttention's convention."""
    pairs = T * P + T * (T + 1) // 2
    return 3.5 * 4 * d * pairs * B * Hq


def gpu_measure(fn, xs, grad, reps, truth, device="cuda"):
    """(median seconds, peak bytes, output error vs `truth`) of forward+backward on CUDA (on the CPU, --tiny:
    perf_counter timings and no memory figure)."""
    cuda = device == "cuda"

    def step():
        run_once(fn, xs, grad)

    for _ in range(GPU_WARMUP if cuda else 1):  # the first call compiles (Triton, flex)
        step()
    times = []
    if cuda:
        torch.cuda.synchronize()
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    for x in xs:
        x.grad = None
    peak = 0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    with torch.no_grad():
        out = fn(*[x.detach() for x in xs]).float()
    err = ((out - truth).abs().max() / truth.abs().max()).item()
    return statistics.median(times), peak, err


TINY_MODELS = {"tiny": (4, 2, 16)}  # --tiny: gpu_main's code on the CPU, one small cell


def gpu_settings(args):
    """Fill in gpu_main's defaults (CUDA: Llama heads, B 4, T 1024 4096, P 20 128; --tiny: one small CPU cell)."""
    tiny = args.device != "cuda"
    args.dtype = args.dtype or "bfloat16"
    if args.heads is None and args.dim is None:
        args.models = dict(TINY_MODELS if tiny else GPU_MODELS)
    else:
        args.models = {"custom": (*(args.heads or (32, 8)), args.dim or 64)}
    args.batch = args.batch or ([2] if tiny else [4])
    args.seq = args.seq or ([32] if tiny else [1024, 4096])
    args.prefix = args.prefix or ([8] if tiny else [20, 128])
    args.reps = args.reps or (1 if tiny else 20)
    args.impls = args.impls or ["triton", "flash"]
    return args


def gpu_cells(args):
    """(model, (Hq, Hkv, d), B, T, P) of every cell, in the table's order."""
    return [
        (model, shape, B, T, P)
        for (model, shape), B, T, P in itertools.product(args.models.items(), args.batch, args.seq, args.prefix)
    ]


def ours(args, probe):
    """Our implementations that run here (the others are printed as skipped); probe None: every one asked for."""
    names = []
    for name in args.impls:
        why = None if name == "auto" or probe is None else unavailable(name, probe)
        if why:
            print(f"# skipping {name}: {why}", file=sys.stderr)
        else:
            names.append(name)
    return names


class Table:
    """The report's lines; the file (--out) and the rows (--json) rewritten after every measured line, so a run
    cut short keeps what it measured."""

    def __init__(self, args, lines):
        self.args, self.lines, self.rows = args, lines, []

    def add(self, line, row=None):
        self.lines.append(line)
        if row is not None:
            self.rows.append(row)
        print(line, flush=True)
        self.write()

    def write(self):
        if self.args.out:
            self.args.out.parent.mkdir(parents=True, exist_ok=True)
            self.args.out.write_text("\n".join(self.lines) + "\n")
        if self.args.json:
            self.args.json.parent.mkdir(parents=True, exist_ok=True)
            self.args.json.write_text(json.dumps({"argv": self.args.argv, "rows": self.rows}, indent=1))


def gpu_main(args):
    """The CUDA table (--tiny: the same code on the CPU, one small cell, no flex, no memory figure)."""
    gpu_settings(args)
    cuda = args.device == "cuda"
    dtype = getattr(torch, args.dtype)
    reps, budget = args.reps, Budget(args.budget_s or None, reserve=0.0)
    mine = ours(args, torch.empty(1, 8, 1, 64, device=args.device, dtype=dtype))
    if cuda:
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        machine = f"{props.name} (sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB)"
    else:
        machine = f"{cpu_name()}, {torch.get_num_threads()} threads (--tiny: the code path, not a measurement)"
    table = Table(
        args,
        [
            "# Prefix attention on a GPU: our kernels against FlashAttention-2 and flex_attention",
            "",
            f"Produced by `python bench/attention.py {' '.join(args.argv)}` (gpu_main).",
            "",
            f"Machine: {machine}; {datetime.date.today().isoformat()}; torch {torch.__version__} (CUDA "
            f"{torch.version.cuda}), triton {version('triton')}, flash-attn {version('flash-attn')}.",
            "",
            f"{args.dtype}; q [B, Hq, T, d], k/v [B, Hkv, T, d], a prefix [Hkv, P, d] shared by the batch; "
            "causal over the sequence, every query sees the whole prefix; no padding; everything requires grad. "
            f"Time: forward+backward, median of {reps} CUDA-event timings after {GPU_WARMUP} warm-up calls. "
            "Memory: peak allocated during one forward+backward above what was allocated before it. TFLOP/s: "
            "visible (query, key) pairs only, 4·d FLOPs each forward, 2.5x that backward. Ratios: / `fa2` "
            "(or / `sdpa-mask` where SDPA's flash kernel does not apply; the `peer` column says which); below 1 "
            "is faster or smaller. err: largest |out - sdpa-mask's out| / largest |sdpa-mask's out|. Every cell's "
            "peers and ours first, then flex for every cell (its calls compile); the file is rewritten after every "
            "line.",
            "",
            "Peers: `fa2` = prefix concatenated per row, SDPA with a bottom-right causal bias (FlashAttention-2); "
            "`sdpa-mask` = prefix concatenated per row, SDPA with a boolean mask; `flex` = torch.compile'd "
            'flex_attention, block mask "prefix visible, sequence causal". Ours: ' + (", ".join(mine) or "none") + ".",
            "",
            "| model | B | T | P | impl | ms | TFLOP/s | time x peer | peak MiB | mem x peer | peer | err |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ],
    )
    print("\n".join(table.lines), flush=True)
    table.write()
    peers = {}  # cell -> (peer name, its result): flex's ratios in the second pass
    flex_failed = None
    cells = [(cell, "first") for cell in gpu_cells(args)] + [(cell, "flex") for cell in gpu_cells(args)]
    for (model, (Hq, Hkv, d), B, T, P), turn in cells:
        head, key = f"| {model} | {B} | {T} | {P}", (model, B, T, P)
        if turn == "flex" and key not in peers:
            continue  # its first pass did not run
        if not budget.fits(0.0):
            impl = "-" if turn == "first" else "flex"
            table.add(
                f"{head} | {impl} | skipped: {args.budget_s:.0f} s budget spent | | | | | | |",
                {"model": model, "B": B, "T": T, "P": P, "impl": impl, "skipped": "budget"},
            )
            continue
        xs = inputs(B, P, T, Hq, Hkv, d, dtype, args.device)
        grad = torch.randn(B, Hq, T, d, generator=torch.Generator().manual_seed(1)).to(xs[0])
        with torch.no_grad():
            truth = baseline(*[x.detach() for x in xs]).float()
        if turn == "first":
            fns = {"fa2": fa2_peer, "sdpa-mask": baseline}
            for name in mine:
                fns[name] = lambda q, k, v, pk, pv, _impl=name: prefix_attention(
                    q, k, v, pk, pv, causal=True, impl=_impl
                )
        else:
            fns = {"flex": None}  # made when its turn comes: its first call compiles
        fa2 = cuda and turn == "first" and fa2_applies(xs[0], concat_prefix(*xs[1:])[0])
        flops = attention_flops(B, Hq, T, P, d)
        results = {}
        peer, base = peers.get(key, (None, None))
        for name, fn in fns.items():
            try:
                if name == "flex":
                    if not cuda:
                        raise RuntimeError("not run by the CPU check (torch.compile)")
                    if flex_failed:
                        raise RuntimeError(f"not retried ({flex_failed})")
                    fn = flex_peer(T, P, args.device)
                results[name] = gpu_measure(fn, xs, grad, reps, truth, args.device)
            except Exception as e:  # noqa: BLE001 -- an OOM or an unsupported shape is a result too
                results[name] = f"failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
                if name == "flex" and cuda:
                    flex_failed = flex_failed or results[name][:80]
                if cuda:
                    torch.cuda.empty_cache()
            if name == "fa2":
                continue  # printed with sdpa-mask, once the peer is known
            if name == "sdpa-mask":
                peer = "fa2" if fa2 and not isinstance(results["fa2"], str) else "sdpa-mask"
                base = results[peer]
                peers[key] = (peer, base)
                names = ["fa2", "sdpa-mask"]
            else:
                names = [name]
            for shown in names:
                r, row = results[shown], {"model": model, "B": B, "T": T, "P": P, "impl": shown, "peer": peer}
                if isinstance(r, str):
                    table.add(f"{head} | {shown} | {r} | | | | | {peer} | |", {**row, "error": r})
                    continue
                t, m, err = r
                ok = not isinstance(base, str)
                ratio = (
                    f"{t / base[0]:.2f} | {m / 2**20:.0f} | {m / max(base[1], 1):.2f}"
                    if ok and cuda
                    else f"{t / base[0]:.2f} | - | -"
                    if ok
                    else f"- | {m / 2**20:.0f} | -"
                )
                table.add(
                    f"{head} | {shown} | {t * 1e3:.2f} | {flops / t / 1e12:.0f} | {ratio} | {peer} | {err:.1e} |",
                    {**row, "seconds": t, "peak_bytes": m, "err": err, "tflops": flops / t / 1e12},
                )
        del xs, grad, truth, fns
        if cuda:
            torch.cuda.empty_cache()
    return 0


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="gpu_main's code on the CPU: one small cell, bf16, the "
        "peers and our kernels (triton in its interpreter when TRITON_INTERPRET=1), no flex",
    )
    ap.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="default: float32 (CPU), bfloat16 (CUDA)",
    )
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="default: 1 8 32 (CPU), 4 (CUDA)")
    ap.add_argument("--prefix", type=int, nargs="+", default=None, help="default: 16 64 256 (CPU), 20 128 (CUDA)")
    ap.add_argument("--seq", type=int, nargs="+", default=None, help="default: 128 512 (CPU), 1024 4096 (CUDA)")
    ap.add_argument(
        "--heads",
        type=int,
        nargs=2,
        default=None,
        metavar=("HQ", "HKV"),
        help="default: 9 3 (CPU); on CUDA the GPU_MODELS shapes unless --heads/--dim are given",
    )
    ap.add_argument("--dim", type=int, default=None, help="default: 64 (with --heads on CUDA)")
    ap.add_argument("--reps", type=int, default=None, help="default: 5 (CPU), 20 (CUDA)")
    ap.add_argument(
        "--impls",
        nargs="+",
        default=None,
        help="default: sdpa split triton flash auto (CPU), triton flash (CUDA; the peers always run)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--budget-s", type=float, default=0, help="CUDA: start no cell after this many seconds (0: none)")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    ap.add_argument("--json", type=Path, default=None, help="CUDA: also write the rows here")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    if args.tiny:
        args.device = "cpu"
    return args


def main(argv=None):
    args = parse(argv)
    if args.device == "cuda" or args.tiny:
        return gpu_main(args)
    for name, default in (
        ("dtype", "float32"),
        ("batch", [1, 8, 32]),
        ("prefix", [16, 64, 256]),
        ("seq", [128, 512]),
        ("heads", [9, 3]),
        ("dim", 64),
        ("reps", 5),
        ("impls", ["sdpa", "split", "triton", "flash", "auto"]),
    ):
        if getattr(args, name) is None:
            setattr(args, name, default)
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

    device_name = f"{cpu_name()}, {torch.get_num_threads()} threads"
    mem_what = "bytes saved for backward beyond the inputs"
    head = ["B", "P", "T", "baseline ms", "baseline MB"]
    for name in impls:
        head += [f"{name} time x", f"{name} mem x"]
    lines = [
        f"device: {device_name}; torch {torch.__version__}; {args.dtype}; Hq/Hkv {Hq}/{Hkv}, d {args.dim}; "
        f"causal, prefix shared; median of {args.reps}; memory = {mem_what}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    print(lines[0])
    print("\n".join(lines[2:4]), flush=True)
    for B in args.batch:
        for P in args.prefix:
            for T in args.seq:
                xs = inputs(B, P, T, Hq, Hkv, args.dim, dtype, args.device)
                grad = torch.randn(B, Hq, T, args.dim, generator=torch.Generator().manual_seed(1)).to(xs[0])
                t_base, m_base = measure(baseline, xs, grad, args.reps)
                row = [str(B), str(P), str(T), f"{t_base * 1e3:.1f}", f"{m_base / 2**20:.1f}"]
                for name in impls:
                    label = name
                    if name == "auto":
                        label = resolve_impl("auto", xs[0], xs[3], None, True)

                    def fn(q, k, v, pk, pv, _impl=name):
                        return prefix_attention(q, k, v, pk, pv, causal=True, impl=_impl)

                    t, m = measure(fn, xs, grad, args.reps)
                    row += [
                        f"{t / t_base:.2f}" + (f" ({label})" if name == "auto" else ""),
                        f"{m / m_base:.2f}" if m_base else "-",
                    ]
                line = "| " + " | ".join(row) + " |"
                lines.append(line)
                print(line, flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
