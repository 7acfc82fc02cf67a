"""Training on a realistic length mix: ptune with packed rows against HF PEFT with padded batches, same examples.

    python bench/packed_step.py [--examples 64] [--median 200] [--sigma 0.9] [--max-len 1024] [--virtual 20]
                                [--peft-batch 8] [--rows 2] [--threads 2] [--out docs/bench_packed_step.md]

The length mix: instruction-like data, lengths drawn from a log-normal with the given median and sigma, cut
to [16, max-len] (seed 0), labels on the last 16 tokens of each example (the output). Both systems train on
the same examples in the same order with AdamW, SmolLM2-135M-Instruct in fp32, one child process each
(peak RSS is per process), after one warm-up step on the first batch:
- PEFT: `--peft-batch` examples a step, right-padded to the longest of the batch (what PEFT and every soft-
  prompt tool does), its prompt tuning / prefix tuning;
- ptune: the examples packed (data/packing.py) into rows of max-len tokens (plus the virtual-token slots of
  shallow prompts), `--rows` rows a step, no padding between examples and none attending to another.
Real tokens/s counts the examples' own tokens (no padding, no virtual tokens), summed over all steps, over
the time of all steps. Prints the table with ratios ptune / PEFT and writes it to --out.
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


def length_mix(args, high: int = 40000) -> list[list[int]]:
    """Token ids (in [100, high)) of every example: log-normal lengths, fixed seed."""
    import torch

    g = torch.Generator().manual_seed(0)
    normal = torch.randn(args.examples, generator=g, dtype=torch.float64)
    lengths = (args.median * torch.exp(args.sigma * normal)).round().clamp(16, args.max_len).long().tolist()
    return [torch.randint(100, high, (n,), generator=g).tolist() for n in lengths]


def padded_batches(examples, batch_size: int) -> list[dict]:
    """PEFT's batches: `batch_size` examples in order, right-padded to the longest of each, labels on the
    last ANSWER tokens of each example."""
    import torch

    batches = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        T = max(len(ex) for ex in chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.long)
        mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
        for r, ex in enumerate(chunk):
            ids[r, : len(ex)], mask[r, : len(ex)] = torch.tensor(ex), 1
            labels[r, len(ex) - ANSWER : len(ex)] = ids[r, len(ex) - ANSWER : len(ex)]
        batches.append(dict(input_ids=ids, attention_mask=mask, labels=labels))
    return batches


def packed_batches(examples, P: int, capacity: int, rows_per_batch: int) -> list[dict]:
    """ptune's batches: each example with P virtual-token slots in front (shallow prompts; 0 for deep), packed
    (data/packing.py) into rows of `capacity` tokens, `rows_per_batch` rows a batch (collate_packed, static
    width), labels on the last ANSWER tokens of each example, task 0."""
    from ptune_dist.data.encode import IGNORE, Example
    from ptune_dist.data.packing import collate_packed, pack

    encoded = [
        Example([0] * P + ex, task_id=0, soft=list(range(P)), labels=[IGNORE] * (P + len(ex) - ANSWER) + ex[-ANSWER:])
        for ex in examples
    ]
    rows = pack([len(ex.input_ids) for ex in encoded], capacity)
    return [
        collate_packed([[encoded[i] for i in row] for row in rows[j : j + rows_per_batch]], 0, capacity)
        for j in range(0, len(rows), rows_per_batch)
    ]


def adamw(params):
    import torch

    return torch.optim.AdamW(list(params), lr=1e-3)


def peft_steps(args, examples):
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from ptune_dist.model.load import resolve_path

    model = AutoModelForCausalLM.from_pretrained(resolve_path(MODEL), attn_implementation="sdpa")
    config = PromptTuningConfig if args.method == "prompt_tuning" else PrefixTuningConfig
    model = get_peft_model(model, config(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=args.virtual)).train()
    batches = padded_batches(examples, args.peft_batch)
    return model, [p for p in model.parameters() if p.requires_grad], batches, lambda b: model(**b).loss


def ptune_steps(args, examples):
    from ptune_dist.config import load_config
    from ptune_dist.data.task import TaskSpec
    from ptune_dist.methods import owners
    from ptune_dist.model.build import build_model
    from ptune_dist.model.load import load_tokenizer

    cfg = load_config(
        [],
        [
            f"method.name={args.method}",
            f"method.num_virtual_tokens={args.virtual}",
            *(["method.projection=false"] if args.method in owners("projection") else []),  # PEFT's plain prefix
            f"model.name_or_path={MODEL}",
        ],
    )
    model = build_model(
        cfg.method, cfg.model, cfg.train.seed, [TaskSpec(name="bench", type="generation")], load_tokenizer(MODEL)
    ).train()
    P = model.placement.soft_slots(args.virtual)
    batches = packed_batches(examples, P, args.max_len + P, args.rows)
    return model, model.trainable_parameters().values(), batches, lambda b: model(b).loss


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    examples = length_mix(args)
    model, params, batches, loss_of = (ptune_steps if args.system == "ptune" else peft_steps)(args, examples)
    opt = adamw(params)

    def step(batch):
        loss = loss_of(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for batch in batches:
        step(batch)
    dt = time.perf_counter() - t0
    real = sum(len(ex) for ex in examples)
    return {
        "system": args.system,
        "method": args.method,
        "steps": len(batches),
        "seconds": dt,
        "real_tokens_per_s": real / dt,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "padded_tokens": sum(int(b["input_ids"].numel()) for b in batches),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (
        ("examples", 64),
        ("median", 200),
        ("max-len", 1024),
        ("virtual", 20),
        ("peft-batch", 8),
        ("rows", 2),
        ("threads", 2),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--sigma", type=float, default=0.9)
    p.add_argument("--methods", default="prompt_tuning,prefix_tuning")
    p.add_argument("--out", default="")
    p.add_argument("--system", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.system:
        print(json.dumps(child(args)))
        return
    rows = []
    passed = ["examples", "median", "max_len", "virtual", "peft_batch", "rows", "threads", "sigma"]
    for method in args.methods.split(","):
        for system in ("peft", "ptune"):
            cmd = [sys.executable, __file__, "--system", system, "--method", method] + [
                f"--{k.replace('_', '-')}={getattr(args, k)}" for k in passed
            ]
            env = os.environ | {"OMP_NUM_THREADS": str(args.threads)}
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(
                f"{method:14s} {system:6s} {rows[-1]['real_tokens_per_s']:8.1f} real tokens/s  "
                f"peak RSS {rows[-1]['peak_rss_gb']:.2f} GB  ({rows[-1]['steps']} steps)",
                flush=True,
            )
    text = report(args, rows)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def report(args, rows) -> str:
    import peft
    import torch
    import transformers

    lines = [
        f"# Training on a length mix: packed ptune vs padded PEFT ({time.strftime('%Y-%m-%d')})",
        "",
        f"SmolLM2-135M-Instruct, fp32, {args.examples} examples with log-normal lengths (median {args.median}, "
        f"sigma {args.sigma}, cut to 16-{args.max_len} tokens), labels on the last {ANSWER} tokens of each, "
        f"{args.virtual} virtual tokens, AdamW, {args.threads} threads. PEFT: {args.peft_batch} examples a step, "
        f"padded to the longest. ptune: packed rows of {args.max_len} tokens (+ the virtual-token slots of "
        f"shallow prompts), {args.rows} rows a step. One pass over the same examples after a warm-up step; "
        "real tokens/s counts the examples' own tokens.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
        f"{torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}. Produced by "
        "`python bench/packed_step.py`.",
        "",
        "| method | PEFT real tokens/s | ptune real tokens/s | ratio | PEFT tokens run (padded) | ptune tokens run "
        "| PEFT peak RSS GB | ptune peak RSS GB | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["method"], r["system"]): r for r in rows}
    for method in dict.fromkeys(r["method"] for r in rows):
        a, b = by[(method, "peft")], by[(method, "ptune")]
        lines.append(
            f"| {method} | {a['real_tokens_per_s']:.0f} | {b['real_tokens_per_s']:.0f} | "
            f"{b['real_tokens_per_s'] / a['real_tokens_per_s']:.2f}x | {a['padded_tokens']} | "
            f"{b['padded_tokens']} | {a['peak_rss_gb']:.2f} | {b['peak_rss_gb']:.2f} | "
            f"{b['peak_rss_gb'] / a['peak_rss_gb']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
