"""How many Triton compiles each stage of scripts/gpu-check.sh makes on a GPU, counted on a machine without one.

    python bench/triton_compiles.py [--stages tests_gpu,test_gpu,tests_rest,attention,train_step,packed,consumer,plan]
                                    [--jobs N] [--json F]
    TRITON_INTERPRET=0 python bench/triton_compiles.py --warm --stages attention,...   (on a GPU machine)

Triton's JIT compiles a kernel once per key and keeps the binary in its on-disk cache, which every later process
on the machine reuses. The key is the kernel, each argument's type (pointer dtype, i32/i64, fp32), the
specialisation of each argument the kernel specialises (an integer equal to 1 becomes a constant; an integer or
a pointer divisible by 16 gets the 'D' attribute; `do_not_specialize` arguments get neither), the constexpr values
and the launch options (num_warps). This tool computes that key for every launch a stage would make, with
Triton's own binder (`create_function_from_signature`, what `JITFunction.run` calls) over the argument lists that
`triton_impl.forward_launch` / `backward_launches` build with `INTERPRETED` off (the GPU's block sizes and
options), and counts the distinct keys. `triton_impl.triton_fwd` (the custom operator `ptune::triton_fwd` that
`prefix_attention` calls) is replaced by a recorder while a stage runs: every call's launches are built as a GPU
run builds them (the backward's too when the call needs gradients) and recorded.

How each stage's calls are made here:
- tests_gpu: the gpu-marked tests of tests/test_kernels_triton*.py under pytest, their CUDA skips lifted, at their
  own Llama shapes; nothing is computed (the recorder returns zeros, and the float64 reference half of each test
  gets the triton half's answer back instead of running).
- test_gpu: tests/test_gpu.py under pytest with PTUNE_GPU_TEST_DEVICE=cpu; `auto` picks triton for bf16/fp16 as
  kernels/auto.py does on CUDA, and every triton call is recorded and computed by sdpa, so the runs train as they
  would (the loss falls, evaluation and generation run).
- tests_rest: the other tests of those two files under pytest, the kernels run in Triton's interpreter as the CPU
  suite runs them; each launch's GPU key is recorded.
- attention: bench/attention.py's GPU cells as scripts/gpu-check.sh asks for them, recorded, not computed.
- train_step, packed, consumer, plan: the ptune side of each bench (PEFT runs no kernel of ours) through the
  bench's own child function, bf16 on the CPU, `auto` as on CUDA, sdpa computing, on a class-faithful small base:
  the GPU shape's query heads, KV heads, head dim (set explicitly), batch and virtual tokens, with one layer,
  hidden 256, MLP 256, vocab 1000, and every length over 64 cut to 48 + (length mod 16). Every integer argument
  of a launch then keeps its class (== 1, divisible by 16) and every constexpr its value: the keys are the GPU
  run's.

Not counted: Inductor's kernels (bench/attention.py's flex peer is torch.compile'd), bitsandbytes' and torch's
own precompiled kernels.

Printed and written (--json): per stage the distinct keys, those new to the run (the stages share the on-disk
cache, in gpu-check.sh's order), how many are fp32 (IEEE dots: several times slower to compile), and per key the
first test or cell that launched it. Each stage runs in its own process (--jobs: that many side by side).

--warm (scripts/gpu-check.sh, in the background on the GPU machine, with TRITON_INTERPRET=0 so that the kernels
are compiled ones): each stage's new keys are also compiled into Triton's on-disk cache with
`JITFunction.warmup` (compiled, not launched) from the recorded launches, tensors replaced by stand-ins that keep
what the JIT reads of them (dtype, address mod 16); the benches' own launches then find their binaries there.
Each compile's seconds are in the JSON ("compile_s"). Only the stages that run no kernel on the CPU can be warmed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # the kernels take CPU tensors (run in the interpreter: tests_rest)
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # bf16 matmuls on this CPU (before torch)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("tests_gpu", "test_gpu", "tests_rest", "attention", "train_step", "packed", "consumer", "plan")
KERNEL_TESTS = ["tests/test_kernels_triton.py", "tests/test_kernels_triton_packed.py"]


# -- the key Triton's JIT computes ----------------------------------------------------------------------
_binders: dict = {}


def jit_function(kernel):
    """The JITFunction of a launch's kernel (in the interpreter: one made from the same function and options)."""
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction):
        return kernel
    options = {k: v for k, v in getattr(kernel, "kwargs", {}).items() if k in inspect.signature(JITFunction).parameters}
    return JITFunction(kernel.fn, **options)


def launch_key(launch) -> tuple:
    """(kernel name, the JIT's specialisation list, options): what `JITFunction.run` looks its cache up with."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import create_function_from_signature

    name = getattr(launch.kernel, "__name__", None) or launch.kernel.fn.__name__
    if name not in _binders:
        jit = jit_function(launch.kernel)
        _binders[name] = create_function_from_signature(jit.signature, jit.params, BaseBackend)
    _, specialization, options = _binders[name](*launch.args, **launch.meta)
    return name, tuple(tuple(s) for s in specialization), tuple(sorted(options.items()))


# -- the recorder ------------------------------------------------------------------------------------------
class Stand:
    """What Triton's JIT reads of a tensor argument: its dtype and its address's alignment (kept for --warm
    instead of the tensor itself)."""

    def __init__(self, t):
        self.dtype, self._ptr = t.dtype, 16 + t.data_ptr() % 16

    def data_ptr(self) -> int:
        return self._ptr


class Recorder:
    """Keys seen, with the first place (test id or cell) that launched each, and the calls' count; with `keep`,
    each new key's launch too (tensors replaced by Stand), for --warm."""

    def __init__(self, keep: bool = False):
        self.keys: dict[str, dict] = {}
        self.launches: dict[str, object] = {}
        self.where = "-"
        self.calls = 0
        self.refused: Counter = Counter()
        self.keep = keep

    def add(self, launches) -> None:
        import torch

        for launch in launches:
            name, spec, options = launch_key(launch)
            text = f"{name}|{spec}|{options}"
            if text not in self.keys:
                dtype = next((s[0] for s in spec if isinstance(s[0], str) and s[0].startswith("*")), "?")
                self.keys[text] = {"kernel": name, "dtype": dtype.lstrip("*"), "where": self.where}
                if self.keep:
                    args = tuple(Stand(a) if isinstance(a, torch.Tensor) else a for a in launch.args)
                    self.launches[text] = launch._replace(args=args)

    def warm(self) -> None:
        """Compile every kept launch into Triton's on-disk cache (JITFunction.warmup: compiled, not launched)."""
        for text, launch in self.launches.items():
            t0 = time.perf_counter()
            try:
                launch.kernel.warmup(*launch.args, grid=launch.grid, **launch.meta)
                self.keys[text]["compile_s"] = round(time.perf_counter() - t0, 2)
            except Exception as e:  # noqa: BLE001  (the bench then compiles it itself)
                self.keys[text]["warm_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(
                f"{self.keys[text]['kernel']} ({self.keys[text]['where']}): "
                f"{self.keys[text].get('compile_s', self.keys[text].get('warm_error'))}",
                flush=True,
            )


def gpu_launches(a: dict, grad: bool) -> list:
    """The launches a GPU run makes for one call of `ptune::triton_fwd` (its arguments by name)."""
    import torch

    from ptune_dist.kernels import triton_impl
    from ptune_dist.kernels.triton_packed import PackedLayout

    if a["q"].dtype == torch.float32:  # what triton_impl.unavailable answers on CUDA: nothing is compiled
        raise RuntimeError("float32: the Triton kernels are not launched in float32 on CUDA")
    saved = triton_impl.INTERPRETED
    triton_impl.INTERPRETED = False  # the GPU's block sizes and launch options
    try:
        q = a["q"]
        blocks = triton_impl.tiles(q.shape[-1], a["block_m"], a["block_n"])
        packed = None if a["seg_meta"] is None else PackedLayout(a["seg_meta"], a["ranges"], a["table"])
        args = (q, a["k"], a["v"], a["pk"], a["pv"], a["kpm"])
        (o, lse), fwd = triton_impl.forward_launch(*args, a["causal"], a["scale"], blocks, packed)
        launches = [fwd]
        if grad:
            do = torch.empty(o.shape, dtype=o.dtype, device=o.device)  # the backward's do.contiguous()
            _, bwd = triton_impl.backward_launches(
                *args, o, lse, do, a["causal"], a["scale"], blocks, a["prefix_rows"], packed
            )
            launches += bwd
    finally:
        triton_impl.INTERPRETED = saved
    return launches


def install(recorder: Recorder, mode: str) -> None:
    """Replace `triton_impl.triton_fwd` (the op `prefix_attention` calls) by a recorder. mode "run": the
    interpreter then computes the call as before; "zeros": nothing is computed (zeros come back); "sdpa": `auto`
    picks triton for fp16/bf16 as on CUDA and every triton call through the dispatch is computed by sdpa."""
    import torch

    from ptune_dist.kernels import dispatch, sdpa, triton_impl

    real = triton_impl.triton_fwd
    names = [arg.name for arg in torch.ops.ptune.triton_fwd.default._schema.arguments]

    def recording(*args):
        a = dict(zip(names, args))
        grad = torch.is_grad_enabled() and any(isinstance(x, torch.Tensor) and x.requires_grad for x in args)
        recorder.calls += 1
        try:
            recorder.add(gpu_launches(a, grad))
        except Exception as e:  # noqa: BLE001  (a GPU run refuses this call: no compile; counted apart)
            recorder.refused[f"{type(e).__name__}: {str(e)[:120]}"] += 1
        if mode == "run":
            return real(*args)
        q = a["q"]
        return torch.zeros_like(q).requires_grad_(grad), q.new_zeros(q.shape[:3], dtype=torch.float32)

    triton_impl.triton_fwd = recording
    if not triton_impl.INTERPRETED:  # --warm on a GPU machine: compiled kernels, the calls' tensors on the CPU
        refuse = triton_impl.unavailable

        def anywhere(q, dropout_p=0.0):
            why = refuse(q, dropout_p)
            return None if why and q.device.type != "cuda" and "compiles for a GPU" in why else why

        triton_impl.unavailable = anywhere
    if mode != "sdpa":
        return

    def on_cuda(q, dropout_p=0.0) -> bool:  # kernels/auto.py's rule for CUDA, fp16/bf16
        return q.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0

    choose, choose_packed, implementation = dispatch.choose, dispatch.choose_packed, dispatch.implementation
    dispatch.choose = lambda q, prefix_k=None, kpm=None, causal=True, dropout_p=0.0: (
        "triton" if on_cuda(q, dropout_p) else choose(q, prefix_k, kpm, causal, dropout_p)
    )
    dispatch.choose_packed = lambda q, dropout_p=0.0: "triton" if on_cuda(q, dropout_p) else choose_packed(q, dropout_p)

    def recorded_then_sdpa(*args, **kw):
        triton_impl.prefix_attention(*args, **kw)  # recorded
        return sdpa.prefix_attention(*args, **kw)

    dispatch.implementation = lambda name: recorded_then_sdpa if name == "triton" else implementation(name)


# -- the stages ------------------------------------------------------------------------------------------------
class Where:
    """pytest plugin: the recorder's `where` is the running test; gpu-only skips lifted and the float64 reference
    half of a gpu test answered with the triton half's result (tests_gpu)."""

    def __init__(self, recorder: Recorder, lift_gpu_skips: bool = False):
        self.recorder, self.lift = recorder, lift_gpu_skips

    def pytest_collection_modifyitems(self, items):
        if not self.lift:
            return
        for item in items:
            item.own_markers = [
                m for m in item.own_markers if not (m.name == "skipif" and "CUDA" in str(m.kwargs.get("reason", "")))
            ]
            module = item.module
            if hasattr(module, "run") and not hasattr(module.run, "_answered"):
                module.run = answered(module.run)

    def pytest_runtest_setup(self, item):
        self.recorder.where = item.nodeid


def answered(run):
    last = {}

    def wrapper(impl, *args, **kw):
        if impl == "reference" and "got" in last:
            return last["got"]
        last["got"] = run(impl, *args, **kw)
        return last["got"]

    wrapper._answered = True
    return wrapper


def pytest_stage(recorder, args: list[str], lift: bool = False) -> int:
    import pytest

    os.chdir(ROOT)
    return pytest.main([*args, "-q", "-p", "no:cacheprovider", "-W", "ignore"], plugins=[Where(recorder, lift)])


def small_len(n: int) -> int:
    """A length of the same class as n (== 1, divisible by 16) that a CPU runs quickly."""
    return n if n <= 64 else 48 + n % 16


def small_config(config: dict) -> dict:
    heads = config["num_attention_heads"]
    return {
        **config,
        "num_hidden_layers": 1,
        "hidden_size": 256,
        "intermediate_size": 256,
        "vocab_size": 1000,
        "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
        "max_position_embeddings": 4096,
    }


def bench_children(stage: str, recorder: Recorder, work: Path) -> None:
    """The ptune side of a bench on class-faithful small bases (see the module docstring)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import train_step_gpu as ts

    def shape(name):
        small = f"{name}~"
        ts.SHAPES[small] = {
            **ts.SHAPES[name],
            "label": f"{name}, class-faithful small",
            "config": small_config(ts.SHAPES[name]["config"]),
        }
        return small

    common = dict(device="cpu", dtype="bfloat16", virtual=20, steps=1, warmup=1)
    if stage == "train_step":
        for name in ("1b", "8b"):
            recorder.where = f"train_step {name}"
            s = shape(name)
            ts.child_ptune(
                {
                    **common,
                    "kind": "ptune",
                    "shape": s,
                    "folder": str(work / s),
                    "methods": ["prompt_tuning", "prefix_tuning"],
                    "batch": ts.SHAPES[name]["batch"],
                    "seq": small_len(ts.SHAPES[name]["seq"]),
                }
            )
    elif stage == "packed":
        import packed_step_gpu as ps

        s = shape("1b")
        ps.SHAPES = ts.SHAPES
        recorder.where = "packed 1b"
        ps.child_ptune(
            {
                **common,
                "kind": "ptune",
                "shape": s,
                "folder": str(work / s),
                "methods": ["prompt_tuning", "prefix_tuning"],
                "examples": 24,
                "median": 24,
                "sigma": 0.9,
                "max_len": small_len(2048),
                "peft_batch": 8,
                "rows": 4,
                "fixed_batch": ts.SHAPES["1b"]["batch"],
                "fixed_seq": small_len(ts.SHAPES["1b"]["seq"]),
            }
        )
    elif stage == "consumer":
        import consumer_gpu as cg

        s = shape("8b")
        folder = work / s
        ts.make_base(s, folder, "cpu", "bfloat16")
        recorder.where = "consumer 8b nf4"
        cg.child_ptune(
            {
                **common,
                "kind": "ptune",
                "folder": str(folder),
                "batch": 16,
                "seq": small_len(2048),
                "methods": ["prompt_tuning", "p_tuning_v2"],
                "vocab": 1000,
            }
        )
    elif stage == "plan":
        import memory_plan_gpu as mp

        mp.SHAPES["1b"] = {
            **mp.SHAPES["1b"],
            "config": {**small_config(mp.SHAPES["1b"]["config"]), "vocab_size": 128},
            "seq": small_len(mp.SHAPES["1b"]["seq"]),
        }
        mp.BASES_CPU = mp.BASES_GPU  # bf16 and nf4 with bf16 compute, as on the GPU
        recorder.where = "plan grid"
        mp.main(["--device", "cpu", "--budget-s", "100000", "--base-dir", str(work), "--out", str(work / "plan.md")])


def gpu_check_args(name: str) -> list[str]:
    """The arguments scripts/gpu-check.sh gives a bench (its NAME=(...) array)."""
    text = (ROOT / "scripts" / "gpu-check.sh").read_text()
    m = re.search(rf"^{name}=\((.*)\)", text, re.M)
    if not m:
        raise SystemExit(f"scripts/gpu-check.sh has no {name}=(...) line")
    return shlex.split(m.group(1))


def attention_cells(recorder: Recorder) -> None:
    """bench/attention.py's GPU cells, with the arguments scripts/gpu-check.sh passes (its ATTENTION_ARGS)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    import attention
    from ptune_dist.kernels.api import prefix_attention

    args = attention.gpu_settings(attention.parse(["--device", "cuda", *gpu_check_args("ATTENTION_ARGS")]))
    for model, (Hq, Hkv, d), B, T, P in attention.gpu_cells(args):
        recorder.where = f"attention {model} B{B} T{T} P{P}"
        xs = attention.inputs(B, P, T, Hq, Hkv, d, torch.bfloat16, "cpu")
        for name in attention.ours(args, probe=None):
            if name == "triton":
                prefix_attention(*xs, causal=True, impl="triton")


WARMABLE = ("tests_gpu", "attention", "train_step", "packed", "consumer", "plan")  # no kernel runs on the CPU


def run_stage(stage: str, warm: bool = False) -> dict:
    if warm:
        from ptune_dist.kernels import triton_impl

        if triton_impl.INTERPRETED or stage not in WARMABLE:
            raise SystemExit(
                f"--warm compiles for the GPU of this machine: run it there with TRITON_INTERPRET=0, "
                f"on the stages {', '.join(WARMABLE)}"
            )
    recorder = Recorder(keep=warm)
    install(recorder, {"tests_gpu": "zeros", "attention": "zeros", "tests_rest": "run"}.get(stage, "sdpa"))
    t0 = time.perf_counter()
    status = 0
    with tempfile.TemporaryDirectory(prefix=f"ptune-compiles-{stage}-") as work:
        if stage == "tests_gpu":
            status = pytest_stage(recorder, ["-m", "gpu", *KERNEL_TESTS], lift=True)
        elif stage == "test_gpu":
            os.environ["PTUNE_GPU_TEST_DEVICE"] = "cpu"
            status = pytest_stage(recorder, ["tests/test_gpu.py"])
        elif stage == "tests_rest":
            status = pytest_stage(recorder, ["-m", "not gpu", *KERNEL_TESTS])
        elif stage == "attention":
            attention_cells(recorder)
        else:
            bench_children(stage, recorder, Path(work))
    seconds = time.perf_counter() - t0
    if warm:
        recorder.warm()
    return {
        "stage": stage,
        "seconds": seconds,
        "status": int(status),
        "calls": recorder.calls,
        "keys": recorder.keys,
        "refused": dict(recorder.refused),
        "warm_s": time.perf_counter() - t0 - seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help="in gpu-check.sh's order: " + ",".join(STAGES))
    p.add_argument("--json", default="", help="write every stage's keys here (after each stage)")
    p.add_argument("--jobs", type=int, default=1, help="stages run side by side (each its own process)")
    p.add_argument(
        "--warm",
        action="store_true",
        help="on a GPU machine (TRITON_INTERPRET=0): also compile every "
        "new key into Triton's on-disk cache, timing each compile",
    )
    p.add_argument("--stage", help=argparse.SUPPRESS)  # one stage, in this process; its result as JSON on stdout
    args = p.parse_args(argv)
    if args.stage:
        print("\nRESULT " + json.dumps(run_stage(args.stage, args.warm)), flush=True)
        return 0
    stages = args.stages.split(",")
    unknown = set(stages) - set(STAGES)
    if unknown:
        p.error(f"--stages: unknown {sorted(unknown)}; choose from {list(STAGES)}")

    def one(stage):
        return subprocess.run(
            [sys.executable, __file__, "--stage", stage, *(["--warm"] if args.warm else [])],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )

    results, seen = [], set()
    print("| stage | distinct keys | new to the run | of them fp32 | calls | refused | CPU s | compiled s | status |")
    print("|---|---|---|---|---|---|---|---|---|")
    with ThreadPoolExecutor(args.jobs) as pool:  # each stage in its own process; reported in the given order
        for stage, done in zip(stages, pool.map(one, stages)):
            line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if not line:
                sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
                print(f"| {stage} | failed (exit {done.returncode}) | | | | | | | |", flush=True)
                continue
            r = json.loads(line[-1][len("RESULT ") :])
            new = {k: v for k, v in r["keys"].items() if k not in seen}
            seen |= set(r["keys"])
            r["new"] = sorted(new)
            results.append(r)
            fp32 = sum(1 for v in new.values() if v["dtype"] == "fp32")
            compiled = sum(v.get("compile_s", 0) for v in r["keys"].values())
            print(
                f"| {stage} | {len(r['keys'])} | {len(new)} | {fp32} | {r['calls']} | {sum(r['refused'].values())} "
                f"| {r['seconds']:.0f} | {compiled:.0f} | {r['status']} |",
                flush=True,
            )
            if args.json:  # after every stage: a run stopped early keeps the stages done
                Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"\n{len(seen)} distinct keys in all.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
