"""What scripts/gpu-check.sh leans on besides the benches themselves: bench/gpu_bases.py's bases made once and
waited for (a lock), and bench/triton_compiles.py's key, the one Triton's JIT caches compiled kernels under.

The key is checked against what it must distinguish (an int's class: == 1, divisible by 16, neither; a
constexpr's value) and what it must not (two lengths of the same class); the stand-ins --warm compiles from give
the same key as the tensors; a stage's count, run as the tool runs it, is the attention bench's 2 models x 4
launches.
"""

import json
import subprocess
import sys
import threading

import pytest
import torch

from conftest import BENCH
from conftest import bench_modules as load_bench

ROOT = BENCH.parent


@pytest.fixture(scope="module")
def benches():
    return load_bench("gpu_bases", "triton_compiles")


def test_a_base_being_made_is_waited_for_and_reused(benches, tmp_path):
    gpu_bases, _ = benches
    made, errors = [], []

    def make():
        try:
            made.append(gpu_bases.make(tmp_path, "tiny", "cpu", "float32"))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: F401  (transformers' lazy imports are
    # not thread-safe: resolved here, before two threads ask for them at once)

    threads = [threading.Thread(target=make) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(made)[0] == 0.0 and sorted(made)[1] > 0  # one made it, the other waited and reused it
    folder = gpu_bases.folder_of(tmp_path, "tiny", "float32")
    assert (folder / "READY").exists() and (folder / "config.json").exists()
    assert not folder.with_name(folder.name + ".tmp").exists()


def forward_key(tc, Tq, Tk=48, d=64, P=20):
    pytest.importorskip("triton", reason="the key is Triton's")
    from ptune_dist.kernels import triton_impl

    q = torch.zeros(2, 8, Tq, d, dtype=torch.bfloat16)
    k = torch.zeros(2, 2, Tk, d, dtype=torch.bfloat16)
    pk = torch.zeros(2, P, d, dtype=torch.bfloat16)
    saved = triton_impl.INTERPRETED
    triton_impl.INTERPRETED = False  # the GPU's options, as the tool builds them
    try:
        _, launch = triton_impl.forward_launch(
            q, k, k.clone(), pk, pk.clone(), None, True, d**-0.5, triton_impl.tiles(d), None
        )
    finally:
        triton_impl.INTERPRETED = saved
    return tc.launch_key(launch), launch


def test_the_key_tells_apart_what_the_jit_compiles_apart(benches):
    _, tc = benches
    key = lambda *a, **kw: forward_key(tc, *a, **kw)[0]  # noqa: E731
    # the sizes are not specialised (do_not_specialize in kernels/triton_fwd.py): divisible by 16 or not, or 1,
    # one binary serves every length
    assert key(48) == key(32) == key(49) == key(33) == key(1, Tk=48)
    assert key(48, d=64) != key(48, d=128)  # BLOCK_D, a constexpr
    name, spec, options = key(48)
    assert name == "prefix_attention_fwd" and ("*bf16", "D") in spec and options == (("num_warps", 4),)


def test_the_stand_ins_give_the_tensors_key(benches):
    _, tc = benches
    key, launch = forward_key(tc, 49)
    args = tuple(tc.Stand(a) if isinstance(a, torch.Tensor) else a for a in launch.args)
    assert tc.launch_key(launch._replace(args=args)) == key
    offset = launch._replace(args=(launch.args[0].view(-1)[1:],) + launch.args[1:])  # q's pointer 2 bytes on
    stand = offset._replace(args=tuple(tc.Stand(a) if isinstance(a, torch.Tensor) else a for a in offset.args))
    assert tc.launch_key(stand) == tc.launch_key(offset) != key


def test_the_attention_stage_counts_two_models_of_four_launches(tmp_path):
    pytest.importorskip("triton", reason="the key is Triton's")
    raw = tmp_path / "keys.json"
    done = subprocess.run(
        [sys.executable, str(BENCH / "triton_compiles.py"), "--stages", "attention", "--json", str(raw)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (stage,) = json.loads(raw.read_text())
    assert stage["stage"] == "attention" and stage["calls"] == 4 and not stage["refused"]
    keys = stage["keys"].values()
    assert len(keys) == 8 and {k["dtype"] for k in keys} == {"bf16"}
    launches = [
        "prefix_attention_fwd",
        "prefix_attention_bwd_dq",
        "prefix_attention_bwd_dkdv",
        "prefix_attention_bwd_dkdv",
    ]  # the dk/dv kernel twice: the sequence's keys, then the prefix's
    assert sorted(k["kernel"] for k in keys) == sorted(launches * 2)
