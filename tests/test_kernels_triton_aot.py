"""Every Triton kernel we launch compiles for CUDA sm_80 and sm_90, on this machine, without a GPU.

The CPU tests run the kernels in Triton's interpreter, which accepts code its compiler refuses (a global
annotated `x: tl.constexpr = ...` is one). This compiles the launches `triton_impl` makes, with the GPU
path's block sizes and options, through kernels/triton_aot.py in a subprocess: with TRITON_INTERPRET
unset (conftest sets it for this process, and the choice is made when the kernels are imported) and a
fresh TRITON_CACHE_DIR (a cached binary would hide a compile error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not installed (Linux only: pip install triton)")

KERNELS = {"prefix_attention_fwd", "prefix_attention_bwd_dq", "prefix_attention_bwd_dkdv"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The compile records of both targets, one subprocess each (run side by side: about a minute each)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path_factory.mktemp("triton_cache"))
    procs = [subprocess.Popen([sys.executable, "-m", "ptune_dist.kernels.triton_aot", "--arch", arch, "--json"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for arch in ("80", "90")]
    records, errors = [], []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert out.strip(), f"triton_aot printed nothing (exit {proc.returncode}):\n{err[-4000:]}"
        records += json.loads(out.strip().splitlines()[-1])
        errors.append((proc.returncode, err))
    return records, errors


def test_every_launch_compiles_for_sm80_and_sm90(compiled):
    records, errors = compiled
    failed = [f"sm_{r['arch']} {r['kernel']} {r['variant']}:\n{r['error']}" for r in records if r["error"]]
    assert not failed, f"{len(failed)} of {len(records)} compiles failed; the first:\n{failed[0]}"
    for returncode, stderr in errors:
        assert returncode == 0, stderr[-4000:]
    assert all(r["shared"] > 0 for r in records)  # a real binary came back, with its shared-memory size


def _values(records, kernel, key):
    return {(r["signature"] | r["constexprs"])[key] for r in records if r["kernel"] == kernel}


def test_the_compiled_set_covers_the_gpu_launches(compiled):
    """Every kernel for both targets and every dtype, and every value the GPU path gives each constexpr."""
    records, _ = compiled
    assert {r["kernel"] for r in records} == KERNELS
    for kernel in KERNELS:
        assert {r["arch"] for r in records if r["kernel"] == kernel} == {80, 90}
        assert _values(records, kernel, "Q") == {"*fp32", "*fp16", "*bf16"}
        for flag in ("CAUSAL", "HAS_KPM", "PACKED"):
            assert _values(records, kernel, flag) == {True, False}, (kernel, flag)
        assert _values(records, kernel, "UPCAST") == {False}
        assert _values(records, kernel, "BLOCK_M") == {64}
        assert _values(records, kernel, "BLOCK_N") == {64, 32}  # head dim 64, and above 64
        assert _values(records, kernel, "BLOCK_D") == {64, 128}
        assert {r["options"]["num_warps"] for r in records if r["kernel"] == kernel} == {4}
    # the dk/dv kernel serves the sequence keys and the prefix keys, packed or not
    packed = {(r["constexprs"]["PACKED"], r["constexprs"]["PREFIX"]) for r in records
              if r["kernel"] == "prefix_attention_bwd_dkdv"}
    assert packed == {(False, False), (False, True), (True, False), (True, True)}
    # tensor cores for fp16/bf16 (tf32 is ignored for them), full-precision dots for fp32
    for r in records:
        want = "ieee" if r["signature"]["Q"] == "*fp32" else "tf32"
        assert r["constexprs"]["DOT_PRECISION"] == want, r
    # the gradient of a shared prefix goes to fp32 partial sums; a per-row one in the input dtype
    prefix_grads = {(r["signature"]["Q"], r["signature"]["DK"]) for r in records
                    if r["kernel"] == "prefix_attention_bwd_dkdv" and r["signature"]["K"] != r["signature"]["DK"]}
    assert ("*bf16", "*fp32") in prefix_grads
    # packed rows: a prefix table's gradient goes to fp32 partial sums too
    assert any(r["constexprs"]["PACKED"] and r["constexprs"]["PREFIX"] and r["signature"]["DK"] == "*fp32"
               for r in records if r["kernel"] == "prefix_attention_bwd_dkdv")


def test_refuses_the_interpreter():
    from ptune_dist.kernels import triton_impl

    if not triton_impl.INTERPRETED:
        pytest.skip("the kernels are compiled in this process (TRITON_INTERPRET unset): nothing to refuse")
    from ptune_dist.kernels import triton_aot

    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        triton_aot.compile_all()
