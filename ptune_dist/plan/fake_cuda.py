"""A fake `cuda` device on which autograd runs, for tracing a training step where no GPU is.

    ready() -> bool          this process can run a backward pass on fake cuda tensors
    run_child(args, payload) the same Python, started with the fake device, runs `python -m` style entry
                             `ptune_dist.plan.trace_child` on a JSON payload and returns its JSON answer

torch's FakeTensorMode builds tensors that say `cuda` without a GPU, but on a CPU-only build of torch the
backward pass cannot run on them: autograd asks for the CUDA device guard (missing: the process aborts)
and for the accelerator's current stream (none is built: RuntimeError "Cannot access accelerator device
when none is available"). A CUDA build of torch on a machine without a GPU has both (torch installs a
fake guard itself), and so does any machine with a GPU: there, `ready()` is true and the trace runs in
this process.

On a CPU-only build, a child process gets them from a small shared library, compiled here once per torch
version with the system's C++ compiler against torch's own headers (about 2 s) and cached under
~/.cache/ptune_dist_fake_cuda/: it registers c10's FakeGuardImpl<CUDA> (what torch uses on CUDA builds
without a GPU) as the CUDA device guard, and CUDA hooks that say CUDA is built but not available (so the
accelerator is `cuda`; torch.cuda.is_available() stays false, nothing touches a driver). The hooks must be
registered before torch first asks for them, during `import torch`; hence a fresh process that loads the
library first (or a process started with LD_PRELOAD=<the library>, which then traces in-process). Nothing
in it computes: every tensor in the child is a FakeTensor (shapes, dtypes and
devices only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ptune_dist.errors import ConfigError
from ptune_dist.nofollow import publish

SOURCE = r"""
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/FakeGuardImpl.h>

namespace at {
// CUDA is "built" (the accelerator is cuda) but not available: no device, no driver call.
struct PtuneFakeCudaHooks : CUDAHooksInterface {
  explicit PtuneFakeCudaHooks(CUDAHooksArgs) {}
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return false; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return false; }
};
C10_REGISTER_CLASS(CUDAHooksRegistry, CUDAHooks, PtuneFakeCudaHooks)
}  // namespace at

// c10's fake CUDA guard, as torch installs it on CUDA builds without a GPU, unless a guard is there; returns 1
// when installed now. Also run when the library loads, so that LD_PRELOAD alone gives a process the device.
extern "C" int ptune_fake_cuda_guard() {
  constexpr auto cuda = static_cast<std::size_t>(c10::DeviceType::CUDA);
  if (c10::impl::device_guard_impl_registry[cuda].load() != nullptr) return 0;
  static c10::impl::FakeGuardImpl<c10::DeviceType::CUDA> guard;  // leaked: the registry does not own it
  c10::impl::device_guard_impl_registry[cuda].store(&guard);
  return 1;
}
static const int ptune_fake_cuda_guard_loaded = ptune_fake_cuda_guard();
"""

# run by the child before anything imports torch: the shared library first, then the trace
BOOT = """
import ctypes, os, sys
lib = os.environ["PTUNE_TORCH_LIB"]
for name in ("libc10.so", "libtorch_cpu.so"):
    ctypes.CDLL(os.path.join(lib, name), mode=ctypes.RTLD_GLOBAL)
ctypes.CDLL(os.environ["PTUNE_FAKE_CUDA_LIB"], mode=ctypes.RTLD_GLOBAL).ptune_fake_cuda_guard()
from ptune_dist.plan.trace_child import main
code = main(sys.argv[1], sys.argv[2])
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)  # autograd's threads for the 8 fake devices would abort the normal interpreter shutdown
"""


def ready() -> bool:
    """Autograd can run on fake cuda tensors in this process: torch has CUDA built in (a real GPU or
    torch's own fake guard), or this process was started with the fake device (the accelerator is cuda)."""
    import torch

    if torch.backends.cuda.is_built():
        return True
    accelerator = getattr(torch.accelerator, "current_accelerator", lambda **_: None)(check_available=False)
    return accelerator is not None and accelerator.type == "cuda"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ptune_dist_fake_cuda"


def library() -> Path:
    """The compiled shared library for this torch (built when missing)."""
    import torch

    torch_dir = Path(torch.__file__).parent
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    key = hashlib.sha256(f"{SOURCE}{torch.__version__}{torch_dir}{abi}".encode()).hexdigest()[:16]
    out = cache_dir() / f"fake_cuda-{torch.__version__.replace('+', '_')}-{key}.so"
    if out.is_file():
        return out
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not compiler:
        raise ConfigError(
            "ptune plan --trace on a CPU-only torch needs a C++ compiler (g++ or clang++, or CXX=...) "
            "to build its fake CUDA device once; install one, or trace on a machine with a CUDA build "
            "of torch"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src, built = Path(tmp) / "fake_cuda.cpp", Path(tmp) / out.name
        src.write_text(SOURCE)
        cmd = [
            compiler,
            "-O1",
            "-shared",
            "-fPIC",
            "-std=c++17",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{torch_dir / 'include'}",
            str(src),
            f"-L{torch_dir / 'lib'}",
            "-lc10",
            "-ltorch_cpu",
            f"-Wl,-rpath,{torch_dir / 'lib'}",
            "-o",
            str(built),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ConfigError(
                f"ptune plan --trace: building the fake CUDA device failed ({' '.join(cmd)}):\n" + done.stderr[-2000:]
            )
        publish(built, out)  # atomic (nofollow.py): another process may build the same file
    return out


def run_child(payload: dict, timeout: float | None = None) -> dict:
    """Run ptune_dist.plan.trace_child.main on `payload` in a fresh process with the fake device; its answer."""
    import torch

    env = {
        **os.environ,
        "PTUNE_TORCH_LIB": str(Path(torch.__file__).parent / "lib"),
        "PTUNE_FAKE_CUDA_LIB": str(library()),
    }
    env.pop("TRITON_INTERPRET", None)  # a GPU runs the compiled Triton kernels (the interpreter takes CPU tensors only)
    with tempfile.TemporaryDirectory(prefix="ptune-trace-") as tmp:
        request, answer = Path(tmp) / "request.json", Path(tmp) / "answer.json"
        request.write_text(json.dumps(payload))
        done = subprocess.run(
            [sys.executable, "-c", BOOT, str(request), str(answer)],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if not answer.is_file():
            raise RuntimeError(
                f"the trace's process ended with code {done.returncode} and no answer:\n"
                + (done.stderr or done.stdout)[-4000:]
            )
        return json.loads(answer.read_text())
