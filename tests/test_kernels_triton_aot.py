"""Every Triton kernel the launcher launches compiles for CUDA sm_80 and sm_90, on this machine, without a GPU,
exactly as launched; the registers, spills and shared memory it needs are the ones docs/kernel_resources.md shows.

The CPU tests run the kernels in Triton's interpreter, which accepts code its compiler refuses (a global
annotated `x: tl.constexpr = ...` is one). This compiles the launches `triton_impl` makes, with the GPU
path's per-arch tiles and options and Triton's own JIT specialisation of their arguments, through
kernels/triton_aot.py in one subprocess per arch (run side by side): with TRITON_INTERPRET unset (conftest sets
it for this process, and the choice is made when the kernels are imported) and a fresh TRITON_CACHE_DIR. A third
subprocess builds the launches from fake CUDA tensors, as a memory trace would, and checks that nothing asks
CUDA anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (Linux only: pip install triton)")

from ptune_dist.kernels import triton_blocks  # noqa: E402

KERNELS = {"fwd", "dq", "dkdv"}
DOC = Path(__file__).resolve().parents[1] / "docs" / "kernel_resources.md"
# what the kernels leave unspecialised (sizes that change from batch to batch), and strides that must stay
# specialised (divisible by 16: the tile loads of q/k/v/dO and the stores vectorise)
UNSPECIALISED = {
    "fwd": {"H", "GROUP", "Tq", "Tk", "P", "stride_mb", "stride_sp"},
    "dkdv": {"B", "H", "GROUP", "Tq", "N", "SHIFT", "ROWS", "E", "stride_mb", "stride_sp", "stride_sb"},
}
UNSPECIALISED["dq"] = UNSPECIALISED["fwd"]
ALIGNED = {
    "fwd": {"Q", "K", "V", "PK", "PV", "O", "stride_qt", "stride_kt", "stride_vt", "stride_pkt", "stride_ot", "D"},
    "dq": {"Q", "K", "V", "DO", "DQ", "stride_qt", "stride_kt", "stride_dot", "stride_dqt", "D"},
    "dkdv": {"Q", "K", "V", "DO", "DK", "DV", "stride_qt", "stride_kt", "stride_dot", "stride_dkt", "D"},
}

FAKE = textwrap.dedent("""
    import json, torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    torch.cuda.get_device_capability = lambda *a: (_ for _ in ()).throw(AssertionError("asked CUDA"))
    from ptune_dist.kernels import triton_blocks, triton_impl
    out = {}
    with FakeTensorMode():
        t = lambda *s, dtype=torch.bfloat16: torch.empty(*s, device="cuda", dtype=dtype)
        q, k, pk, kpm = t(2, 32, 100, 128), t(2, 8, 100, 128), t(8, 20, 128), t(2, 100, dtype=torch.uint8)
        arch = triton_blocks.device_arch(q)
        blocks = triton_impl.tiles(128, arch=arch)
        (o, lse), fwd = triton_impl.forward_launch(q, k, k, pk, pk, kpm, True, 0.1, blocks)
        bufs, bwd = triton_impl.backward_launches(q, k, k, pk, pk, kpm, o, lse, o, True, 0.1, blocks, None)
        out = dict(arch=arch, blocks=list(blocks), grids=[list(fwd.grid)] + [list(b.grid) for b in bwd],
                   shapes=[list(x.shape) for x in (o, lse, *bufs)], fp32=triton_impl.unavailable(q.float()),
                   bf16=triton_impl.unavailable(q))
    out["cuda_initialized"] = torch.cuda.is_initialized()
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The compile records and reshaped-call keys of both targets, one subprocess each (side by side: about a
    minute each), and the fake-tensor check's answer."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    cmds = [[sys.executable, "-m", "ptune_dist.kernels.triton_aot", "--arch", arch, "--json"] for arch in ("80", "90")]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in [*cmds, [sys.executable, "-c", FAKE]]
    ]
    records, reshaped, errors = [], {}, []
    outs = [proc.communicate(timeout=900) for proc in procs]
    for proc, (out, err) in zip(procs, outs):
        assert out.strip(), f"{proc.args[1:]} printed nothing (exit {proc.returncode}):\n{err[-4000:]}"
        errors.append((proc.returncode, err))
    for out, _ in outs[:2]:
        got = json.loads(out.strip().splitlines()[-1])
        records += got["records"]
        reshaped |= got["reshaped"]
    return records, reshaped, errors, json.loads(outs[2][0].strip().splitlines()[-1])


def test_every_launch_compiles_for_sm80_and_sm90(compiled):
    records, _, errors, _ = compiled
    failed = [f"sm_{r['arch']} {r['kernel']} {r['variant']}:\n{r['error']}" for r in records if r["error"]]
    assert not failed, f"{len(failed)} of {len(records)} compiles failed; the first:\n{failed[0]}"
    for returncode, stderr in errors:
        assert returncode == 0, stderr[-4000:]
    assert all(r["shared"] > 0 and r["registers"] > 0 for r in records)  # a real binary, with its resources


def _values(records, kernel, key):
    return {(r["signature"] | r["constexprs"])[key] for r in records if r["kernel"] == kernel}


def test_the_compiled_set_is_what_the_launcher_launches(compiled):
    """Every kernel for both targets, bf16 and fp16 (no fp32: not launched on CUDA), every value the GPU path
    gives each constexpr, the table's tiles and warps for each arch and head dim, and the JIT's specialisation:
    sizes left open, the tile loads' strides and pointers divisible by 16."""
    records, _, _, _ = compiled
    assert {r["kernel"] for r in records} == KERNELS
    for kernel in KERNELS:
        assert {r["arch"] for r in records if r["kernel"] == kernel} == {80, 90}
        assert _values(records, kernel, "Q") == {"*fp16", "*bf16"}
        for flag in ("CAUSAL", "HAS_KPM", "PACKED"):
            assert _values(records, kernel, flag) == {True, False}, (kernel, flag)
        assert _values(records, kernel, "UPCAST") == {False}
        assert _values(records, kernel, "DOT_PRECISION") == {"tf32"}  # tensor cores (tf32 is moot for bf16/fp16)
        assert _values(records, kernel, "BLOCK_D") == {64, 128, 256}
    for r in records:
        name = {"fwd": "fwd", "dq": "dq", "dkdv": "kv"}[r["kernel"]]
        want = triton_blocks.table(r["arch"], r["d"]).of(name)
        got = {k: r["constexprs"][k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_D")} | {
            "num_warps": r["options"]["num_warps"]
        }
        assert got == want, r
        assert not UNSPECIALISED[r["kernel"]] & (set(r["divisible"]) | set(r["constexprs"])), r
        assert all(r["signature"][n] != "constexpr" for n in UNSPECIALISED[r["kernel"]]), r
        assert ALIGNED[r["kernel"]] <= set(r["divisible"]), (r["kernel"], ALIGNED[r["kernel"]] - set(r["divisible"]))
    # the dk/dv kernel serves the sequence keys and the prefix keys, packed or not
    packed = {(r["constexprs"]["PACKED"], r["constexprs"]["PREFIX"]) for r in records if r["kernel"] == "dkdv"}
    assert packed == {(False, False), (False, True), (True, False), (True, True)}
    # the gradient of a shared prefix or a table goes to fp32 partial sums; a per-row one in the input dtype
    prefix_grads = {
        (r["constexprs"]["PACKED"], r["signature"]["DK"])
        for r in records
        if r["kernel"] == "dkdv" and r["constexprs"]["PREFIX"] and r["signature"]["Q"] == "*bf16"
    }
    assert prefix_grads == {(False, "*fp32"), (False, "*bf16"), (True, "*fp32"), (True, "*bf16")}


def test_other_batch_shapes_need_no_other_binary(compiled):
    """Batch 1-8, lengths 1-4096 (multiples of 16 and not), prefixes 0-128, MHA and GQA: the JIT keys of those
    calls are all among the compiled ones, so a run compiles each kernel once whatever its batches."""
    _, reshaped, _, _ = compiled
    assert reshaped == {"80": [], "90": []}


def test_no_half_precision_kernel_spills_on_sm90(compiled):
    """Every bf16/fp16 kernel at head dim 64 and 128 fits its registers on sm_90 (spills on sm_80 and at head
    dim 256 are shown in docs/kernel_resources.md, not failed on)."""
    records, _, _, _ = compiled
    spilling = [
        f"{r['kernel']} {r['dtype']} d{r['d']} {r['flags']}: {r['spill_stores']} B stores, {r['registers']} registers"
        for r in records
        if r["arch"] == 90 and r["d"] in (64, 128) and (r["spill_stores"] or r["spill_loads"])
    ]
    assert not spilling, "\n".join(spilling)


def test_the_sm80_tiles_fit_8x_shared_memory(compiled):
    """8.6 / 8.9 GPUs take the sm_80 tiles and offer 99 KB of shared memory per block."""
    from ptune_dist.kernels.triton_aot import SHARED_8X

    records, _, _, _ = compiled
    too_big = [
        (r["kernel"], r["d"], r["flags"], r["shared"]) for r in records if r["arch"] == 80 and r["shared"] > SHARED_8X
    ]
    assert not too_big


def test_the_resource_table_in_docs_is_current(compiled):
    import triton

    from ptune_dist.kernels.triton_aot import computed_part, table_rows

    records, _, _, _ = compiled
    text = DOC.read_text()
    regenerate = (
        "regenerate it: TRITON_INTERPRET= python -m ptune_dist.kernels.triton_aot --table docs/kernel_resources.md"
    )
    assert f"triton {triton.__version__} " in text, f"{DOC.name} was made with another triton; {regenerate}"
    assert computed_part(text) == table_rows(records), (
        f"{DOC.name} is not what the kernels compile to now; {regenerate}"
    )


def test_fake_cuda_tensors_build_launches_without_asking_cuda(compiled):
    """A memory trace builds the launches from FakeTensors on a machine that may have no GPU: the sm_90 tiles,
    the right buffers and grids, fp32 refused with the way out, and CUDA never initialised or asked."""
    _, _, _, fake = compiled
    tiles = triton_blocks.table(90, 128)
    assert fake["arch"] == 90 and fake["blocks"] == list(tiles) and not fake["cuda_initialized"]
    assert fake["bf16"] is None and "impl='sdpa'" in fake["fp32"]
    # o, lse, dq, dk, dv, and the shared prefix's fp32 partial sums [groups, 1, Hkv, P, d]
    assert fake["shapes"][:5] == [
        [2, 32, 100, 128],
        [2, 32, 100],
        [2, 32, 100, 128],
        [2, 8, 100, 128],
        [2, 8, 100, 128],
    ]
    assert fake["shapes"][5][1:] == [1, 8, 20, 128]
    assert fake["grids"][0] == [-(-100 // tiles.fwd_m), 64] and fake["grids"][2] == [-(-100 // tiles.kv_n), 8, 2]


def test_the_tiles_follow_the_architecture():
    """8.x takes the sm_80 entries, 9.x and later the sm_90 ones; the head dim is padded to BLOCK_D; a CPU or
    meta tensor answers the default architecture without asking CUDA."""
    assert triton_blocks.table(86, 64) == triton_blocks.table(80, 64) != triton_blocks.table(90, 64)
    assert triton_blocks.table(100, 128) == triton_blocks.table(90, 128)
    assert triton_blocks.table(90, 80).BLOCK_D == 128 and triton_blocks.table(90, 8).BLOCK_D == 16
    assert triton_blocks.table(90, 96) == triton_blocks.table(90, 128)
    with pytest.raises(ValueError, match="head dim 300"):
        triton_blocks.table(90, 300)
    for device in ("cpu", "meta"):
        assert triton_blocks.device_arch(torch.empty(1, device=device)) == triton_blocks.DEFAULT_ARCH
    tiles = triton_blocks.table(90, 64)
    assert tiles.of("kv") == dict(BLOCK_M=tiles.kv_m, BLOCK_N=tiles.kv_n, BLOCK_D=64, num_warps=tiles.kv_warps)
    assert triton_blocks.Tiles(*list(tiles)) == tiles  # travels as a plain int list


def test_given_blocks_replace_every_kernels_tiles():
    from ptune_dist.kernels import triton_impl

    tiles = triton_impl.tiles(64, block_m=32)
    assert (tiles.fwd_m, tiles.dq_m, tiles.kv_m) == (32, 32, 32)
    if triton_impl.INTERPRETED:
        assert (tiles.fwd_n, tiles.dq_n, tiles.kv_n) == (16, 16, 16)


def test_refuses_the_interpreter():
    from ptune_dist.kernels import triton_impl

    if not triton_impl.INTERPRETED:
        pytest.skip("the kernels are compiled in this process (TRITON_INTERPRET unset): nothing to refuse")
    from ptune_dist.kernels import triton_aot

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_aot.compile_all()
