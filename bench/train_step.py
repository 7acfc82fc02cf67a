"""Training-step throughput and peak memory of ptune against HF PEFT, measured in one run.

    python bench/train_step.py [--batch 8] [--seq 256] [--virtual 20] [--threads 2] [--steps 3]
                               [--labels answer|all] [--out docs/bench_train_step.md]

For prompt tuning and prefix tuning on SmolLM2-135M-Instruct (fp32), each system runs in a child
process of this script (peak RSS is per process), with the same batch of token ids, the same number
of virtual tokens and threads, AdamW, one warm-up step, then `--steps` timed steps. Each system runs
under glibc's malloc and under tcmalloc (when installed): `ptune` preloads tcmalloc itself (see
ptune_dist/runtime.py), PEFT users get glibc's unless they preload one. Labels:
`answer` puts them on the last 16 tokens of every row (an instruction/classification batch: the
case prompt tuning is used for), `all` on every token (language modelling). tokens/s counts the
batch's real tokens (batch x seq). Prints the table with ratios ptune / PEFT and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = "embedded:smollm2-135m-instruct"
ANSWER = 16


def batch_tensors(batch: int, seq: int, labels: str = "answer", high: int = 40000):
    """The same token ids for every system: [batch, seq] from a fixed seed; labels on the last ANSWER
    tokens of each row (`answer`) or on every token (`all`)."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, high, (batch, seq), generator=g)
    targets = ids.clone()
    if labels == "answer":
        targets[:, :-ANSWER] = -100
    return ids, targets


def peft_config(method: str, virtual: int):
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType

    return (PromptTuningConfig if method == "prompt_tuning" else PrefixTuningConfig)(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=virtual
    )


def ptune_batch(model, ids, labels) -> dict:
    """The batch as ptune's data pipeline lays it out: shallow prompts get P placeholder slots in front
    of the tokens (`soft_mask`), deep prompts none; every row is task 0."""
    import torch

    B, P = ids.shape[0], model.placement.soft_slots(model.num_virtual_tokens)
    batch = {
        "input_ids": torch.cat([torch.zeros(B, P, dtype=torch.long), ids], 1),
        "labels": torch.cat([torch.full((B, P), -100), labels], 1),
        "seq_task": torch.zeros(B, dtype=torch.long),
    }
    batch["attention_mask"] = torch.ones_like(batch["input_ids"])
    if P:
        batch["soft_mask"] = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
        batch["soft_mask"][:, :P] = True
    return batch


def adamw_step(loss_fn, params):
    """One training step: loss, backward, AdamW, zero the gradients; returns the loss."""
    import torch

    opt = torch.optim.AdamW(list(params), lr=1e-3)

    def step():
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def run_peft(args, method):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from ptune_dist.model.load import resolve_path

    model = AutoModelForCausalLM.from_pretrained(resolve_path(MODEL), attn_implementation="sdpa")
    model = get_peft_model(model, peft_config(method, args.virtual)).train()
    ids, labels = batch_tensors(args.batch, args.seq, args.labels)
    mask = torch.ones_like(ids)
    return adamw_step(
        lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss,
        [p for p in model.parameters() if p.requires_grad],
    )


def run_ptune(args, method):
    from ptune_dist.config import load_config
    from ptune_dist.data.task import TaskSpec
    from ptune_dist.methods import owners
    from ptune_dist.model.build import build_model
    from ptune_dist.model.load import load_tokenizer

    cfg = load_config(
        [],
        [
            f"method.name={method}",
            f"method.num_virtual_tokens={args.virtual}",
            *(["method.projection=false"] if method in owners("projection") else []),  # PEFT's plain prefix
            f"model.name_or_path={MODEL}",
        ],
    )
    model = build_model(
        cfg.method, cfg.model, cfg.train.seed, [TaskSpec(name="bench", type="generation")], load_tokenizer(MODEL)
    ).train()
    batch = ptune_batch(model, *batch_tensors(args.batch, args.seq, args.labels))
    return adamw_step(lambda: model(batch).loss, model.trainable_parameters().values())


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    step = (run_ptune if args.system == "ptune" else run_peft)(args, args.method)
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    dt = (time.perf_counter() - t0) / args.steps
    return {
        "system": args.system,
        "method": args.method,
        "step_s": dt,
        "tokens_per_s": args.batch * args.seq / dt,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "loss": float(loss),
    }


def matmul_gflops(threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    t0 = time.perf_counter()
    for _ in range(3):
        a @ b
    return 3 * 2 * 4096**3 / (time.perf_counter() - t0) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--virtual", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--labels", choices=["answer", "all"], default="answer")
    p.add_argument("--methods", default="prompt_tuning,prefix_tuning")
    p.add_argument("--out", default="")
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.system:
        print(json.dumps(child(args)))
        return
    from ptune_dist.runtime import find_allocator

    fast = find_allocator("auto")
    allocators = {"glibc": None, **({Path(fast).name.split(".")[0].removeprefix("lib"): fast} if fast else {})}
    rows = []
    for method in args.methods.split(","):
        for system in ("peft", "ptune"):
            for alloc, lib in allocators.items():
                cmd = [sys.executable, __file__, "--system", system, "--method", method] + [
                    f"--{k}={getattr(args, k)}" for k in ("batch", "seq", "virtual", "threads", "steps", "labels")
                ]
                env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"} | {
                    "OMP_NUM_THREADS": str(args.threads)
                }
                if lib:
                    env["LD_PRELOAD"] = lib
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]) | {"allocator": alloc})
                print(
                    f"{method:14s} {system:6s} {alloc:16s} {rows[-1]['tokens_per_s']:8.1f} tokens/s  "
                    f"peak RSS {rows[-1]['peak_rss_gb']:.2f} GB",
                    flush=True,
                )
    print(report(args, rows))
    if args.out:
        Path(args.out).write_text(report(args, rows))


def report(args, rows) -> str:
    import peft
    import torch
    import transformers

    lines = [
        f"# Training step: ptune vs PEFT ({args.labels} labels)",
        "",
        f"SmolLM2-135M-Instruct, fp32, batch {args.batch} x {args.seq} tokens, {args.virtual} virtual tokens, "
        f"{args.threads} threads, AdamW, mean of {args.steps} steps after one warm-up; labels on "
        + ("the last 16 tokens of each row" if args.labels == "answer" else "every token")
        + ".",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}; "
        f"4096² fp32 matmul {matmul_gflops(args.threads):.0f} GFLOP/s.",
        "",
        "| method | allocator | PEFT tokens/s | ptune tokens/s | throughput ratio | PEFT peak RSS GB "
        "| ptune peak RSS GB | memory ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["method"], r["system"], r["allocator"]): r for r in rows}
    allocs = list(dict.fromkeys(r["allocator"] for r in rows))
    pairs = [(a, a) for a in allocs] + ([("glibc", allocs[-1])] if len(allocs) > 1 else [])
    for method in dict.fromkeys(r["method"] for r in rows):
        for pa, pt in pairs:
            a, b = by[(method, "peft", pa)], by[(method, "ptune", pt)]
            label = pa if pa == pt else f"PEFT {pa}, ptune {pt} (as each runs by default)"
            lines.append(
                f"| {method} | {label} | {a['tokens_per_s']:.0f} | {b['tokens_per_s']:.0f} | "
                f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x | {a['peak_rss_gb']:.2f} | "
                f"{b['peak_rss_gb']:.2f} | {b['peak_rss_gb'] / a['peak_rss_gb']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
