"""Packed training on a GPU: ptune's packed rows against PEFT's padded batches, on a length mix and on
fixed-length batches, Llama-shaped bases in bf16.

    python bench/packed_step_gpu.py [--shapes 1b[,8b]] [--methods prompt_tuning,prefix_tuning] [--examples 256]
                                    [--median 200] [--sigma 0.9] [--max-len 2048] [--peft-batch 8] [--rows 4]
                                    [--fixed-batch B] [--fixed-seq T] [--steps 5] [--warmup 2]
                                    [--base-dir DIR] [--budget-s S] [--out docs/bench_packed_step_gpu.md] [--json F]
    python bench/packed_step_gpu.py --tiny     # CPU check of the same code: 2-layer Llama, fp32, a few examples

The GPU version of bench/packed_step.py, on the random-init bases of bench/train_step_gpu.py (`1b`: TinyLlama-
1.1B's shape, `8b`: Llama-3-8B's; made once, saved to --base-dir, loaded by each system's own loader in its own
child process: ptune through load_base, PEFT through from_pretrained(attn_implementation="sdpa")). Methods:
prompt tuning on both sides, and prefix tuning: PEFT's PrefixTuningConfig against ptune's P-tuning v2 (the same
prefixes, no projection). 20 virtual tokens, AdamW, labels on the last 16 tokens of each example (the output).

Two workloads, the same token ids for both systems:
- length mix: --examples examples whose lengths spread like an instruction set's (log-normal, median 200,
  sigma 0.9, seed 0, cut to [16, --max-len]). PEFT takes --peft-batch examples a step in the mix's order, NOT
  sorted by length (HF Trainer's default, group_by_length=False, is what PEFT's users run), right-padded to the
  longest of the batch. ptune packs the same examples in the same order (data/packing.py, first fit) into rows
  of --max-len tokens (plus the virtual-token slots of shallow prompts; a deep prefix sits in front of every
  sequence as keys), --rows rows a step, collated with a static width (collate_packed), and trains through
  PromptModel exactly as `data.packing=true` does. --warmup steps on the widest batch, then one timed pass
  over every batch (each once, synchronised around each step); real tokens/s = the examples' own tokens (no
  padding, no virtual tokens) / the pass's time.
- fixed length: --fixed-batch x --fixed-seq (the shape's train_step_gpu batch by default: 8 x 1024 for 1b,
  4 x 1024 for 8b), every example --fixed-seq tokens, nothing to pad. PEFT as above; ptune unpacked (its
  padded-batch path) and packed (one example per row, the packed path). --warmup steps, then the median of
  --steps steps.

Peak memory: torch.cuda.max_memory_allocated, reset once the base is loaded and before each workload (so it
includes the base's weights); "above base" subtracts them. Ratios are ptune / PEFT, measured in the same run.
--budget-s bounds the whole run: no child outlives it, and a shape after the first whose estimated time
(NEED_S, plus MAKE_S when its base is missing) does not fit what is left is skipped with the reason printed.
The report and the rows are rewritten after every child, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness import Budget, machine_info  # noqa: E402  (bench/ on sys.path)
from packed_step import length_mix, packed_batches, padded_batches  # noqa: E402
from train_step import ANSWER, adamw_step, batch_tensors, peft_config, ptune_batch  # noqa: E402
from train_step_gpu import (  # noqa: E402
    METHOD_LABEL,
    PTUNE_METHOD,
    SHAPES,
    base_folder,
    fmt,
    free_memory,
    gib,
    machine_lines,
    make_base,
    measure,
    peft_base,
    ptune_base,
    ratio,
    run_child,
    write_files,
    write_results,
)

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "bench_packed_step_gpu.md"
# --tiny: the settings of the CPU check (the test reads them to rebuild the mix)
TINY = dict(examples=12, median=24, sigma=0.9, max_len=64, peft_batch=4, rows=2, steps=1, warmup=1)
# seconds a shape needs (both children: start, load, both methods, both workloads) and to make its base
# when --base-dir lacks it; estimates for an H100/H200, used only to skip a shape that cannot fit --budget-s
NEED_S = {"tiny": 0, "1b": 40, "8b": 170}
MAKE_S = {"tiny": 0, "1b": 15, "8b": 60}
GOALS = {"mix": 2.5, "fixed": 1.3, "memory": 0.6}  # the issue's: throughput at least, peak memory at most


# -- the batches ----------------------------------------------------------------------------------------
def real_tokens(batch: dict) -> int:
    """The examples' own tokens in a batch: attended positions that are not virtual-token slots."""
    mask = batch["attention_mask"].bool()
    if "soft_mask" in batch:
        mask &= ~batch["soft_mask"]
    return int(mask.sum())


def mix_of(spec: dict) -> list[list[int]]:
    return length_mix(
        argparse.Namespace(**{k: spec[k] for k in ("examples", "median", "sigma", "max_len")}),
        high=SHAPES[spec["shape"]]["config"]["vocab_size"],
    )


def workload_row(
    system: str, method: str, workload: str, layout: str, batches: list[dict], loss_of, params, device, spec: dict
) -> dict:
    """Measure one workload: the batches on the device, a fresh AdamW, --warmup steps on the widest batch (its
    allocations and first kernel calls, so the timed steps do not pay them), then the timed steps. The mix:
    one step per batch in order (each batch once), tokens/s over the pass; fixed (one batch): the median of
    --steps steps."""
    from ptune_dist.device import to_device

    real, run = sum(real_tokens(b) for b in batches), sum(int(b["input_ids"].numel()) for b in batches)
    shape = "/".join(dict.fromkeys(f"{b['input_ids'].shape[0]} x {b['input_ids'].shape[1]}" for b in batches))

    def build():
        on_device = [to_device(b, device) for b in batches]
        widest = max(on_device, key=lambda b: b["input_ids"].numel())
        order = itertools.chain([widest] * spec["warmup"], itertools.cycle(on_device))
        return adamw_step(lambda: loss_of(next(order)), params)

    per_pass = workload == "mix"
    steps = len(batches) if per_pass else spec["steps"]
    row = measure(build, device, spec["warmup"], steps, real if per_pass else real // len(batches), per_pass=per_pass)
    widths = [b["input_ids"].shape[1] for b in batches]
    return {
        "system": system,
        "method": method,
        "workload": workload,
        "layout": layout,
        "batches": len(batches),
        "real_tokens": real,
        "tokens_run": run,
        "batch_shapes": shape
        if len(shape) < 40
        else f"{batches[0]['input_ids'].shape[0]} x {min(widths)}-{max(widths)}",
        **row,
    }


# -- the children ---------------------------------------------------------------------------------------
def child_ptune(spec: dict) -> dict:
    """ptune's public path: load_config -> device.choose -> load_base once -> build_model(base=...) per method;
    packed batches from data/packing.py straight into PromptModel, as data.packing=true trains."""
    from ptune_dist.config import load_config
    from ptune_dist.data.task import TaskSpec
    from ptune_dist.model.build import build_model

    P, L, B, T = spec["virtual"], spec["max_len"], spec["fixed_batch"], spec["fixed_seq"]
    common = [
        f"model.name_or_path={spec['folder']}",
        f"model.dtype={spec['dtype']}",
        f"train.device={spec['device']}",
        f"method.num_virtual_tokens={P}",
        "tasks.0.type=generation",
        "data.packing=true",
        f"data.batch_size={spec['rows']}",
        f"data.max_length={L + P}",
    ]
    made_s = make_base(spec["shape"], Path(spec["folder"]), spec["device"], spec["dtype"])  # once per shape
    free_memory()
    device, base, load_s, base_bytes = ptune_base(spec, common)
    examples = mix_of(spec)
    ids, labels = batch_tensors(B, T, "answer", high=SHAPES[spec["shape"]]["config"]["vocab_size"])
    rows = []
    for method in spec["methods"]:
        cfg = load_config([], [*common, f"method.name={PTUNE_METHOD.get(method, method)}"])
        model = build_model(
            cfg.method,
            cfg.model,
            cfg.train.seed,
            [TaskSpec(name="bench", type="generation")],
            None,
            base=base,
            device=device,
        ).train()
        slots = model.placement.soft_slots(model.num_virtual_tokens)  # placeholders in the row
        workloads = (
            ("mix", "packed", packed_batches(examples, slots, model.row_capacity(L + P), spec["rows"])),
            ("fixed", "unpacked", [ptune_batch(model, ids, labels)]),
            ("fixed", "packed", packed_batches(ids.tolist(), slots, model.row_capacity(T + P), B)),
        )
        for workload, layout, batches in workloads:
            row = workload_row(
                "ptune",
                method,
                workload,
                layout,
                batches,
                lambda b, model=model: model(b).loss,
                list(model.trainable_parameters().values()),
                device,
                spec,
            )
            rows.append({**row, "load_s": load_s, "base_bytes": base_bytes, "base_made_s": made_s})
        del model
        free_memory()
    return {"rows": rows, "machine": machine_info(spec["device"])}


def child_peft(spec: dict) -> dict:
    """PEFT as its users run it: from_pretrained with SDPA attention, get_peft_model per method, padded batches."""
    import torch
    from peft import get_peft_model

    P, B, T = spec["virtual"], spec["fixed_batch"], spec["fixed_seq"]
    device, base, load_s, base_bytes = peft_base(spec)
    examples = mix_of(spec)
    ids, labels = batch_tensors(B, T, "answer", high=SHAPES[spec["shape"]]["config"]["vocab_size"])
    fixed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    rows = []
    for method in spec["methods"]:
        model = get_peft_model(base, peft_config(method, P)).train()
        params = [p for p in model.parameters() if p.requires_grad]
        for workload, batches in (("mix", padded_batches(examples, spec["peft_batch"])), ("fixed", [fixed])):
            row = workload_row(
                "peft",
                method,
                workload,
                "padded" if workload == "mix" else "full",
                batches,
                lambda b, model=model: model(**b).loss,
                params,
                device,
                spec,
            )
            rows.append({**row, "load_s": load_s, "base_bytes": base_bytes})
        del model, params
        free_memory()
    return {"rows": rows, "machine": machine_info(spec["device"])}


CHILDREN = {"ptune": child_ptune, "peft": child_peft}


# -- the report -----------------------------------------------------------------------------------------
def mix_stats(args) -> dict:
    lengths = [len(ex) for ex in length_mix(args, high=SHAPES[args.shape_list[0]]["config"]["vocab_size"])]
    return {
        "examples": len(lengths),
        "real_tokens": sum(lengths),
        "mean": sum(lengths) / len(lengths),
        "median": statistics.median(lengths),
        "longest": max(lengths),
        "shortest": min(lengths),
    }


def report(args, info: dict, rows: list[dict], stats: dict) -> str:
    cuda = not args.tiny
    mem = "peak GPU GiB" if cuda else "peak RSS GiB"
    by = {(r["shape"], r["system"], r["method"], r.get("workload"), r.get("layout")): r for r in rows}

    def get(shape, system, method, workload, layout):
        return by.get((shape, system, method, workload, layout), {})

    def ok(r):
        return "real_tokens_per_s" in r

    def speed(r):
        return fmt(r["real_tokens_per_s"]) if ok(r) else r.get("error", "-")

    def peak(r):
        return r["peak_bytes"] if ok(r) else None

    def above(r):
        return r["peak_bytes"] - r["base_bytes"] if ok(r) and cuda else None

    def tps_ratio(b, a):
        return ratio(b["real_tokens_per_s"], a["real_tokens_per_s"]) if ok(a) and ok(b) else "-"

    def run_of(r):
        return f"{r['batches']} / {r['tokens_run']}" if ok(r) else "-"

    P = args.virtual
    lines = [
        f"# Packed training on a GPU: ptune vs PEFT ({'tiny CPU check' if args.tiny else 'bf16'})",
        "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: `python bench/packed_step_gpu.py "
        f"{' '.join(args.argv)}`.",
        *machine_lines(info, "cuda" if cuda else "cpu"),
        "",
        f"Bases: random-init Llama shapes ({', '.join(SHAPES[s]['label'] for s in args.shape_list)}), "
        f"{args.dtype}, saved with save_pretrained and loaded by each system's own loader in its own "
        f"{'call (--inline: one process)' if args.inline else 'child process'}. {P} virtual tokens, AdamW, "
        f"labels on the last {ANSWER} tokens of each example. Prefix tuning: PEFT's PrefixTuningConfig "
        "against ptune's P-tuning v2 (the same prefixes, no projection).",
        "",
        f"Length mix: {stats['examples']} examples, log-normal lengths (median {args.median}, sigma "
        f"{args.sigma}, seed 0) cut to [16, {args.max_len}]: median {stats['median']:.0f}, mean "
        f"{stats['mean']:.0f}, longest {stats['longest']}, {stats['real_tokens']} real tokens in all. PEFT: "
        f"{args.peft_batch} examples a step in the mix's order (not sorted by length: HF Trainer's default), "
        f"right-padded to the longest of each. ptune: the same examples in the same order packed first-fit "
        f"(data/packing.py) into rows of {args.max_len} tokens (+ {P} virtual-token slots per example for "
        f"prompt tuning; P-tuning v2's prefix sits in front of every sequence as keys), {args.rows} rows a "
        f"step, through PromptModel as data.packing=true trains. {args.warmup} warm-up step(s) on the widest "
        "batch, then one timed pass (every batch once, in order); real tokens/s = the examples' own tokens "
        "(no padding, no virtual tokens) / the pass's time. 'steps / token slots' = the pass's steps and the "
        "input positions run (padding and ptune's virtual-token slots included).",
        "",
        f"Fixed length: {args.fixed_desc}, every example the same length (nothing to pad); ptune unpacked "
        "(its padded-batch path) and packed (one example per row, the packed path); "
        f"{args.warmup} warm-up step(s), then the median of {args.steps} step(s).",
        "",
        "Peak memory: the allocator's peak (torch.cuda.max_memory_allocated), reset before each workload "
        "once the base is loaded, so it includes the base's weights; 'above base' is what the method, "
        "optimizer, batches and activations add."
        if cuda
        else "Peak memory: the process's peak RSS (the CPU check; not comparable between rows).",
        "",
        "## Length mix",
        "",
        f"| shape | method | PEFT real tokens/s | ptune real tokens/s | ratio (goal >= {GOALS['mix']}x) | PEFT "
        f"steps / token slots | ptune steps / token slots | PEFT {mem} | ptune {mem} | memory ratio (goal <= "
        f"{GOALS['memory']}x) | PEFT above base GiB | ptune above base GiB | above-base ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in args.shape_list:
        for method in args.method_list:
            a, b = get(shape, "peft", method, "mix", "padded"), get(shape, "ptune", method, "mix", "packed")
            lines.append(
                f"| {SHAPES[shape]['label']} | {METHOD_LABEL.get(method, method)} | {speed(a)} | "
                f"{speed(b)} | {tps_ratio(b, a)} | {run_of(a)} | {run_of(b)} | {gib(peak(a))} | "
                f"{gib(peak(b))} | {ratio(peak(b), peak(a))} | {gib(above(a))} | {gib(above(b))} | "
                f"{ratio(above(b), above(a))} |"
            )
    lines += [
        "",
        "## Fixed-length batches",
        "",
        f"| shape | method | batch x seq | PEFT tokens/s | ptune unpacked tokens/s | ratio (goal >= "
        f"{GOALS['fixed']}x) | ptune packed tokens/s | ratio | PEFT {mem} | ptune unpacked {mem} | memory "
        f"ratio | ptune packed {mem} | memory ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape in args.shape_list:
        for method in args.method_list:
            a = get(shape, "peft", method, "fixed", "full")
            u, k = get(shape, "ptune", method, "fixed", "unpacked"), get(shape, "ptune", method, "fixed", "packed")
            lines.append(
                f"| {SHAPES[shape]['label']} | {METHOD_LABEL.get(method, method)} | "
                f"{args.fixed[shape][0]} x {args.fixed[shape][1]} | {speed(a)} | {speed(u)} | "
                f"{tps_ratio(u, a)} | {speed(k)} | {tps_ratio(k, a)} | {gib(peak(a))} | {gib(peak(u))} | "
                f"{ratio(peak(u), peak(a))} | {gib(peak(k))} | {ratio(peak(k), peak(a))} |"
            )
    lines += ["", "## Against the issue's goals", ""]
    if not cuda:
        lines.append("Not judged: the tiny CPU check runs the code, not the measurement.")
    for shape in args.shape_list if cuda else []:
        for method in args.method_list:
            a = get(shape, "peft", method, "mix", "padded")
            b = get(shape, "ptune", method, "mix", "packed")
            fa = get(shape, "peft", method, "fixed", "full")
            fu = get(shape, "ptune", method, "fixed", "unpacked")
            fk = get(shape, "ptune", method, "fixed", "packed")
            if not any(ok(r) for r in (a, b, fa, fu, fk)):
                why = next((r["error"] for r in (a, b, fa, fu, fk) if "error" in r), "no rows")
                lines.append(f"- {shape} {METHOD_LABEL.get(method, method)}: not measured ({why}).")
                continue
            lines.append(
                f"- {shape} {METHOD_LABEL.get(method, method)}: "
                + "; ".join(
                    [
                        judge("length mix tokens/s", b, a, "real_tokens_per_s", GOALS["mix"], at_least=True),
                        judge("fixed tokens/s (unpacked)", fu, fa, "real_tokens_per_s", GOALS["fixed"], at_least=True),
                        judge("fixed tokens/s (packed)", fk, fa, "real_tokens_per_s", GOALS["fixed"], at_least=True),
                        judge("length-mix peak memory", b, a, "peak_bytes", GOALS["memory"], at_least=False),
                        judge("fixed peak memory (unpacked)", fu, fa, "peak_bytes", GOALS["memory"], at_least=False),
                    ]
                )
                + "."
            )
    counted = [
        f"{r['shape']} {r['system']} {r['method']} {r['real_tokens']}"
        for r in rows
        if r.get("workload") == "mix" and "real_tokens" in r
    ]
    lines += [
        "",
        "Real tokens counted from the batches each system ran on the length mix: "
        + (", ".join(counted) or "none")
        + f" (the examples' lengths sum to {stats['real_tokens']}).",
        "Loads and step spread (seconds): "
        + "; ".join(
            f"{r['shape']} {r['system']} {r['method']} {r['workload']} {r['layout']}: load {r['load_s']:.1f}, "
            f"step {r['step_s_min']:.3f}-{r['step_s_max']:.3f}"
            for r in rows
            if "step_s_min" in r
        )
        + ".",
    ]
    if lines[-1].endswith(": ."):
        lines[-1] = "Loads and step spread: none measured."
    made = {r["shape"]: r["base_made_s"] for r in rows if r.get("base_made_s")}
    if made:
        lines.append("Bases made in this run (seconds): " + ", ".join(f"{k} {v:.0f}" for k, v in made.items()) + ".")
    return "\n".join(lines) + "\n"


def judge(what: str, b: dict, a: dict, key: str, goal: float, at_least: bool) -> str:
    if key not in a or key not in b:
        return f"{what} not measured"
    value = b[key] / a[key]
    met = value >= goal if at_least else value <= goal
    return f"{what} {value:.2f}x ({'met' if met else 'NOT met'}, goal {'>=' if at_least else '<='} {goal}x)"


# -- the parent -----------------------------------------------------------------------------------------
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU check: a 2-layer Llama of hidden 64, fp32, a few examples")
    p.add_argument("--shapes", default="1b", help="1b, 8b or both (comma-separated)")
    p.add_argument("--methods", default="prompt_tuning,prefix_tuning")
    for name, default in (
        ("examples", 256),
        ("median", 200),
        ("max-len", 2048),
        ("virtual", 20),
        ("peft-batch", 8),
        ("rows", 4),
        ("fixed-batch", 0),
        ("fixed-seq", 0),
        ("steps", 5),
        ("warmup", 2),
    ):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--sigma", type=float, default=0.9)
    p.add_argument("--base-dir", default=os.path.join(tempfile.gettempdir(), "ptune-bench-bases"))
    p.add_argument("--budget-s", type=float, default=0, help="the whole run's seconds (0: no limit)")
    p.add_argument(
        "--out", default=None, help="the markdown report (default docs/bench_packed_step_gpu.md; --tiny: none)"
    )
    p.add_argument("--json", default=None, help="the raw rows (default: --out with .json)")
    p.add_argument("--inline", action="store_true", help="run the systems in this process (CPU checks, tests)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(CHILDREN[spec["kind"]](spec)), flush=True)
        return 0
    args.argv = argv
    if args.tiny:
        args.shapes = "tiny"
        for k, v in TINY.items():
            setattr(args, k, v)
    if args.out is None:
        args.out = "" if args.tiny else str(DEFAULT_OUT)
    if args.json is None:
        args.json = str(Path(args.out).with_suffix(".json")) if args.out else ""
    args.dtype, device = ("float32", "cpu") if args.tiny else ("bfloat16", "cuda")
    args.shape_list, args.method_list = args.shapes.split(","), args.methods.split(",")
    unknown = [s for s in args.shape_list if s not in SHAPES]
    if unknown:
        p.error(f"--shapes: unknown {unknown}; choose from {[s for s in SHAPES if s != 'tiny']}")
    args.fixed = {
        s: (args.fixed_batch or SHAPES[s]["batch"], args.fixed_seq or SHAPES[s]["seq"]) for s in args.shape_list
    }
    args.fixed_desc = ", ".join(f"{s} {B} x {T}" for s, (B, T) in args.fixed.items())
    budget = Budget(args.budget_s or None, reserve=5.0)
    inline = CHILDREN if args.inline else None
    script = os.path.abspath(__file__)
    stats = mix_stats(args)
    print(
        f"length mix: {stats['examples']} examples, median {stats['median']:.0f}, mean {stats['mean']:.0f}, "
        f"longest {stats['longest']}, {stats['real_tokens']} real tokens",
        flush=True,
    )
    rows, machine = [], {}
    for shape in args.shape_list:
        folder = base_folder(args.base_dir, shape, args.dtype)
        need = NEED_S[shape] + (0 if (folder / "READY").exists() else MAKE_S[shape])
        left = budget.left()
        if left is not None and left < need and shape == args.shape_list[0]:  # the first shape always tries
            print(
                f"{shape}: needs about {need} s, {max(left, 0):.0f} s of --budget-s left; trying (no child "
                "outlives the budget)",
                flush=True,
            )
        elif left is not None and left < need:
            why = f"skipped: needs about {need} s, {max(left, 0):.0f} s of --budget-s left"
            print(f"{shape}: {why}", flush=True)
            rows += [
                {"shape": shape, "system": s, "method": m, "workload": w, "layout": lay, "error": why}
                for m in args.method_list
                for s, w, lay in (
                    ("peft", "mix", "padded"),
                    ("peft", "fixed", "full"),
                    ("ptune", "mix", "packed"),
                    ("ptune", "fixed", "unpacked"),
                    ("ptune", "fixed", "packed"),
                )
            ]
            continue
        for system in ("ptune", "peft"):  # ptune's child makes the base when it is missing
            spec = {
                "kind": system,
                "shape": shape,
                "folder": str(folder),
                "device": device,
                "dtype": args.dtype,
                "methods": args.method_list,
                "virtual": args.virtual,
                "steps": args.steps,
                "warmup": args.warmup,
                "examples": args.examples,
                "median": args.median,
                "sigma": args.sigma,
                "max_len": args.max_len,
                "peft_batch": args.peft_batch,
                "rows": args.rows,
                "fixed_batch": args.fixed[shape][0],
                "fixed_seq": args.fixed[shape][1],
            }
            out = run_child(script, spec, budget, children=inline)
            machine = machine or out.get("machine") or {}
            layouts = (
                (("mix", "padded"), ("fixed", "full"))
                if system == "peft"
                else (("mix", "packed"), ("fixed", "unpacked"), ("fixed", "packed"))
            )
            got = out.get("rows") or [
                {"system": system, "method": m, "workload": w, "layout": lay, "error": out.get("error", "no rows")}
                for m in args.method_list
                for w, lay in layouts
            ]
            for r in got:
                r["shape"] = shape
                if "tokens_per_s" in r:  # measure()'s name; these are the examples' own tokens
                    r["real_tokens_per_s"] = r.pop("tokens_per_s")
                rows.append(r)
                what = (
                    r["error"]
                    if "error" in r
                    else (
                        f"{r['real_tokens_per_s']:9.0f} real tokens/s, peak {gib(r.get('peak_bytes'))} GiB, "
                        f"{r['batches']} batch(es), loss {r['loss']:.3f}"
                    )
                )
                print(
                    f"{shape:4s} {system:5s} {r['method']:13s} {r['workload']:5s} {r['layout']:8s} {what}", flush=True
                )
            write_files(args, report(args, machine, rows, stats), machine, rows)  # after every child
    return write_results(args, report(args, machine, rows, stats), machine, rows)


if __name__ == "__main__":
    sys.exit(main())
