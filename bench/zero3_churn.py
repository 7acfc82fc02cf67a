"""Why ZeRO-3 on CPU measures more than `ptune plan` predicts: gathered parameters vs resident memory, per step.

    python bench/zero3_churn.py [--steps 8] [--base fp32] [--bounded] [--release]

Runs the memory_plan grid's ZeRO-3 cell (prefix tuning, SmolLM2-135M, batch 4 per rank, 2 ranks, gloo)
for more steps and prints, at the end of every forward pass of rank 0, the bytes of the parameters
DeepSpeed holds gathered (its own `ds_status`, the tensors the planner's "ZeRO-3 gathered" term
models) next to the process's resident memory. `--bounded` keeps at most 1M gathered parameters live.
`--release` then hands the allocator's free pages back to the OS and prints the resident memory again:
what is left is what live objects hold; the difference is memory freed during the step that the
allocator keeps.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_plan import ROOT, cell_overrides, write_task  # noqa: E402

GiB = 2**30


def child(args: list[str], release: bool) -> int:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    import ptune_dist  # noqa: F401  (the oneDNN guard before torch)
    import ptune_dist.train.loop as loop
    from ptune_dist import cli
    from ptune_dist.runtime import release_free_memory

    def rss() -> int:
        return next(
            int(x.split()[1]) * 1024
            for x in Path("/proc/self/status").read_text().splitlines()
            if x.startswith("VmRSS:")
        )

    original = loop.make_engine
    passes = []

    def report(module, inputs, output):
        gathered = sum(
            p.numel() * p.element_size()
            for p in module.parameters()
            if getattr(p, "ds_status", None) == ZeroParamStatus.AVAILABLE
        )
        passes.append((gathered, rss()))
        line = f"forward {len(passes)}: gathered {gathered / GiB:.3f} GiB, RSS {rss() / GiB:.3f} GiB"
        if release:
            release_free_memory()
            line += f", after releasing free pages {rss() / GiB:.3f} GiB"
        if os.environ.get("RANK", "0") == "0":
            print(line, flush=True)

    def make_engine(s):
        engine = original(s)
        s.model.register_forward_hook(report)  # after the whole forward pass, before the backward
        return engine

    loop.make_engine = make_engine
    return cli.main(["train", *args])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", action="store_true")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--base", default="fp32", choices=["fp32", "bf16", "nf4"])
    p.add_argument("--bounded", action="store_true")
    p.add_argument("--release", action="store_true")
    args, rest = p.parse_known_args()
    if args.child:
        return child([a for a in rest if a != "--"], args.release)
    from ptune_dist.runtime import allocator_env

    work = Path(tempfile.mkdtemp())
    task = write_task(work)
    cell = dict(base=args.base, ckpt=False, batch=4, ranks=2, zero=3, steps=args.steps, bounded=args.bounded)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env = {**(allocator_env(env) or env), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(Path(__file__).resolve()),
        "--child",
        *(["--release"] if args.release else []),
        "--",
        str(task),
        f"output_dir={work / 'run'}",
        *cell_overrides(cell),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print("\n".join(x for x in proc.stdout.splitlines() if x.startswith("forward")))
    if proc.returncode:
        print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
