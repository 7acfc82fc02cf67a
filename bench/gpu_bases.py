"""The random-init Llama bases of the GPU benches, made once, ahead of them (scripts/gpu-check.sh runs this in
the background while its tests run).

    python bench/gpu_bases.py --base-dir DIR [--bases 1b,8b,plan-1b] [--device cuda] [--dtype bfloat16]

`1b` and `8b` are bench/train_step_gpu.py's shapes (TinyLlama-1.1B, Llama-3-8B; bench/packed_step_gpu.py and
bench/consumer_gpu.py use them too), `plan-1b` is bench/memory_plan_gpu.py's Llama-3.2-1B shape with its word-level
tokenizer. Each is made by the bench's own function into the folder the bench looks in, under the bench's lock
(train_step_gpu.save_random_llama): a bench that starts while a base is being made waits for it, and one that
finds it READY loads it. Prints one line per base (seconds to make, or "already there"); exit status 1 when one
could not be made (the bench then makes it itself).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import memory_plan_gpu  # noqa: E402  (bench/ on sys.path)
import train_step_gpu  # noqa: E402

BASES = ("1b", "8b", "plan-1b")  # the order the benches need them in (train_step 1b first; consumer and plan last)


def folder_of(base_dir, name: str, dtype: str) -> Path:
    if name.startswith("plan-"):
        return memory_plan_gpu.plan_folder(base_dir, name[len("plan-") :], dtype)
    return train_step_gpu.base_folder(base_dir, name, dtype)


def make(base_dir, name: str, device: str, dtype: str) -> float:
    folder = folder_of(base_dir, name, dtype)
    if name.startswith("plan-"):
        return memory_plan_gpu.make_base(name[len("plan-") :], folder, device, dtype)
    made = train_step_gpu.make_base(name, folder, device, dtype)
    train_step_gpu.free_memory()
    return made


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-dir", default=os.path.join(tempfile.gettempdir(), "ptune-bench-bases"))
    p.add_argument("--bases", default=",".join(BASES), help=f"comma-separated, of {', '.join(BASES)}")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args(argv)
    names = args.bases.split(",")
    unknown = [n for n in names if n not in BASES and not (n == "tiny" or n == "plan-tiny")]
    if unknown:
        p.error(f"--bases: unknown {unknown}; choose from {list(BASES)}")
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        try:
            made = make(args.base_dir, name, args.device, args.dtype)
            what = f"made in {made:.0f} s" if made else "already there"
        except Exception as e:  # noqa: BLE001  (the bench makes it itself then)
            what, failed = f"failed: {type(e).__name__}: {str(e)[:200]}", 1
        print(
            f"base {name}: {what} ({time.perf_counter() - t0:.0f} s) -> {folder_of(args.base_dir, name, args.dtype)}",
            flush=True,
        )
    return failed


if __name__ == "__main__":
    sys.exit(main())
