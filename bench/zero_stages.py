"""Step time and per-rank peak memory of each ZeRO stage, 2 ranks on this machine, against the plain engine.

    python bench/zero_stages.py [--ranks 2] [--steps 8] [--batch 8] [--out docs/bench_zero_stages.md]

Each configuration is one `ptune launch` (torchrun, gloo; ranks under tcmalloc when installed, as
`ptune launch` starts them) of prompt tuning on SmolLM2-135M (fp32,
the built-in support task, 20 virtual tokens, batch per rank --batch); the step time is the median
over the logged steps after the first, the peak is each rank's peak RSS over the whole run (model
loading included), from the run's metrics.jsonl. Ratios are against the plain-PyTorch engine with
the same ranks, measured in the same run of this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ptune_dist.train.metrics_file import read_metrics  # one history, resumes counted once

QUICKSTART = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
CONFIGS = {
    "plain (torch engine)": [],
    "ZeRO-0": ["distributed.engine=deepspeed", "distributed.zero_stage=0"],
    "ZeRO-1": ["distributed.engine=deepspeed", "distributed.zero_stage=1"],
    "ZeRO-2": ["distributed.engine=deepspeed", "distributed.zero_stage=2"],
    "ZeRO-2 + optimizer offload": [
        "distributed.engine=deepspeed",
        "distributed.zero_stage=2",
        "distributed.offload_optimizer=true",
    ],
    "ZeRO-3": ["distributed.engine=deepspeed", "distributed.zero_stage=3"],
    "ZeRO-3, gathered weights released at once": [
        "distributed.engine=deepspeed",
        "distributed.zero_stage=3",
        "distributed.zero_extra={stage3_max_live_parameters: 1000000, stage3_max_reuse_distance: 0, "
        "stage3_prefetch_bucket_size: 0}",
    ],
    "ZeRO-3 + optimizer and parameter offload": [
        "distributed.engine=deepspeed",
        "distributed.zero_stage=3",
        "distributed.offload_optimizer=true",
        "distributed.offload_params=true",
    ],
}


def run(name: str, extra: list, args, work: Path) -> dict:
    out = work / name.replace(" ", "_").replace("+", "").replace("(", "").replace(")", "")
    cmd = [
        sys.executable,
        "-m",
        "ptune_dist.cli",
        "launch",
        QUICKSTART,
        f"output_dir={out}",
        f"launch.nproc_per_node={args.ranks}",
        f"data.batch_size={args.batch}",
        f"train.steps={args.steps}",
        "train.log_every=1",
        "train.progress_bar=false",
        "train.eval_baseline=false",
        "train.tensorboard=false",
        "data.max_eval_examples=16",
        *extra,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    records = read_metrics(out / "metrics.jsonl")
    times = [b["time"] - a["time"] for a, b in zip(records, records[1:]) if "loss" in a and "loss" in b]
    held = next(r for r in records if r.get("event") == "parameters")
    peak = next(r for r in records if r.get("event") == "memory")
    return {
        "name": name,
        "step_s": statistics.median(times[1:]),
        "held_gb": [b / 2**30 for b in held["bytes_per_rank"]],
        "peak_gb": [b / 2**30 for b in peak["peak_rss_bytes_per_rank"]],
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default="")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for name, extra in CONFIGS.items():
            rows.append(run(name, extra, args, Path(work)))
            r = rows[-1]
            print(f"{name:45s} {r['step_s']:.2f} s/step  held {r['held_gb']}  peak {r['peak_gb']}", flush=True)
    base = rows[0]
    lines = [
        f"# ZeRO stages on {args.ranks} CPU ranks",
        "",
        f"Prompt tuning, SmolLM2-135M-Instruct fp32, built-in support task, batch {args.batch} per rank, "
        f"{args.steps} steps (median step time after the first), torchrun + gloo, "
        f"{os.cpu_count()} cores ({platform.machine()}), OMP_NUM_THREADS = cores / ranks. "
        "Parameters held = what each rank keeps of the model (frozen base included); peak = the rank's "
        "peak RSS over the run, loading included.",
        "",
        "| setup | s/step | vs plain | parameters held per rank GB | peak RSS per rank GB | peak vs plain |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['step_s']:.2f} | {r['step_s'] / base['step_s']:.2f}x | "
            f"{' / '.join(f'{g:.2f}' for g in r['held_gb'])} | {' / '.join(f'{g:.2f}' for g in r['peak_gb'])} | "
            f"{max(r['peak_gb']) / max(base['peak_gb']):.2f}x |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
