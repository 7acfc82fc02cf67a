"""The `ptune` command's allocator set-up: which library, which environment, and that it really loads."""

import os
import subprocess
import sys

import pytest

from ptune_dist.runtime import LIB_DIRS, MARK, allocator_env, find_allocator


def test_system_choice_and_repeated_exec_change_nothing():
    assert allocator_env({"PTUNE_ALLOCATOR": "system"}) is None
    assert allocator_env({MARK: "/x.so"}) is None
    assert allocator_env({"PTUNE_ALLOCATOR": "/nonexistent/lib.so"}) is None


@pytest.mark.skipif(
    find_allocator("auto") is None,
    reason="no tcmalloc/jemalloc installed (scripts/setup.sh installs libtcmalloc-minimal4 where it can)",
)
def test_preloaded_allocator_is_mapped_in_the_new_process():
    env = allocator_env({k: v for k, v in os.environ.items() if k not in (MARK, "LD_PRELOAD")})
    lib = env[MARK]
    assert env["LD_PRELOAD"].startswith(lib) and allocator_env(env) is None
    maps = subprocess.run(
        [sys.executable, "-c", "print(open('/proc/self/maps').read())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert os.path.basename(lib) in maps


FRAGMENT = """
import torch
from ptune_dist.runtime import release_free_memory

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

freed, kept = [], []
for _ in range(400):  # 64 KiB blocks, each followed by a small tensor that stays: the freed blocks lie between
    freed.append(torch.ones(16384))
    kept.append(torch.ones(64))
del freed
before = anon()
assert release_free_memory()
print((before - anon()) / (400 * 65536))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="release_free_memory acts on Linux allocators only")
@pytest.mark.parametrize("allocator", ["system", "libtcmalloc_minimal.so.4", "libjemalloc.so.2"])
def test_release_free_memory_returns_freed_blocks_to_the_os(allocator):
    """What loading a quantised base does (fp32 weights freed between the packed ones kept), in small:
    the allocator keeps the freed pages resident until release_free_memory hands them back."""
    env = {k: v for k, v in os.environ.items() if k not in (MARK, "LD_PRELOAD")}
    if allocator != "system":
        lib = next((f"{d}/{allocator}" for d in LIB_DIRS if os.path.isfile(f"{d}/{allocator}")), None)
        if lib is None:
            pytest.skip(f"{allocator} is not installed (Debian: libtcmalloc-minimal4, libjemalloc2)")
        env["LD_PRELOAD"] = lib
    out = subprocess.run([sys.executable, "-c", FRAGMENT], env=env, capture_output=True, text=True, check=True)
    # without the call nothing goes back (measured 0.0 for all three); with it glibc and tcmalloc return
    # 0.91-0.94 of the 25 MiB freed, jemalloc 0.35-0.41 (its purge marks part of them MADV_FREE, which
    # the kernel takes back only under memory pressure, so RSS still counts them)
    assert float(out.stdout.split()[-1]) > (0.2 if "jemalloc" in allocator else 0.5)
