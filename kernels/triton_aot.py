"""Compile the Triton kernels for CUDA GPUs ahead of time, on a machine without one, exactly as they are launched.

    TRITON_INTERPRET= python -m ptune_dist.kernels.triton_aot [--arch 80 90] [--json] [--table docs/kernel_resources.md]

What is compiled: the launches `triton_impl` builds (`forward_launch`, `backward_launches`: the argument lists,
the per-architecture tiles of `triton_impl.tiles(D, arch=...)`, the options) on meta tensors, handed to
Triton's own JIT (`JITFunction.warmup`) under a stand-in driver that names the target. The binder Triton
generates for each kernel then derives, as at a launch on that GPU, the signature, the specialisation of every
integer and pointer argument the kernel does not exempt (divisible by 16, == 1), the constexprs and the
options; meta tensors have data_ptr 0, aligned, as the CUDA caching allocator's blocks are. So the binaries
are the ones the GPU runs (the JIT's cache key is recorded with each), nothing is allocated, no driver is
needed, and ptxas comes with triton's wheel. Triton's interpreter (TRITON_INTERPRET=1) accepts code that its
compiler refuses, which is what this catches; a kernel must also fit the target's shared memory per block.

VARIANTS are the launches of Llama-like calls (32 query heads over 8 KV heads, sequences of 1000-2048,
prefixes of 20-128): every combination of causal, key padding and prefix layout (shared, per row, none,
packed rows with a shared or per-row prefix, packed rows with a prefix table) in bfloat16 at head dims 64 and
128; float16 on one of them, head dim 256 (Gemma) on two. Launches that share a JIT key are compiled once.
float32 is not launched on CUDA (triton_impl.unavailable), so it is not compiled. `reshaped_keys` checks that
other batch sizes, lengths, prefix lengths, head counts and Hugging Face's [B, T, H, d]-transposed q/k/v need
no other binary (the kernels' do_not_specialize).

Each compile's resources come from ptxas -v (triton's own invocation, its log captured): registers, spill
stores and loads (bytes per thread), and the shared memory Triton allocates. `--table PATH` writes them to
docs/kernel_resources.md; tests/test_kernels_triton_aot.py recomputes the table, fails when the committed
one differs, and fails when a bf16/fp16 kernel spills on sm_90 at head dim 64 or 128.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import itertools
import json
import platform
import re
import sys
import textwrap
import time

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from . import triton_blocks, triton_impl
from .triton_packed import PackedLayout

ARCHS = triton_blocks.ARCHS
# the most shared memory one block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin): A100, H100/H200
MAX_SHARED = {80: 166912, 90: 232448}
SHARED_8X = 101376  # what 8.6 / 8.9 (RTX 30xx/40xx, A10, L4, L40) offer; they take the sm_80 tiles
LAYOUTS = ("shared", "per_row", "none", "packed_shared", "packed_per_row", "packed_table")
# Llama-like shapes, one per layout (the binaries do not depend on them: see reshaped_keys)
SHAPES = {
    "shared": dict(B=4, T=2048, P=20),
    "per_row": dict(B=2, T=1024, P=128),
    "none": dict(B=3, T=1000, P=0),
    "packed_shared": dict(B=2, T=2048, P=64),
    "packed_per_row": dict(B=3, T=1024, P=20),
    "packed_table": dict(B=2, T=2048, P=100, N=4),
}
VARIANTS = tuple(
    [
        dict(dtype=torch.bfloat16, d=d, causal=c, kpm=m, layout=lay)
        for d, c, m, lay in itertools.product((64, 128), (True, False), (True, False), LAYOUTS)
    ]
    # fp16 compiles to the same registers, spills and shared memory as bf16 (all 56 bf16 binaries at head dims 64
    # and 128 compiled in fp16 too, on both archs, when these tiles were chosen): one variant keeps it compiled
    + [dict(dtype=torch.float16, d=128, causal=False, kpm=True, layout="packed_table")]
    + [
        dict(dtype=torch.bfloat16, d=256, causal=True, kpm=True, layout="per_row"),
        dict(dtype=torch.bfloat16, d=256, causal=True, kpm=False, layout="packed_table"),
    ]
)
# other shapes for the same variants: batch 1, lengths off every multiple of 16, one query, MHA, GQA 3, and
# q/k/v as Hugging Face's attention hands them over (views of [B, T, H, d], transposed)
RESHAPED = (
    dict(B=1, T=1, P=1, H=32, Hkv=8),
    dict(B=5, T=777, P=7, H=9, Hkv=3),
    dict(B=8, T=4096, P=0, H=16, Hkv=16),
    dict(B=7, T=33, P=33, H=12, Hkv=4, N=3),
    dict(B=3, T=1001, P=20, hf=True),
)


def launches(
    dtype, d, causal, kpm, layout, arch=triton_blocks.DEFAULT_ARCH, B=2, H=32, Hkv=8, T=1024, P=20, N=3, hf=False
):
    """The forward and backward launches of one call on compute capability `arch`, on meta tensors. layout:
    the prefix (shared [Hkv, P, d], per_row [B, Hkv, P, d], none), packed rows (segment ids) with a shared or
    per-row prefix, or packed rows with a table of N prefixes (and prefix ids). hf: q, k, v transposed views of
    [B, T, H, d] (Hugging Face's layout), else contiguous [B, H, T, d]."""
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{dtype}: the Triton kernels are launched on CUDA in float16 and bfloat16 only")

    def t(*shape):
        return torch.empty(*shape, dtype=dtype, device="meta")

    def heads(h):
        return t(B, T, h, d).transpose(1, 2) if hf else t(B, h, T, d)

    q, k, v = heads(H), heads(Hkv), heads(Hkv)
    prefix = {"per_row": (B, Hkv, P, d), "packed_per_row": (B, Hkv, P, d), "packed_table": (N, Hkv, P, d)}
    pk, pv = t(*prefix.get(layout, (Hkv, P, d))), t(*prefix.get(layout, (Hkv, P, d)))
    packed = None
    if layout.startswith("packed"):
        E = N if layout == "packed_table" else 1
        ints = dict(dtype=torch.int32, device="meta")
        packed = PackedLayout(torch.empty(4, B, T, **ints), torch.empty(B, E, 2, **ints), layout == "packed_table")
    mask = torch.empty(B, T, dtype=torch.uint8, device="meta") if kpm else None
    blocks = triton_impl.tiles(d, arch=arch)
    (o, lse), fwd = triton_impl.forward_launch(q, k, v, pk, pv, mask, causal, d**-0.5, blocks, packed)
    _, bwd = triton_impl.backward_launches(
        q, k, v, pk, pv, mask, o, lse, torch.empty_like(o), causal, d**-0.5, blocks, None, packed
    )
    return [fwd, *bwd]


class _StandInDriver:
    """What JITFunction.run asks the active driver for: the target (and the device its per-device caches are
    keyed by). Nothing is launched: warmup only compiles."""

    def __init__(self, arch, device):
        self.arch, self.device = arch, device

    def get_current_target(self):
        return GPUTarget("cuda", self.arch, 32)

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return None


@contextlib.contextmanager
def _jit_for(arch, device):
    previous = driver._active  # restored as it was: reset_active() would look for a real driver, and fail here
    driver.set_active(_StandInDriver(arch, device))
    try:
        yield
    finally:
        driver.set_active(previous)


def jit_compile(launch, arch):
    """(compiled kernel, JIT cache key, ptxas log) of `launch` on sm_`arch`, through the JIT's own binder;
    key and log are None when this process compiled the same key before (the JIT's cache answered)."""
    keys, log = [], io.StringIO()

    def hook(*, key, **_):
        keys.append(key)

    with _jit_for(arch, ("aot", arch)), knobs.runtime.scope(), knobs.nvidia.scope(), knobs.compilation.scope():
        knobs.runtime.jit_cache_hook = hook
        knobs.nvidia.dump_ptxas_log = True  # printed by triton after its ptxas run: captured below
        knobs.compilation.always_compile = True  # never an on-disk cache hit, which would print no log
        with contextlib.redirect_stdout(log):
            kernel = launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.meta)
    return kernel, (keys[0] if keys else None), (log.getvalue() if keys else None)


def jit_keys(launch_lists, arch):
    """The JIT cache keys (in first-seen order, each once) that these launches would compile on sm_`arch`,
    computed by the JIT's binder without compiling anything."""
    keys = {}

    def hook(*, key, **_):
        keys[key] = None
        return True  # "handled": the JIT compiles nothing (and caches nothing: a key comes back each time)

    with _jit_for(arch, ("keys", arch)), knobs.runtime.scope():
        knobs.runtime.jit_cache_hook = hook
        for launch in itertools.chain.from_iterable(launch_lists):
            launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.meta)
    return list(keys)


def ptxas_resources(log, name):
    """(registers, spill store bytes, spill load bytes) of entry function `name` from a `ptxas -v` log."""
    part = log[log.index(f"Function properties for {name}") :]
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", part)
    regs = re.search(r"Used (\d+) registers", part)
    return int(regs.group(1)), int(spills.group(1)), int(spills.group(2))


KERNEL_NAMES = {"prefix_attention_fwd": "fwd", "prefix_attention_bwd_dq": "dq", "prefix_attention_bwd_dkdv": "dkdv"}


def describe(kernel):
    """(short name, dtype, BLOCK_D, flags) of a compiled kernel, from what its binder derived."""
    sig, names = kernel.src.signature, kernel.src.fn.arg_names
    const = {names[path[0]]: value for path, value in kernel.src.constants.items()}
    flags = [f for f, on in (("causal", const["CAUSAL"]), ("kpm", const["HAS_KPM"]), ("packed", const["PACKED"])) if on]
    short = KERNEL_NAMES[kernel.src.fn.__name__]
    if short == "dkdv":
        flags.insert(0, "prefix keys" if const["PREFIX"] else "sequence keys")
        if sig["DK"] != sig["Q"]:
            flags.append(f"{sig['DK'][1:]} partials")
    return short, sig["Q"][1:], const["BLOCK_D"], flags


def compile_all(archs=ARCHS, variants=VARIANTS):
    """Compile every distinct launch of every variant for every arch; one record per compile (error: None or
    its text)."""
    if triton_impl.INTERPRETED:
        raise RuntimeError(
            "the kernels were imported under TRITON_INTERPRET=1: there is nothing to compile; "
            "run with TRITON_INTERPRET unset"
        )
    records = []
    for arch in archs:
        for variant in variants:
            for launch in launches(**variant, **SHAPES[variant["layout"]], arch=arch):
                rec = dict(arch=arch, variant={k: str(v) for k, v in variant.items()}, error=None)
                start = time.perf_counter()
                try:
                    kernel, key, log = jit_compile(launch, arch)
                    if key is None:
                        continue  # the same binary as an earlier launch
                    regs, stores, loads = ptxas_resources(log, kernel.name)
                    names = kernel.src.fn.arg_names
                    short, dtype, d, flags = describe(kernel)
                    rec |= dict(
                        kernel=short,
                        dtype=dtype,
                        d=d,
                        flags=flags,
                        key=key,
                        registers=regs,
                        spill_stores=stores,
                        spill_loads=loads,
                        shared=kernel.metadata.shared,
                        signature=dict(kernel.src.signature),
                        constexprs={names[p[0]]: v for p, v in kernel.src.constants.items()},
                        divisible=sorted(names[p[0]] for p, a in kernel.src.attrs.items() if a),
                        options=dict(num_warps=kernel.metadata.num_warps, num_stages=kernel.metadata.num_stages),
                    )
                    if kernel.metadata.shared > MAX_SHARED[arch]:
                        rec["error"] = (
                            f"needs {kernel.metadata.shared} bytes of shared memory per block; "
                            f"sm_{arch} has {MAX_SHARED[arch]}"
                        )
                except Exception as e:  # noqa: BLE001 -- reported per launch, with its text
                    rec |= dict(
                        kernel=KERNEL_NAMES.get(launch.kernel.__name__, launch.kernel.__name__),
                        error=f"{type(e).__name__}: {e}",
                    )
                rec["seconds"] = round(time.perf_counter() - start, 2)
                records.append(rec)
    return records


def reshaped_keys(arch, variants=VARIANTS):
    """The JIT keys that RESHAPED calls of the variants need beyond those of their SHAPES calls: none when no
    size the kernels leave unspecialised leaks into a binary."""
    base = set(jit_keys([launches(**v, **SHAPES[v["layout"]], arch=arch) for v in variants], arch))
    other = jit_keys(
        [
            launches(**v, **{**SHAPES[v["layout"]], **s, **({"P": 0} if v["layout"] == "none" else {})}, arch=arch)
            for v in variants
            for s in RESHAPED
        ],
        arch,
    )
    return sorted(set(other) - base)


# ---- the table: docs/kernel_resources.md ----

BEGIN = "<!-- computed by ptune_dist.kernels.triton_aot: tests/test_kernels_triton_aot.py compares this part -->"
END = "<!-- end of the computed part -->"
ORDER = {"fwd": 0, "dq": 1, "dkdv": 2}


def table_rows(records):
    """The computed part of docs/kernel_resources.md: one line per compiled kernel, sorted."""
    recs = sorted(records, key=lambda r: (r["arch"], r["d"], r["dtype"], ORDER[r["kernel"]], r["flags"]))
    lines = [
        "| arch | kernel | dtype | d | what | BLOCK_M x BLOCK_N, warps, stages | registers | spill stores / loads "
        "(B per thread) | shared (B) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        c, o = r["constexprs"], r["options"]
        spill = f"{r['spill_stores']} / {r['spill_loads']}"
        lines.append(
            f"| sm_{r['arch']} | {r['kernel']} | {r['dtype']} | {r['d']} | {', '.join(r['flags']) or '-'} | "
            f"{c['BLOCK_M']} x {c['BLOCK_N']}, {o['num_warps']}, {o['num_stages']} | {r['registers']} | "
            f"{'**' + spill + '**' if r['spill_stores'] or r['spill_loads'] else spill} | {r['shared']} |"
        )
    return "\n".join(lines)


def computed_part(text):
    """The part of a kernel_resources.md between BEGIN and END (None when the markers are missing)."""
    if BEGIN not in text or END not in text:
        return None
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip()


def ptxas_versions():
    from triton.backends.nvidia.compiler import get_ptxas

    return {arch: get_ptxas(arch).version for arch in ARCHS}


def summary(records):
    """Per arch and head dim: how many bf16/fp16 kernels spill, and the most registers."""
    out = []
    for arch, d in sorted({(r["arch"], r["d"]) for r in records}):
        rs = [r for r in records if (r["arch"], r["d"]) == (arch, d)]
        spilling = [r for r in rs if r["spill_stores"] or r["spill_loads"]]
        out.append(
            f"- sm_{arch}, head dim {d}: {len(rs)} kernels, {len(spilling)} spilling"
            + (f" (at most {max(r['spill_stores'] for r in spilling)} B of stores per thread)" if spilling else "")
            + f", at most {max(r['registers'] for r in rs)} registers, "
            f"at most {max(r['shared'] for r in rs)} B of shared memory"
        )
    return "\n".join(out)


def _machine():
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu} ({platform.system()} {platform.machine()})"


def write_table(path, records):
    tiles = "\n".join(
        f"- sm_{arch}, BLOCK_D <= {bd}: forward {f[0]} x {f[1]} ({f[2]} warps), dQ {q[0]} x {q[1]} "
        f"({q[2]} warps), dK/dV {kv[0]} x {kv[1]} ({kv[2]} warps)"
        for arch, rows in sorted(triton_blocks.TABLE.items())
        for bd, (f, q, kv) in sorted(rows.items())
    )
    versions = ptxas_versions()
    made = (
        f"{datetime.date.today().isoformat()}, triton {triton.__version__} (its wheel's ptxas {versions[80]} for "
        f"sm_80 and {versions[90]} for sm_90), torch {torch.__version__}, on {_machine()}, without a GPU"
    )
    text = f"""# Registers, spills and shared memory of the Triton kernels

Made by `TRITON_INTERPRET= python -m ptune_dist.kernels.triton_aot --table docs/kernel_resources.md`:
{textwrap.fill(made + ".", 110)}

Each row is one binary the launcher's JIT compiles: kernels/triton_aot.py builds the launches of
`triton_impl.forward_launch` / `backward_launches` on meta tensors for Llama-like calls (32 query heads over
8 KV heads, sequences of 1000-2048, prefixes of 20-128; bf16 with and without causal masking, key padding,
and every prefix layout: shared, per row, none, packed rows with a shared or per-row prefix or a prefix
table; fp16 on one, head dim 256 on two), and compiles them through Triton's own specialisation of those
arguments. Launches that share a binary are one row. Registers and spills (bytes per thread) are ptxas -v's;
shared memory is Triton's allocation per block. A bold spill is a kernel that runs out of registers. The
numbers belong to this triton and ptxas: the GPU machine's triton (another ptxas) may differ by a few
registers. "what": the masks compiled in (causal, key padding `kpm`, `packed` rows); the dK/dV kernel serves
the sequence keys and the prefix keys, whose gradient for a shared prefix or a table goes to fp32 partial
sums.

The tiles (kernels/triton_blocks.py):

{tiles}

With the former tiles (64 x 64 in every kernel, 64 x 32 above head dim 64, 4 warps) the bf16 dK/dV kernels
sat at 254-255 registers and nearly all spilled: on sm_90 up to 200 B of spill stores per thread at head dim
64 and 340 B at 128, on sm_80 up to 228 B at head dim 64 (this tool, four of the variants; the review in
issue 20 saw up to 848 B on sm_80), and sm_80's packed dQ at head dim 64 up to 60 B; that review saw fp32 (no
longer launched on CUDA) move 13-54 KB through spills.

{summary(records)}

tests/test_kernels_triton_aot.py recomputes the part below and fails when it differs from this file (rerun
the command above), and when a bf16/fp16 kernel spills on sm_90 at head dim 64 or 128.

{BEGIN}
{table_rows(records)}
{END}
"""
    with open(path, "w") as f:
        f.write(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(MAX_SHARED))
    ap.add_argument("--json", action="store_true", help="print {records, reshaped} as one JSON object")
    ap.add_argument("--table", metavar="PATH", help="write the registers/spills/shared-memory table (markdown)")
    args = ap.parse_args(argv)
    records = compile_all(args.arch)
    if args.table:
        if sorted(args.arch) != list(ARCHS) or any(r["error"] for r in records):
            ap.error("--table needs every arch and every compile to succeed")
        write_table(args.table, records)
    if args.json:
        print(json.dumps(dict(records=records, reshaped={a: reshaped_keys(a) for a in args.arch})))
    else:
        for r in records:
            what = (
                r["error"].strip().splitlines()[-1]
                if r["error"]
                else f"{r['registers']} registers, spills {r['spill_stores']}/{r['spill_loads']} B, "
                f"{r['shared']} B shared"
            )
            print(f"sm_{r['arch']} {r['kernel']} {r.get('dtype')} d{r.get('d')} {r.get('flags')}: {what}")
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
