"""The Triton implementation: the kernels of triton_fwd.py / triton_bwd.py as two torch.library custom operators,
`ptune::triton_fwd` (output, log-sum-exp) and `ptune::triton_bwd` (the gradients), joined by register_autograd.
Their fake implementations allocate what the kernels write (no launch), so a step with these kernels traces under
FakeTensorMode, on a fake CUDA device too, and torch.compile sees one opaque call per attention.

Compiled on a CUDA GPU. On CPU the kernels run only in Triton's interpreter, which is chosen when the
kernel modules are imported, so TRITON_INTERPRET=1 must be in the environment before the first call
of `prefix_attention(..., impl="triton")` (the tests set it at import). In the interpreter, tiles are
upcast to fp32 before `tl.dot` (its bf16 dot gives wrong results, triton issue 11584); accumulation
is fp32 everywhere.

Block sizes: on a GPU each kernel (forward, dQ, dK/dV) takes its own BLOCK_M x BLOCK_N and warps from
kernels/triton_blocks.py's table, per architecture (`tiles(D, arch=triton_blocks.device_arch(q))`; the
capability is read once per device, never for a fake or meta tensor) and head dim; `prefix_attention`'s
block_m / block_n, when given, replace them in every kernel. The interpreter takes 16 x 16, where small
blocks make odd lengths cross block edges in tests. float32 runs only in the interpreter (for the CPU
tests): on CUDA `unavailable` refuses it (impl='sdpa' or 'auto' runs fp32 there); its fp32-dot path moved
13-54 KB per thread through register spills (issue 20).

Each kernel's argument list is written once, in `forward_launch` / `backward_launches` (a `Launch` per
kernel call); kernels/triton_aot.py compiles those same launches for sm_80/sm_90 without a GPU, through
Triton's own JIT specialisation of them, since the interpreter accepts code the compiler refuses, and
tabulates their registers, spills and shared memory (docs/kernel_resources.md). Sizes that change from
batch to batch are not specialised on (`do_not_specialize` in triton_fwd.py / triton_bwd.py): one binary
per kernel and flag set serves every batch length.

Packed rows (segment_ids, and prefix_ids with a prefix table): the wrapper builds the int32 layout of
triton_packed.py once per batch (segment start/end per position, prefix entry per query; a segment that is
not one contiguous run is a ValueError naming segment_ids on the CPU, a device-side assert on a GPU) and the
same kernels run with PACKED set: key blocks wholly outside the queries' sequences are never visited, the
prefix (shared, per row, or a table) is read in place, and a table's gradient is summed in fp32 partials in a
fixed order.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction

from . import triton_blocks
from .triton_blocks import Tiles
from .triton_bwd import prefix_attention_bwd_dkdv, prefix_attention_bwd_dq
from .triton_fwd import prefix_attention_fwd
from .triton_packed import PackedLayout, cached_layout

INTERPRETED = isinstance(prefix_attention_fwd, InterpretedFunction)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256


def unavailable(q: torch.Tensor, dropout_p: float = 0.0) -> str | None:
    if dropout_p > 0.0:
        return "the Triton kernels do not implement attention dropout (impl='sdpa' does; 'auto' picks it)"
    if q.dtype not in DTYPES:
        return f"the Triton kernels take float16 or bfloat16 (float32 in the CPU interpreter), not {q.dtype}"
    if q.shape[-1] > MAX_HEAD_DIM:
        return f"the Triton kernels take head dims up to {MAX_HEAD_DIM}, not {q.shape[-1]}"
    if INTERPRETED:
        return None if q.device.type == "cpu" else "the Triton interpreter (TRITON_INTERPRET=1) runs on CPU tensors"
    if q.device.type != "cuda":
        return (
            f"Triton compiles for a GPU and the tensors are on {q.device.type}; on CPU it runs only in its "
            "interpreter: set TRITON_INTERPRET=1 before the kernels are first imported (slow; for tests)"
        )
    if q.dtype == torch.float32:
        return (
            "the Triton kernels are not launched in float32 on CUDA (fp32 dots without tensor cores spill "
            "registers; fp32 is checked only in the CPU interpreter): impl='sdpa' runs it, and 'auto' picks that"
        )
    return None


KERNELS = ("fwd", "dq", "kv")  # the forward, dQ and dK/dV kernels, as triton_blocks.Tiles names them


def tiles(D, block_m=None, block_n=None, arch=None) -> Tiles:
    """The tiles of every kernel for head dim D on compute capability `arch` (triton_blocks.device_arch(q);
    None: triton_blocks.DEFAULT_ARCH): the table's on a GPU, 16 x 16 in the interpreter; block_m / block_n,
    when given, replace BLOCK_M / BLOCK_N in every kernel."""
    if INTERPRETED:
        t = triton_blocks.uniform(D, 16, 16)
    else:
        t = triton_blocks.table(arch or triton_blocks.DEFAULT_ARCH, D)
    given = {f"{k}_m": block_m for k in KERNELS if block_m} | {f"{k}_n": block_n for k in KERNELS if block_n}
    return t._replace(**given)


def _opts(dtype, blocks: Tiles, kernel: str) -> dict:
    """Launch keywords of `kernel`: its tiles and warps (no warps in the interpreter), fp32 tiles in the
    interpreter (triton issue 11584), IEEE dots for fp32 inputs (the interpreter's only)."""
    opts = dict(
        UPCAST=INTERPRETED,
        DOT_PRECISION="ieee" if dtype == torch.float32 or INTERPRETED else "tf32",
        **blocks.of(kernel),
    )
    if INTERPRETED:
        del opts["num_warps"]
    return opts


def _strides3(x):
    """(batch, head, time) strides of a [B, H, T, D] tensor, or (0, head, time) for a shared [H, T, D] one."""
    return (0, *x.stride()[:2]) if x.dim() == 3 else tuple(x.stride()[:3])


def _strides4(x, table=False):
    """(batch, entry, head, time) strides: a shared [H, T, D] prefix (0, 0, ...), a per-row [B, H, T, D] one
    (b, 0, ...), a table [N, H, T, D] (0, n, ...), partial sums [groups, E, H, T, D] (g, e, ...)."""
    if x.dim() == 5:
        return tuple(x.stride()[:4])
    if table:
        return (0, *x.stride()[:3])
    b, h, t = _strides3(x)
    return (b, 0, h, t)


def _packed_args(packed, q):
    """(META pointer, its plane stride); q stands in for META when the rows are not packed (never read)."""
    return (q, 0) if packed is None else (packed.meta, packed.meta.stride(0))


def rows_per_program(B, Hkv, P, block_n, target_programs=128):
    """Batch rows one program sums for a shared prefix's gradient: enough programs to fill a GPU
    (about `target_programs`), as few partial sums as that allows."""
    tiles = triton.cdiv(P, block_n) * Hkv
    groups = max(1, min(B, triton.cdiv(target_programs, tiles)))
    return triton.cdiv(B, groups)


class Launch(NamedTuple):
    """One kernel launch: kernel[grid](*args, **meta). The launches below are the only place their
    argument lists are written; kernels/triton_aot.py compiles them ahead of time from the same tuples."""

    kernel: object
    grid: tuple
    args: tuple
    meta: dict

    def run(self):
        self.kernel[self.grid](*self.args, **self.meta)


def forward_launch(q, k, v, pk, pv, kpm, causal, scale, blocks: Tiles, packed: PackedLayout | None = None):
    """The output and log-sum-exp buffers, and the forward kernel's launch that fills them (blocks: `tiles`;
    packed rows: `packed`, from triton_packed.layout)."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    o = torch.empty_like(q)
    lse = torch.empty(B, H, Tq, device=q.device, dtype=torch.float32)
    has_kpm = kpm is not None
    table = packed is not None and packed.table
    packed_meta, stride_sp = _packed_args(packed, q)
    args = (
        q,
        k,
        v,
        pk,
        pv,
        kpm if has_kpm else q,
        packed_meta,
        o,
        lse,
        *q.stride()[:3],
        *k.stride()[:3],
        *v.stride()[:3],
        *_strides4(pk, table),
        *_strides4(pv, table),
        kpm.stride(0) if has_kpm else 0,
        stride_sp,
        *o.stride()[:3],
        H,
        H // Hkv,
        Tq,
        Tk,
        pk.shape[-2],
        D,
        scale,
    )
    meta = dict(CAUSAL=causal, HAS_KPM=has_kpm, PACKED=packed is not None, **_opts(q.dtype, blocks, "fwd"))
    return (o, lse), Launch(prefix_attention_fwd, (triton.cdiv(Tq, blocks.fwd_m), B * H), args, meta)


def backward_launches(
    q, k, v, pk, pv, kpm, o, lse, do, causal, scale, blocks: Tiles, prefix_rows, packed: PackedLayout | None = None
):
    """The gradient buffers (dq, dk, dv, prefix ones: per-row, or [groups, E, Hkv, P, D] fp32 partial sums
    for a shared prefix (E = 1) or a prefix table (E = N)) and the backward kernels' launches that fill them
    (blocks: `tiles`)."""
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    P = pk.shape[-2]
    BN = blocks.kv_n
    delta = (do.float() * o.float()).sum(-1)
    has_kpm = kpm is not None
    kpm_arg = kpm if has_kpm else q
    kpm_stride = kpm.stride(0) if has_kpm else 0
    table = packed is not None and packed.table
    packed_meta, stride_sp = _packed_args(packed, q)
    flags = dict(PACKED=packed is not None)

    dq = torch.empty_like(q)
    launches = [
        Launch(
            prefix_attention_bwd_dq,
            (triton.cdiv(Tq, blocks.dq_m), B * H),
            (
                q,
                k,
                v,
                pk,
                pv,
                kpm_arg,
                packed_meta,
                do,
                lse,
                delta,
                dq,
                *q.stride()[:3],
                *k.stride()[:3],
                *v.stride()[:3],
                *_strides4(pk, table),
                *_strides4(pv, table),
                kpm_stride,
                stride_sp,
                *do.stride()[:3],
                *dq.stride()[:3],
                H,
                H // Hkv,
                Tq,
                Tk,
                P,
                D,
                scale,
            ),
            dict(CAUSAL=causal, HAS_KPM=has_kpm, **flags, **_opts(q.dtype, blocks, "dq")),
        )
    ]

    meta = dict(**flags, **_opts(q.dtype, blocks, "kv"))
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    launches.append(
        Launch(
            prefix_attention_bwd_dkdv,
            (triton.cdiv(Tk, BN), Hkv, B),
            (
                q,
                k,
                v,
                kpm_arg,
                packed_meta,
                packed_meta,
                do,
                lse,
                delta,
                dk,
                dv,
                *q.stride()[:3],
                *_strides4(k),
                *_strides4(v),
                kpm_stride,
                stride_sp,
                Tk,
                *do.stride()[:3],
                *_strides4(dk),
                *_strides4(dv),
                B,
                H,
                H // Hkv,
                Tq,
                Tk,
                Tk - Tq,
                D,
                scale,
                1,
                1,
            ),
            dict(CAUSAL=causal, HAS_KPM=has_kpm, PREFIX=False, **meta),
        )
    )

    dpk_buf = dpv_buf = None
    if P:
        shared = pk.dim() == 3 or table  # read by every row: fp32 partial sums over groups of rows
        E = pk.shape[0] if table else 1
        rows = (prefix_rows or rows_per_program(B, Hkv * E, P, BN)) if shared else 1
        groups = triton.cdiv(B, rows)
        if shared:  # per-group partial sums in fp32, added up by the caller in a fixed order
            dpk_buf = torch.empty(groups, E, Hkv, P, D, device=q.device, dtype=torch.float32)
            dpv_buf = torch.empty_like(dpk_buf)
        else:
            dpk_buf, dpv_buf = torch.empty_like(pk), torch.empty_like(pv)
        ranges = packed_meta if packed is None else packed.ranges
        launches.append(
            Launch(
                prefix_attention_bwd_dkdv,
                (triton.cdiv(P, BN), Hkv, groups * E),
                (
                    q,
                    pk,
                    pv,
                    kpm_arg,
                    packed_meta,
                    ranges,
                    do,
                    lse,
                    delta,
                    dpk_buf,
                    dpv_buf,
                    *q.stride()[:3],
                    *_strides4(pk, table),
                    *_strides4(pv, table),
                    0,
                    stride_sp,
                    Tk,
                    *do.stride()[:3],
                    *_strides4(dpk_buf),
                    *_strides4(dpv_buf),
                    B,
                    H,
                    H // Hkv,
                    Tq,
                    P,
                    0,
                    D,
                    scale,
                    rows,
                    E,
                ),
                dict(CAUSAL=False, HAS_KPM=False, PREFIX=True, **meta),
            )
        )
    return (dq, dk, dv, dpk_buf, dpv_buf), launches


# -- the kernels as torch.library custom operators: a forward and a backward op, with fake implementations (what
# FakeTensorMode and torch.compile see: the same buffers, no launch) and the autograd formula joining them ----------


@torch.library.custom_op("ptune::triton_fwd", mutates_args=())
def triton_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pk: torch.Tensor,
    pv: torch.Tensor,
    kpm: torch.Tensor | None,
    seg_meta: torch.Tensor | None,
    ranges: torch.Tensor | None,
    table: bool,
    causal: bool,
    scale: float,
    block_m: int | None,
    block_n: int | None,
    prefix_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, log-sum-exp) of the fused forward kernel; `prefix_rows` is the backward's (carried for autograd)."""
    blocks = tiles(q.shape[-1], block_m, block_n, triton_blocks.device_arch(q))
    packed = None if seg_meta is None else PackedLayout(seg_meta, ranges, table)
    (o, lse), launch = forward_launch(q, k, v, pk, pv, kpm, causal, scale, blocks, packed)
    launch.run()
    return o, lse


@triton_fwd.register_fake
def _(q, k, v, pk, pv, kpm, seg_meta, ranges, table, causal, scale, block_m, block_n, prefix_rows):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("ptune::triton_bwd", mutates_args=())
def triton_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pk: torch.Tensor,
    pv: torch.Tensor,
    kpm: torch.Tensor | None,
    o: torch.Tensor,
    lse: torch.Tensor,
    seg_meta: torch.Tensor | None,
    ranges: torch.Tensor | None,
    table: bool,
    causal: bool,
    scale: float,
    block_m: int | None,
    block_n: int | None,
    prefix_rows: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv, dpk, dpv) of the fused backward kernels; the prefix gradients are zero-length when P = 0."""
    return _backward(
        do,
        q,
        k,
        v,
        pk,
        pv,
        kpm,
        o,
        lse,
        seg_meta,
        ranges,
        table,
        causal,
        scale,
        block_m,
        block_n,
        prefix_rows,
        run=True,
    )


@triton_bwd.register_fake
def _(do, q, k, v, pk, pv, kpm, o, lse, seg_meta, ranges, table, causal, scale, block_m, block_n, prefix_rows):
    return _backward(
        do,
        q,
        k,
        v,
        pk,
        pv,
        kpm,
        o,
        lse,
        seg_meta,
        ranges,
        table,
        causal,
        scale,
        block_m,
        block_n,
        prefix_rows,
        run=False,
    )


def _backward(
    do, q, k, v, pk, pv, kpm, o, lse, seg_meta, ranges, table, causal, scale, block_m, block_n, prefix_rows, run: bool
):
    """The backward's buffers, filled by its launches when `run` (the fake implementation allocates the same
    buffers, partial sums included, so a traced step holds what the GPU would)."""
    packed = None if seg_meta is None else PackedLayout(seg_meta, ranges, table)
    blocks = tiles(q.shape[-1], block_m, block_n, triton_blocks.device_arch(q))
    (dq, dk, dv, dpk, dpv), launches = backward_launches(
        q, k, v, pk, pv, kpm, o, lse, do, causal, scale, blocks, prefix_rows, packed
    )
    for launch in launches if run else ():
        launch.run()
    if dpk is None:  # no prefix: zero-length gradients of the zero-length prefix
        return dq, dk, dv, torch.zeros_like(pk), torch.zeros_like(pv)
    if dpk.dim() == 5:  # shared or table: the partial sums, added in a fixed order
        dpk, dpv = dpk.sum(0).to(pk.dtype), dpv.sum(0).to(pv.dtype)
        if pk.dim() == 3:
            dpk, dpv = dpk[0], dpv[0]
    return dq, dk, dv, dpk, dpv


def _setup_context(ctx, inputs, output):
    q, k, v, pk, pv, kpm, seg_meta, ranges, table, causal, scale, block_m, block_n, prefix_rows = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, pk, pv, kpm, o, lse, seg_meta, ranges)
    ctx.args = (table, causal, scale, block_m, block_n, prefix_rows)
    ctx.mark_non_differentiable(lse)


def _autograd(ctx, do, dlse):
    q, k, v, pk, pv, kpm, o, lse, seg_meta, ranges = ctx.saved_tensors
    grads = torch.ops.ptune.triton_bwd(do.contiguous(), q, k, v, pk, pv, kpm, o, lse, seg_meta, ranges, *ctx.args)
    return *grads, *[None] * 9


triton_fwd.register_autograd(_autograd, setup_context=_setup_context)


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def prefix_attention(
    q,
    k,
    v,
    prefix_k,
    prefix_v,
    *,
    causal,
    key_padding_mask,
    scale,
    dropout_p=0.0,
    block_m=None,
    block_n=None,
    prefix_rows_per_program=None,
    segment_ids=None,
    prefix_ids=None,
):
    """Packed rows: segment_ids [B, Tk] (each sequence one contiguous run; -1 padding), and prefix_ids [B, Tq]
    with a prefix table prefix_k [N, Hkv, P, d]; see kernels/__init__.py."""
    why = unavailable(q, dropout_p)
    if why is not None:
        raise RuntimeError(why)
    dtype = q.dtype
    k, v = k.to(dtype), v.to(dtype)
    packed = None
    if segment_ids is not None:
        has_prefix = prefix_k is not None and prefix_k.shape[-2] > 0
        packed = cached_layout(
            segment_ids,
            prefix_ids if has_prefix else None,
            q.shape[2],
            has_prefix,
            prefix_k.shape[0] if has_prefix else 1,
        )
    if prefix_k is None:
        prefix_k = prefix_v = q.new_empty(k.shape[1], 0, q.shape[-1])
    prefix_k, prefix_v = prefix_k.to(dtype), prefix_v.to(dtype)
    kpm = None if key_padding_mask is None else key_padding_mask.to(torch.uint8).contiguous()
    q, k, v, prefix_k, prefix_v = map(_last_dim_contiguous, (q, k, v, prefix_k, prefix_v))
    for name, x in (("block_m", block_m), ("block_n", block_n)):
        if x is not None and (x < 16 or x & (x - 1)):
            raise ValueError(f"triton prefix attention: {name}={x} must be a power of two >= 16")
    seg_meta, ranges, table = packed if packed is not None else (None, None, False)
    out, _ = triton_fwd(
        q,
        k,
        v,
        prefix_k,
        prefix_v,
        kpm,
        seg_meta,
        ranges,
        table,
        bool(causal),
        float(scale),
        block_m,
        block_n,
        prefix_rows_per_program,
    )  # ptune::triton_fwd
    return out
