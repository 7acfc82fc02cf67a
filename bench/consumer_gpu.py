"""The design card's consumer-GPU case: an 8B base in nf4 on a 24 GB card, measured on a bigger GPU.

    python bench/consumer_gpu.py [--batch 16] [--seq 2048] [--methods prompt_tuning,p_tuning_v2]
                                 [--peft-batches 1,4] [--steps 2] [--warmup 1] [--base-dir DIR] [--budget-s S]
                                 [--out docs/bench_consumer_gpu.md]
    python bench/consumer_gpu.py --tiny        # CPU check of the same code: 2-layer Llama, fp32, nf4, 1 step

The base is the random-init Llama-3-8B-shaped folder of bench/train_step_gpu.py (bf16 safetensors in
--base-dir, made here when missing), quantised to nf4 by bitsandbytes while it loads (bf16 compute, single
quantisation, uint8 storage; embeddings and LM head stay bf16), with gradient checkpointing. ptune loads it
through `load_base` (model.quant=nf4, model.quant_compute_dtype=bfloat16, model.gradient_checkpointing=true)
and trains prompt tuning and P-tuning v2 (20 virtual tokens, labels on the last 16 tokens of each row) at
batch 16 x 2048 tokens; both methods run on the one loaded base, one after the other. The peer is PEFT's
QLoRA recipe with a prompt: `from_pretrained(quantization_config=BitsAndBytesConfig(nf4, bf16 compute))`,
`prepare_model_for_kbit_training` (gradient checkpointing; it also casts the bf16 embeddings and head to
fp32) and `get_peft_model(PromptTuningConfig)`, at batch 1 and 4 x 2048 (PEFT computes the logits of every
position, so its memory grows with the batch much faster).

Memory: the allocator's peak (torch.cuda.max_memory_allocated, reset once the base is loaded) and the
device's: the allocator's reserved peak plus what the process holds outside it (CUDA context, kernels,
libraries), which is what must fit in 24 GB; the goal is 22 GiB. `ptune plan` predicts the same setup
(ptune_dist.plan: the request below, parsed by `ptune plan`'s own parser; the planner's 1 GiB runtime term
stands for the context); the goal is within 15% of the device peak. Throughput: the median of --steps
steps after --warmup, tokens/s = batch x seq real tokens / step time (recomputation included). The report and
the rows are rewritten after every child (ptune's, PEFT's), so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness import Budget, machine_info  # noqa: E402  (bench/ on sys.path)
from train_step import ANSWER, adamw_step, batch_tensors, peft_config  # noqa: E402
from train_step_gpu import (  # noqa: E402
    SHAPES,
    base_folder,
    child_prepare,
    fmt,
    gib,
    machine_lines,
    measure,
    memory_now,
    ptune_rows,
    ratio,
    run_child,
    write_files,
    write_results,
)

GiB = 2**30
GOAL_GIB = 22.0
PLAN_TOLERANCE = 0.15
TRAIN_STEP_GPU = str(Path(__file__).with_name("train_step_gpu.py"))


def plan_args(folder: str, method: str, B: int, T: int, P: int, dtype: str) -> list[str]:
    """`ptune plan` arguments that describe the measured setup exactly (micro-batch and checkpointing fixed)."""
    return [
        f"model={folder}",
        f"method={method}",
        f"model.dtype={dtype}",
        "model.quant=nf4",
        f"model.quant_compute_dtype={dtype}",
        "model.gradient_checkpointing=true",
        f"data.batch_size={B}",
        "train.grad_accum=1",
        f"data.max_length={T + P}",
        f"method.num_virtual_tokens={P}",
        "tasks.0.type=generation",
        f"plan.label_tokens={ANSWER}",
        "hardware.gpus=1",
        "hardware.gpu_mem=24GB",
    ]


def plan_prediction(args: list[str]) -> dict:
    """What `ptune plan` predicts for this request: its parser, its Setup, its predict() and runtime term."""
    from ptune_dist.plan import parse_request, predict

    req = parse_request(args)
    b = predict(req.arch, req.base, runtime=req.hardware.runtime_bytes)
    return {
        "plan_total_bytes": b.total,
        "plan_tensors_bytes": b.tensors,
        "plan_parts": {k: v for k, v in b.as_dict().items() if k not in ("trainable_params", "host")},
    }


def ptune_common(spec: dict, B: int, T: int, P: int) -> list[str]:
    dtype = spec["dtype"]
    return [
        f"model.name_or_path={spec['folder']}",
        f"model.dtype={dtype}",
        "model.quant=nf4",
        f"model.quant_compute_dtype={dtype}",
        "model.gradient_checkpointing=true",
        f"train.device={spec['device']}",
        "tasks.0.type=generation",
        f"data.batch_size={B}",
        f"data.max_length={T + P}",
        f"method.num_virtual_tokens={P}",
    ]


def child_ptune(spec: dict) -> dict:
    B, T, P = spec["batch"], spec["seq"], spec["virtual"]
    rows = ptune_rows(spec, ptune_common(spec, B, T, P), {m: m for m in spec["methods"]}, B, T, spec["vocab"])
    for row in rows:
        args = plan_args(spec["folder"], row["method"], B, T, P, spec["dtype"])
        row.update(plan_prediction(args), plan_command="ptune plan " + " ".join(args))
    return {"rows": rows, "machine": machine_info(spec["device"])}


def child_peft(spec: dict) -> dict:
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging

    logging.disable_progress_bar()
    T, P = spec["seq"], spec["virtual"]
    dtype = getattr(torch, spec["dtype"])
    device = torch.device("cuda", 0) if spec["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    extra = {"device_map": {"": device}} if device.type == "cuda" else {}
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    base = AutoModelForCausalLM.from_pretrained(
        spec["folder"], dtype=dtype, quantization_config=quant, attn_implementation="sdpa", **extra
    )
    base = prepare_model_for_kbit_training(
        base, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
    )
    load_s, base_bytes = time.perf_counter() - t0, memory_now(device)
    model = get_peft_model(base, peft_config("prompt_tuning", P)).train()
    rows = []
    for B in spec["batches"]:
        ids, labels = batch_tensors(B, T, "answer", high=spec["vocab"])
        ids, labels = ids.to(device), labels.to(device)
        mask = torch.ones_like(ids)

        def build(ids=ids, labels=labels, mask=mask):
            return adamw_step(
                lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss,
                [p for p in model.parameters() if p.requires_grad],
            )

        row = measure(build, device, spec["warmup"], spec["steps"], B * T)
        rows.append(
            {
                "system": "peft",
                "method": "prompt_tuning",
                "batch": B,
                "seq": T,
                "load_s": load_s,
                "base_bytes": base_bytes,
                **row,
            }
        )
    return {"rows": rows, "machine": machine_info(spec["device"])}


CHILDREN = {"prepare": child_prepare, "ptune": child_ptune, "peft": child_peft}


def device_peak(r: dict) -> float | None:
    """What the device held at the peak: the allocator's reserved peak + memory outside the allocator."""
    if "peak_reserved_bytes" not in r:
        return None
    return r["peak_reserved_bytes"] + r.get("outside_allocator_bytes", 0)


def report(args, info: dict, rows: list[dict]) -> str:
    cuda = not args.tiny
    mem = "peak allocated GiB" if cuda else "peak RSS GiB"
    s = SHAPES[args.shape]
    lines = [
        f"# Consumer GPU: {s['label']} in nf4 with gradient checkpointing "
        f"({'tiny CPU check' if args.tiny else 'bf16 compute'})",
        "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: `python bench/consumer_gpu.py "
        f"{' '.join(args.argv)}`.",
        *machine_lines(info, "cuda" if cuda else "cpu"),
        "",
        f"{args.virtual} virtual tokens, labels on the last {ANSWER} tokens of each row, AdamW; "
        f"{args.warmup} warm-up step(s), then the median of {args.steps} timed step(s). The base: "
        "random-init, saved as bf16 safetensors by bench/train_step_gpu.py, quantised to nf4 while loading. "
        f"Device peak = the allocator's reserved peak + memory outside the allocator (CUDA context etc.): "
        f"what must fit a 24 GB card (goal {GOAL_GIB:.0f} GiB). Plan = `ptune plan`'s prediction of the same "
        f"setup (goal: within {PLAN_TOLERANCE:.0%} of the device peak; 'tensors' compares its tensor terms with "
        "the allocated peak).",
        "",
        f"| system | method | batch x seq | tokens/s | {mem} | device peak GiB | within {GOAL_GIB:.0f} GiB "
        "| plan total GiB | plan vs device peak | plan tensors GiB | plan tensors vs allocated |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ok = "tokens_per_s" in r
        dev = device_peak(r) if ok else None
        fits = "-" if dev is None else ("yes" if dev <= GOAL_GIB * GiB else "no")
        plan_total, plan_tensors = r.get("plan_total_bytes"), r.get("plan_tensors_bytes")
        err = f"{plan_total / dev - 1:+.1%}" if plan_total and dev else "-"
        err_t = f"{plan_tensors / r['peak_bytes'] - 1:+.1%}" if plan_tensors and ok and cuda else "-"
        lines.append(
            f"| {r['system']} | {r['method']} | {r.get('batch', '?')} x {r.get('seq', '?')} | "
            f"{fmt(r['tokens_per_s']) if ok else r.get('error', '-')} | {gib(r['peak_bytes']) if ok else '-'} | "
            f"{gib(dev)} | {fits} | {gib(plan_total)} | {err} | {gib(plan_tensors)} | {err_t} |"
        )
    peft_ok = [r for r in rows if r["system"] == "peft" and "tokens_per_s" in r]
    peer = max(peft_ok, key=lambda r: r["batch"]) if peft_ok else None
    lines += [
        "",
        "Ratios against the PEFT peer measured in this run"
        + (f" (PEFT prompt tuning at batch {peer['batch']}):" if peer else " (none ran):"),
    ]
    for r in rows:
        if r["system"] == "ptune" and "tokens_per_s" in r and peer:
            lines.append(
                f"- ptune {r['method']} at batch {r['batch']}: {ratio(r['tokens_per_s'], peer['tokens_per_s'])}"
                f" tokens/s, {ratio(r['peak_bytes'], peer['peak_bytes'])} peak memory for "
                f"{r['batch'] / peer['batch']:.0f}x the batch."
            )
    for r in rows:
        if r.get("plan_parts"):
            lines.append(
                f"- plan for ptune {r['method']} (GiB): "
                + ", ".join(f"{k} {v / GiB:.2f}" for k, v in r["plan_parts"].items() if v)
                + "."
            )
    commands = [r["plan_command"] for r in rows if r.get("plan_command")]
    if commands:
        lines += ["", "The plan requests (model = the base folder):", ""] + [f"    {c}" for c in commands]
    lines += [
        "",
        "Loads (seconds, nf4 quantisation included): "
        + "; ".join(dict.fromkeys(f"{r['system']} {r['load_s']:.0f}" for r in rows if "load_s" in r))
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU check: a 2-layer Llama of hidden 64, fp32, 1 step")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--virtual", type=int, default=20)
    p.add_argument("--methods", default="prompt_tuning,p_tuning_v2")
    p.add_argument("--peft-batches", default="1,4")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--base-dir", default=os.path.join(tempfile.gettempdir(), "ptune-bench-bases"))
    p.add_argument("--budget-s", type=float, default=0, help="stop starting children after this long (0: no limit)")
    p.add_argument("--out", default="")
    p.add_argument("--json", default="")
    p.add_argument("--inline", action="store_true", help="run the systems in this process (CPU checks, tests)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)), flush=True)
        return 0
    args.argv = argv
    if args.tiny:
        args.batch, args.seq, args.steps, args.warmup, args.peft_batches = 2, 32, 1, 1, "1,2"
    args.shape = "tiny" if args.tiny else "8b"
    dtype, device = ("float32", "cpu") if args.tiny else ("bfloat16", "cuda")
    budget = Budget(args.budget_s or None)
    inline = CHILDREN if args.inline else None
    script = os.path.abspath(__file__)
    folder = str(base_folder(args.base_dir, args.shape, dtype))
    if (Path(folder) / "READY").exists():
        prep = {}
    else:  # bench/train_step_gpu.py has not made the base yet
        prep = run_child(
            TRAIN_STEP_GPU,
            {
                "kind": "prepare",
                "device": device,
                "dtype": dtype,
                "matmul": False,
                "shapes": [args.shape],
                "base_dir": args.base_dir,
            },
            budget,
            min_s=5,
            children=inline,
        )
        print(
            "prepare: "
            + (
                prep["error"]
                if "error" in prep
                else f"{prep['child_s']:.0f} s, base made in {prep['made_s'][args.shape]:.0f} s"
            ),
            flush=True,
        )
    common = {
        "folder": folder,
        "device": device,
        "dtype": dtype,
        "virtual": args.virtual,
        "seq": args.seq,
        "steps": args.steps,
        "warmup": args.warmup,
        "vocab": SHAPES[args.shape]["config"]["vocab_size"],
    }
    rows, machine = [], prep.get("machine") or {}
    for kind, spec in (
        ("ptune", {"batch": args.batch, "methods": args.methods.split(",")}),
        ("peft", {"batches": [int(b) for b in args.peft_batches.split(",")]}),
    ):
        out = run_child(script, {"kind": kind, **common, **spec}, budget, children=inline)
        got = out.get("rows") or [
            {"system": kind, "method": m, "error": out.get("error", "no rows")}
            for m in (spec.get("methods") or ["prompt_tuning"])
        ]
        machine = machine or out.get("machine") or {}
        for r in got:
            rows.append(r)
            what = (
                r["error"]
                if "error" in r
                else (f"{r['tokens_per_s']:8.0f} tokens/s, peak {gib(r['peak_bytes'])} GiB, loss {r['loss']:.3f}")
            )
            print(f"{kind:5s} {r['method']:13s} B{r.get('batch', '?')}: {what}", flush=True)
        write_files(args, report(args, machine, rows), machine, rows)  # after every child
    return write_results(args, report(args, machine, rows), machine, rows)


if __name__ == "__main__":
    sys.exit(main())
