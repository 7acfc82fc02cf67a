"""Process set-up for CPU training: a faster memory allocator when one is installed.

glibc's malloc fragments badly under PyTorch's CPU training pattern (activations of tens of MB
allocated and freed every step): measured here, peak RSS sits 1-2 GB above the live tensors and
the steps run 10-30% slower than under tcmalloc (see docs/bench_train_step.md). The `ptune`
command therefore re-executes itself once with tcmalloc (or jemalloc) preloaded when the library
is on the machine (Debian: libtcmalloc-minimal4). PTUNE_ALLOCATOR=system keeps glibc's malloc;
PTUNE_ALLOCATOR=/path/lib.so names another library.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

CANDIDATES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
MARK = "_PTUNE_ALLOCATOR_SET"


def find_allocator(choice: str) -> str | None:
    if choice == "system":
        return None
    if choice not in ("", "auto"):
        return choice if Path(choice).is_file() else None
    for name in CANDIDATES:
        for d in LIB_DIRS:
            if (Path(d) / name).is_file():
                return str(Path(d) / name)
    return None


def allocator_env(environ) -> dict | None:
    """The environment to re-execute with, or None when nothing is to change."""
    if environ.get(MARK) or sys.platform != "linux":
        return None
    lib = find_allocator(environ.get("PTUNE_ALLOCATOR", "auto"))
    if lib is None or lib in environ.get("LD_PRELOAD", ""):
        return None
    preload = ":".join(x for x in (lib, environ.get("LD_PRELOAD", "")) if x)
    # tcmalloc reports every allocation over 1 GB on stderr; the logits of a big vocabulary are such
    return {**environ, "LD_PRELOAD": preload, MARK: lib, "TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def reexec_with_allocator() -> None:
    """Replace this process by the same command under the faster allocator (no-op if none or done)."""
    env = allocator_env(os.environ)
    if env is not None:
        os.execve(sys.executable, [sys.executable, "-m", "ptune_dist.cli", *sys.argv[1:]], env)


def release_free_memory() -> bool:
    """Hand the pages the allocator keeps free back to the OS; True when an allocator did.

    Loading a quantised or ZeRO-3-partitioned base on the CPU allocates every weight in fp32 and frees
    it once packed or partitioned. The allocator keeps those pages, and training does not reuse them
    (they lie between the small packed weights): on SmolLM2-135M nf4 the peak of a training run fell
    from 0.90 to 0.50 GB when they were released (docs/plan.md). Called once after the base is loaded;
    it costs milliseconds."""
    if sys.platform != "linux":
        return False
    process = ctypes.CDLL(None)
    if hasattr(process, "MallocExtension_ReleaseFreeMemory"):  # tcmalloc
        process.MallocExtension_ReleaseFreeMemory()
        return True
    if hasattr(process, "mallctl"):  # jemalloc: empty this thread's cache, then purge every arena (4096 = all)
        process.mallctl(b"thread.tcache.flush", None, None, None, ctypes.c_size_t(0))
        return process.mallctl(b"arena.4096.purge", None, None, None, ctypes.c_size_t(0)) == 0
    if hasattr(process, "malloc_trim"):  # glibc
        process.malloc_trim(ctypes.c_size_t(0))
        return True
    return False
