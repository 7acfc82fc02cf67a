"""The memory planner (`ptune plan`) against measured peak memory of `ptune train` on this CPU.

    python bench/memory_plan.py [--out docs/plan_measured.md] [--steps 2] [--cells fp32-b4-ckpt0-r1,...]
                                [--release-layers]

Every cell is one real training run of prefix tuning on SmolLM2-135M-Instruct (2 steps, fixed-length
rows of a synthetic classification task, data.max_length 64 with 20 virtual tokens), started the way
`ptune train` / `ptune launch` start it (under tcmalloc when installed; 2-rank cells with torchrun,
gloo, one thread per rank). The grid: base (fp32, bf16, int8, nf4) x gradient checkpointing (off, on)
x batch per rank (4, 16) on one process; on 2 ranks fp32 with ZeRO-0 and ZeRO-3 at batch 4 and 16 per
rank, bf16 and nf4 (packed weights stored as float32 so ZeRO-3 partitions them) with ZeRO-3 at
batch 4, and fp32 and bf16 with ZeRO-3 keeping at most 1M gathered parameters live (`-live1m`). `--cells` runs
part of the grid, `--replay a.json,b.json` merges parts into one table.

    python bench/memory_plan.py --models-table    # the planner's tables for 1B-70B Llama models (no runs)

How memory is measured: each rank runs `ptune_dist.cli.main(["train", ...])` inside a small wrapper
(this file, `--child`) that reads /proc/self/status. The baseline is the process's RSS right before
the base model loads (Python, torch, transformers, DeepSpeed, the tokenizer, the encoded data and
the process group are all in it). After the model is built, just before the engine is made, the
kernel's high-water mark is reset (`echo 5 > /proc/self/clear_refs`), so loading transients (the
safetensors file mapped while tensors are copied out of it) do not count: the planner predicts
training, not loading. Measured = VmHWM at the end of the run (engine set-up, the training steps,
the final evaluation and checkpoint) minus the baseline, the larger rank of a 2-rank cell.

The planner predicts tensor memory; a process also holds memory that is no tensor (allocator caches
and fragmentation, oneDNN primitive caches, autograd's graph, DeepSpeed's bookkeeping). That runtime
overhead is calibrated ONCE, on a separate calibration cell (fp32, batch 1, 32 tokens, one process:
almost nothing but the weights), as measured minus predicted tensors, and then added to every cell's
prediction unchanged. No cell is fitted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GiB = 2**30
STEPS = 2
MAX_LENGTH = 64
VIRTUAL = 20
METHOD = "prefix_tuning"
BASES = {
    "fp32": ("float32", "none"),
    "bf16": ("bfloat16", "none"),
    "int8": ("float32", "int8"),
    "nf4": ("float32", "nf4"),
}
WORDS = (
    "the a of to and in is it for on that with as was by at be this from or have an not are but which one "
    "all were when there can more about time"
).split()


# -- the child: one rank of one cell ------------------------------------------------------------
ALLOCATOR_DEFAULT = "tcmalloc (preloaded per cell)"


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def release_after_every_layer(model) -> None:
    """Diagnostic: hand the allocator's free pages back after each decoder layer's forward and backward,
    so the high-water mark counts what live objects hold rather than what the allocator keeps."""
    from ptune_dist.runtime import release_free_memory

    def release(*_):
        release_free_memory()  # a forward hook's return value would replace the layer's output

    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            module.register_forward_hook(release)
            module.register_full_backward_hook(release)


def child(args: list[str], record: str, release: bool = False) -> int:
    import deepspeed  # noqa: F401  (in every cell's baseline, whatever the engine)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import ptune_dist.train.loop as loop
    import ptune_dist.train.placement as placement
    from ptune_dist import cli

    marks = {}
    original_load, original_engine = placement.load_base, loop.make_engine

    def load_base(*a, **k):
        marks["baseline"] = _status("VmRSS")
        return original_load(*a, **k)

    def make_engine(s):
        marks["after_load"] = _status("VmRSS")
        marks["load_hwm"] = _status("VmHWM")
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts from the current RSS
        marks["reset_to"] = _status("VmHWM")
        if release:
            release_after_every_layer(s.model)
        return original_engine(s)

    placement.load_base, loop.make_engine = load_base, make_engine
    code = cli.main(["train", *args])
    marks["train_hwm"] = _status("VmHWM")
    rank = int(os.environ.get("RANK", "0"))
    Path(f"{record}.rank{rank}.json").write_text(json.dumps(marks))
    return code


# -- the parent ------------------------------------------------------------------------------
def write_task(folder: Path) -> Path:
    """A classification task whose rows are all longer than data.max_length (cut to it: equal lengths)."""
    import random

    rng = random.Random(0)
    rows = folder / "rows.jsonl"
    with rows.open("w") as f:
        for _ in range(64):
            f.write(
                json.dumps(
                    {"text": " ".join(rng.choice(WORDS) for _ in range(300)), "label": rng.choice(["yes", "no"])}
                )
                + "\n"
            )
    cfg = folder / "task.yaml"
    cfg.write_text(f"""model: {{name_or_path: "embedded:smollm2-135m-instruct"}}
method: {{name: {METHOD}, num_virtual_tokens: {VIRTUAL}}}
tasks:
  - name: mem
    type: classification
    train: {rows}
    eval: {rows}
    template: "{{text}}\\nAnswer:{{answer}}"
    verbalizer: {{"yes": [" yes"], "no": [" no"]}}
data: {{max_length: {MAX_LENGTH}, truncation: right, max_eval_examples: 4, eval_batch_size: 4}}
train: {{log_every: 1, progress_bar: false, tensorboard: false, warmup_steps: 0, eval_baseline: false}}
""")
    return cfg


def cell_overrides(cell: dict) -> list[str]:
    dtype, quant = BASES[cell["base"]]
    o = [
        f"model.dtype={dtype}",
        f"model.gradient_checkpointing={str(cell['ckpt']).lower()}",
        f"data.batch_size={cell['batch']}",
        f"train.steps={cell.get('steps', STEPS)}",
        f"data.max_length={cell.get('max_length', MAX_LENGTH)}",
    ]
    if quant != "none":
        o.append(f"model.quant={quant}")
        if cell.get("zero") == 3 and quant in ("nf4", "fp4"):
            o.append("model.quant_storage=float32")
    if cell.get("zero") is not None:
        o += ["distributed.engine=deepspeed", f"distributed.zero_stage={cell['zero']}"]
    if cell.get("bounded"):  # DeepSpeed keeps at most 1M gathered parameters live (default 1e9: all of them)
        o.append(
            "distributed.zero_extra={stage3_max_live_parameters: 1000000, stage3_max_reuse_distance: 0, "
            "stage3_prefetch_bucket_size: 1000000}"
        )
    return o


def run_cell(cell: dict, task: Path, work: Path, release: bool = False) -> dict:
    from ptune_dist.runtime import allocator_env

    name = cell["name"]
    out = work / name
    record = work / f"{name}.mem"
    args = [str(task), f"output_dir={out}", *cell_overrides(cell)]
    ranks = cell.get("ranks", 1)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env = {
        **(allocator_env(env) or env),
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks)),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    me = [str(Path(__file__).resolve()), "--child", str(record), *(["--release-layers"] if release else []), "--"]
    cmd = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *me, *args]
        if ranks > 1
        else [sys.executable, *me, *args]
    )
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    result = {**cell, "seconds": time.time() - t0}
    if proc.returncode:
        lines = [x for x in (proc.stderr + proc.stdout).splitlines() if x.strip()]
        errors = [x for x in lines if "Error" in x or "error:" in x]
        result["error"] = (errors[-1] if errors else lines[-1] if lines else f"exit {proc.returncode}")[:300]
        return result
    marks = [json.loads(Path(f"{record}.rank{r}.json").read_text()) for r in range(ranks)]
    result["measured"] = max(m["train_hwm"] - m["baseline"] for m in marks)
    result["weights_measured"] = max(m["after_load"] - m["baseline"] for m in marks)
    result["load_peak"] = max(m["load_hwm"] - m["baseline"] for m in marks)
    result["baseline"] = max(m["baseline"] for m in marks)
    from ptune_dist.train.metrics_file import read_metrics  # one history, resumes counted once

    records = read_metrics(out / "metrics.jsonl")
    result["held"] = max(next(x for x in records if x.get("event") == "parameters")["bytes_per_rank"])
    return result


def predict(cell: dict, runtime: float) -> dict:
    from ptune_dist.config import load_config
    from ptune_dist.plan import predict as predict_memory
    from ptune_dist.plan import resolve_arch, setup_from_config

    cfg = load_config([cell["task"]], cell_overrides(cell))
    arch = resolve_arch(cfg.model.name_or_path)
    from dataclasses import replace

    setup = replace(setup_from_config(cfg, arch, {}), world=cell.get("ranks", 1))
    return predict_memory(arch, setup, runtime=runtime).as_dict()


def grid(quant: bool) -> list[dict]:
    """One process: every base x checkpointing x batch. Two ranks (ZeRO-0 and ZeRO-3): fp32 at both
    batches, bf16 and nf4 (ZeRO-3, the QLoRA recipe) at batch 4."""
    cells = []
    for base in ["fp32", "bf16"] + (["int8", "nf4"] if quant else []):
        for ckpt in (False, True):
            for batch in (4, 16):
                cells.append(dict(base=base, ckpt=ckpt, batch=batch, ranks=1))
    for zero in (0, 3):
        for batch in (4, 16):
            cells.append(dict(base="fp32", ckpt=False, batch=batch, ranks=2, zero=zero))
    cells.append(dict(base="bf16", ckpt=False, batch=4, ranks=2, zero=3))
    if quant:
        cells.append(dict(base="nf4", ckpt=False, batch=4, ranks=2, zero=3))
    cells += [dict(base=b, ckpt=False, batch=4, ranks=2, zero=3, bounded=True) for b in ("fp32", "bf16")]
    for c in cells:
        c["name"] = (
            f"{c['base']}-b{c['batch']}-ckpt{int(c['ckpt'])}-r{c['ranks']}"
            + (f"-z{c['zero']}" if "zero" in c else "")
            + ("-live1m" if c.get("bounded") else "")
        )
    return cells


MODELS = ["llama-3.2-1b", "llama-2-7b", "llama-2-13b", "llama-2-70b"]
TABLE_METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2", "full_finetune"]
HARDWARE = [("1 x 24 GB", 1, "24GB"), ("1 x 80 GB", 1, "80GB"), ("8 x 80 GB", 8, "80GB")]
TABLE_RUN = ["data.batch_size=8", "data.max_length=512", "method.num_virtual_tokens=20"]


def best_setup(args: list[str]) -> str:
    from ptune_dist.plan import base_name, parse_request, plan, select
    from ptune_dist.plan import engine_label as _engine_name

    req = parse_request(args)
    rows = plan(req)
    shown = select(rows)
    if not shown:
        return f"no fit (min {min(r.peak for r in rows) / GiB:.0f} GB)"
    r = shown[0]
    s = r.setup
    return (
        f"{base_name(s)}, {'ckpt, ' if s.gradient_checkpointing else ''}{s.batch_size}x{s.grad_accum}, "
        f"{_engine_name(s, req.hardware.world)}: **{r.peak / GiB:.1f}**"
    )


def models_table() -> list[str]:
    """The planner's first choice for big Llama models x methods x hardware (no runs)."""
    from ptune_dist.methods import METHODS
    from ptune_dist.plan import BUILTIN, Setup, trainable_params

    head = "| model | method | trainable | " + " | ".join(h for h, _, _ in HARDWARE) + " |"
    out = [head, "|" + "---|" * (3 + len(HARDWARE))]
    for m in MODELS:
        arch = BUILTIN[m]
        for method in TABLE_METHODS:
            n = trainable_params(arch, Setup(method=METHODS[method].section(num_virtual_tokens=20)))
            cells = [
                best_setup(
                    [f"model={m}", f"method={method}", f"hardware.gpus={g}", f"hardware.gpu_mem={mem}", *TABLE_RUN]
                )
                for _, g, mem in HARDWARE
            ]
            out.append(
                f"| {m} ({arch.total_params / 1e9:.1f}B) | {method} | {n / 1e6:,.1f}M | " + " | ".join(cells) + " |"
            )
    return out


def published_table() -> list[str]:
    """The planner on the setups of three published low-memory results."""
    cases = [
        (
            "QLoRA (Dettmers et al. 2023): LLaMA-65B fine-tuned on one 48 GB GPU (LoRA on every linear, "
            "NF4 + double quantisation, bf16 compute, gradient checkpointing, paged AdamW)",
            [
                "model=llama-65b",
                "method=prompt_tuning",
                "hardware.gpus=1",
                "hardware.gpu_mem=48GB",
                "model.dtype=bfloat16",
                "model.quant=nf4",
                "model.quant_double=true",
                "model.gradient_checkpointing=true",
                "data.batch_size=1",
                "data.max_length=512",
                "distributed.engine=torch",
            ],
            "< 48 GB",
        ),
        (
            "FSDP + QLoRA (Answer.AI 2024): Llama-2-70B on two 24 GB GPUs (4-bit base sharded by FSDP, "
            "gradient checkpointing)",
            [
                "model=llama-2-70b",
                "method=prompt_tuning",
                "hardware.gpus=2",
                "hardware.gpu_mem=24GB",
                "model.dtype=bfloat16",
                "model.quant=nf4",
                "model.gradient_checkpointing=true",
                "data.batch_size=1",
                "data.max_length=512",
                "distributed.engine=deepspeed",
                "distributed.zero_stage=3",
                "model.quant_storage=bfloat16",
            ],
            "< 24 GB per GPU",
        ),
        (
            "P-tuning v2 on ChatGLM-6B with an INT4 base (THUDM ChatGLM-6B ptuning/: 128 prefix tokens, batch 1, "
            "64 + 64 tokens, fp16; bf16 here, same bytes)",
            [
                "model=chatglm-6b",
                "method=p_tuning_v2",
                "method.num_virtual_tokens=128",
                "hardware.gpus=1",
                "hardware.gpu_mem=24GB",
                "model.dtype=bfloat16",
                "model.quant=nf4",
                "data.batch_size=1",
                "data.max_length=256",
                "tasks.0.type=generation",
                "plan.label_tokens=64",
                "model.gradient_checkpointing=false",
                "distributed.engine=torch",
            ],
            "6.7 GB",
        ),
    ]
    from ptune_dist.plan import parse_request, plan

    out = [
        "| published result | published memory | planner's setup | planner: peak per GPU GB (weights + gathered + "
        "prompt/optimizer + activations + logits + workspace - overlap + runtime; the overlap: the smaller of the "
        "logits and a layer's backward, never live at once) |",
        "|---|---|---|---|",
    ]
    for text, args, published in cases:
        req = parse_request(args)
        r = min(plan(req), key=lambda r: r.peak)
        d = r.breakdown
        parts = " + ".join(
            f"{x / GiB:.2f}"
            for x in (
                d.frozen_weights,
                d.zero3_gathered,
                d.trainable + d.optimizer,
                d.activations,
                d.logits,
                d.workspace,
            )
        )
        parts += f" - {d.overlap / GiB:.2f} + {d.runtime / GiB:.2f}"
        out.append(
            f"| {text} | {published} | `{' '.join(a for a in args if not a.startswith('hardware'))}` | "
            f"**{r.peak / GiB:.1f}** = {parts} |"
        )
    return out


def quant_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def table(rows: list[dict], runtime: float) -> list[str]:
    out = [
        "| cell | base | ckpt | batch/rank | ranks | engine | predicted tensors GB | + runtime = predicted GB "
        "| measured GB | error | RSS after load GB (parameters held GB) | measured, free pages released after "
        "every layer GB (error) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        engine = "plain" if "zero" not in r else f"ZeRO-{r['zero']}" + (" (1M live)" if r.get("bounded") else "")
        head = (
            f"| {r['name']} | {r['base']} | {'on' if r['ckpt'] else 'off'} | {r['batch']} | {r['ranks']} | {engine} | "
        )
        p = r["pred"]
        if "error" in r:
            out.append(
                head + f"{p['tensors'] / GiB:.3f} | {p['total'] / GiB:.3f} | did not run: "
                f"{r['error'].replace('|', '/')} | | | |"
            )
            continue
        m, released = r["measured"], r.get("measured_released")
        diag = f"{released / GiB:.3f} ({(p['total'] - released) / released:+.1%})" if released else ""
        out.append(
            head + f"{p['tensors'] / GiB:.3f} | {p['total'] / GiB:.3f} | {m / GiB:.3f} | "
            f"{(p['total'] - m) / m:+.1%} | {r['weights_measured'] / GiB:.3f} ({r.get('held', 0) / GiB:.3f}) | "
            f"{diag} |"
        )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", default="")
    p.add_argument("--out", default="")
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--cells", default="", help="comma-separated cell names (default: the whole grid)")
    p.add_argument("--no-quant", action="store_true", help="leave out the int8/nf4 cells")
    p.add_argument("--keep", default="", help="keep the runs in this folder")
    p.add_argument(
        "--release-layers",
        action="store_true",
        help="run each cell a second time handing the "
        "allocator's free pages back after every layer (a diagnostic column)",
    )
    p.add_argument(
        "--replay",
        default="",
        help="comma-separated .json files this script wrote (--out X.md writes "
        "X.json; --keep DIR writes DIR/progress.json): predict again, run nothing; a cell in several "
        "files: the last file's",
    )
    p.add_argument("--models-table", action="store_true", help="print the planner's big-model tables (runs nothing)")
    args, rest = p.parse_known_args()
    if args.child:
        return child([a for a in rest if a != "--"], args.child, args.release_layers)
    import ptune_dist  # noqa: F401  (the oneDNN guard before torch)

    if args.models_table:
        print("\n".join(models_table() + [""] + published_table()))
        return 0

    quant = quant_available() and not args.no_quant
    t_all = time.time()
    if args.replay:
        # several files (runs of parts of the grid): the first one's calibration, everyone's rows
        files = [json.loads(Path(f).read_text()) for f in args.replay.split(",")]
        calib, minutes = files[0]["calibration"], sum(f.get("minutes", 0.0) for f in files)
        names = [c["name"] for c in grid(True)]
        latest = {r["name"]: r for f in files for r in f["rows"]}  # a cell measured again: the later file's
        rows = sorted(latest.values(), key=lambda r: names.index(r["name"]) if r["name"] in names else len(names))
        others = [f["calibration"]["measured"] for f in files[1:]]
        if others:
            print(
                f"calibration cells of the other files measured {[round(m / GiB, 3) for m in others]} GB "
                f"(not used; the first file's is)"
            )
        task = Path(calib["task"])
        if not task.is_file():  # the temporary folder is gone: write the same task again
            task = write_task(Path(tempfile.mkdtemp()))
            calib["task"] = str(task)
            for r in rows:
                r["task"] = str(task)
    else:
        cells = grid(quant)
        if args.cells:
            wanted = args.cells.split(",")
            cells = [c for c in cells if c["name"] in wanted]
        work = Path(args.keep or tempfile.mkdtemp())
        work.mkdir(parents=True, exist_ok=True)
        task = write_task(work)
        calib = dict(name="calibration", base="fp32", ckpt=False, batch=1, ranks=1, max_length=32, steps=args.steps)
        calib = run_cell(calib, task, work)
        if "error" in calib:
            raise SystemExit(f"calibration cell failed: {calib['error']}")
        calib["task"] = str(task)
        rows = []
        for cell in cells:
            cell["steps"], cell["task"] = args.steps, str(task)
            rows.append(run_cell(cell, task, work))
            if args.release_layers and "error" not in rows[-1]:
                again = run_cell({**cell, "name": cell["name"] + "-released"}, task, work, release=True)
                rows[-1]["measured_released"] = again.get("measured")
            r = rows[-1]
            (work / "progress.json").write_text(json.dumps({"calibration": calib, "rows": rows}, default=str))
            print(
                f"{cell['name']:28s} "
                + (
                    f"failed: {r['error']}"
                    if "error" in r
                    else f"measured {r['measured'] / GiB:.3f} GB ({r['seconds']:.0f} s)"
                ),
                flush=True,
            )
        minutes = (time.time() - t_all) / 60
    calib_pred = predict(calib, 0.0)
    runtime = calib["measured"] - calib_pred["tensors"]
    print(
        f"calibration: measured {calib['measured'] / GiB:.3f} GB, predicted tensors "
        f"{calib_pred['tensors'] / GiB:.3f} GB -> runtime overhead {runtime / GiB:.3f} GB",
        flush=True,
    )
    for r in rows:
        r["pred"] = predict(r, runtime)
        if "held" not in r and "task" in r:
            metrics = Path(r["task"]).parent / r["name"] / "metrics.jsonl"
            if metrics.is_file():
                from ptune_dist.train.metrics_file import read_metrics  # one history, resumes counted once

                records = read_metrics(metrics)
                r["held"] = max(next(x for x in records if x.get("event") == "parameters")["bytes_per_rank"])
    lines = [
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}, {platform.processor() or 'cpu'}), "
        f"Python {platform.python_version()}, torch {__import__('torch').__version__}, "
        f"DeepSpeed {__import__('deepspeed').__version__}"
        + (f", bitsandbytes {__import__('bitsandbytes').__version__}" if quant else "")
        + f"; allocator {os.path.basename(os.environ.get('_PTUNE_ALLOCATOR_SET', '') or ALLOCATOR_DEFAULT)}. "
        f"Grid run time {minutes:.1f} min.",
        "",
        f"Runtime overhead (calibrated once, cell `calibration`: fp32, batch 1 x 32 tokens, 1 process): "
        f"measured {calib['measured'] / GiB:.3f} GB - predicted tensors {calib_pred['tensors'] / GiB:.3f} GB "
        f"= **{runtime / GiB:.3f} GB** ({runtime / 2**20:.0f} MiB), added to every prediction below.",
        "",
        *table(rows, runtime),
    ]
    ok = [r for r in rows if "error" not in r]
    outside = [r["name"] for r in ok if abs(r["pred"]["total"] - r["measured"]) > 0.15 * r["measured"]]
    worst = max(ok, key=lambda r: abs(r["pred"]["total"] - r["measured"]) / r["measured"]) if ok else None
    if worst:
        lines += [
            "",
            f"Largest error: {worst['name']} "
            f"{(worst['pred']['total'] - worst['measured']) / worst['measured']:+.1%}; "
            f"cells outside 15%: {outside or 'none'}",
        ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.out:  # the measurements (merged, when replaying several files): --replay this file redoes the table
        (Path(args.out).with_suffix(".json")).write_text(
            json.dumps(
                {"runtime": runtime, "calibration": calib, "rows": rows, "minutes": minutes}, indent=1, default=str
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
