"""The `ptune` command's allocator set-up: which library, which environment, and that it really loads."""

import os
import subprocess
import sys

import pytest

from ptune_dist.runtime import MARK, allocator_env, find_allocator


def test_system_choice_and_repeated_exec_change_nothing():
    assert allocator_env({"PTUNE_ALLOCATOR": "system"}) is None
    assert allocator_env({MARK: "/x.so"}) is None
    assert allocator_env({"PTUNE_ALLOCATOR": "/nonexistent/lib.so"}) is None


@pytest.mark.skipif(find_allocator("auto") is None, reason="no tcmalloc/jemalloc installed (scripts/setup.sh "
                    "installs libtcmalloc-minimal4 where it can)")
def test_preloaded_allocator_is_mapped_in_the_new_process():
    env = allocator_env({k: v for k, v in os.environ.items() if k not in (MARK, "LD_PRELOAD")})
    lib = env[MARK]
    assert env["LD_PRELOAD"].startswith(lib) and allocator_env(env) is None
    maps = subprocess.run([sys.executable, "-c", "print(open('/proc/self/maps').read())"], env=env,
                          capture_output=True, text=True, check=True).stdout
    assert os.path.basename(lib) in maps
