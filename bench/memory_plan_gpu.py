"""The memory planner (`ptune plan`) against CUDA's peak allocated memory of `ptune train`, on one GPU.

    python bench/memory_plan_gpu.py [--out docs/plan_measured_gpu.md] [--json X.json] [--budget-s 90]
                                    [--base-dir DIR] [--cells NAME,...] [--steps 2]
    python bench/memory_plan_gpu.py --tiny --out /tmp/x.md   # the same code on the CPU: 2-layer Llama, no measuring

The GPU counterpart of bench/memory_plan.py (which measures RSS on a CPU). Base: a random-init Llama of
Llama-3.2-1B's shape (16 layers, hidden 2048, 32 query / 8 KV heads, MLP 8192, vocab 128256, tied embeddings:
the vocabulary makes the LM-head and logits terms matter), made once on the GPU and saved with
save_pretrained (bf16 safetensors + a small word-level tokenizer) into --base-dir, then loaded by ptune's own
`load_base` onto the GPU: bf16, and nf4 with bf16 compute (bitsandbytes quantises while loading). One process
runs every cell; the base of each kind is loaded once and handed to `build_session(cfg, base=...)` (gradient
checkpointing is switched on for the later cells of a base with the call `load_base` makes).

The grid: base (bf16, nf4) x gradient checkpointing (off, on) x method (prompt tuning, P-tuning v2; 20
virtual tokens) x batch (4, 16) rows of 512 tokens (virtual tokens included), generation (the last 128 tokens
of each row labelled: the planner's default label_tokens = max_length / 4, so the LM head runs on 128 rows
per example); then, if the budget allows, classification cells (LM head on the answer position only) at
batch 16. Every row is longer than data.max_length and cut to it (equal lengths, no padding).

Each cell is `ptune_dist.train.loop.train(cfg)` itself (train.steps=2 by default, the final evaluation of 4
rows, the checkpoint), with train.device=cuda. torch.cuda.reset_peak_memory_stats is called right before
it, so the peak includes the base's weights (already loaded) and everything the run allocates: the prompt,
the optimizer, the steps, the evaluation. Measured = `peak_gpu_bytes_per_rank` of the run's
{"event": "memory"} record in metrics.jsonl (torch.cuda.max_memory_allocated). "left over" is what was
allocated before the cell above the base right after loading (a leak from the previous cell, or the library
workspaces the first step allocates and keeps); it is inside the measured peak, not subtracted.

Predicted = `ptune_dist.plan.memory.predict` on the Setup that `ptune plan` builds from the same config
(`setup_from_config`, the Arch read from the saved config.json), with runtime 0: max_memory_allocated counts
tensors only, so the planner's non-tensor runtime term (GPU_RUNTIME, 1 GiB assumed) is compared separately,
against the device's peak (max_memory_reserved + what lies outside the allocator: CUDA context, kernels).

--budget-s: the whole script's wall time (making and loading the bases included); a cell is not started when
its estimated time would exceed it (classification cells first give way to the remaining generation cells);
skipped cells are listed. The report and its JSON are rewritten after every cell, so a run cut short keeps
what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import Budget, machine_info  # noqa: E402  (bench/ on sys.path)
from train_step_gpu import free_memory, save_random_llama  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GiB = 2**30
WITHIN = 0.15
SHAPES = {
    "1b": dict(
        label="Llama-3.2-1B shape (16 layers, hidden 2048, 32/8 heads, MLP 8192, vocab 128256, tied)",
        batches=(4, 16),
        seq=512,
        virtual=20,
        config=dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=2048,
            tie_word_embeddings=True,
        ),
    ),
    "tiny": dict(
        label="tiny Llama (2 layers, hidden 64, 4/2 heads, MLP 128, vocab 1000, tied)",
        batches=(2,),
        seq=32,
        virtual=8,
        config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        ),
    ),
}
# name -> (model.dtype, model.quant); 4-bit computes in model.dtype (model.quant_compute_dtype set to it)
BASES_GPU = {"bf16": ("bfloat16", "none"), "nf4": ("bfloat16", "nf4")}
BASES_CPU = {"fp32": ("float32", "none"), "nf4": ("float32", "nf4")}
METHODS = {"prompt_tuning": "pt", "p_tuning_v2": "v2"}
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = (
    "the a of to and in is it for on that with as was by at be this from or have an not are but which one "
    "all were when there can more about time"
).split()
FILE_WORDS = ["Answer:", "yes", "no"]


# -- the base: a random-init Llama folder with a word-level tokenizer ---------------------------------------
def make_tokenizer():
    """Whitespace-split words, one id each (no merges): rows have exactly as many tokens as words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS + FILE_WORDS)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    t.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces: decode + encode gives the same ids
    return PreTrainedTokenizerFast(
        tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def make_base(shape: str, folder: Path, device, dtype: str) -> float:
    """The random-init base as a HF folder (config.json + safetensors + tokenizer); a no-op when READY exists.
    Returns the seconds it took."""
    tok = make_tokenizer()
    config = {
        **SHAPES[shape]["config"],
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
    }
    made = save_random_llama(folder, config, SHAPES[shape]["label"], device, dtype, tokenizer=tok)
    free_memory()
    return made


def plan_folder(base_dir, shape: str, dtype: str) -> Path:
    """Where the base of `shape` lives in --base-dir (bench/gpu_bases.py makes it there beforehand)."""
    return Path(base_dir) / f"llama-{shape}-plan-{dtype}"


# -- the data -----------------------------------------------------------------------------------------------
def label_tokens(seq: int) -> int:
    """Labelled tokens per generation row (target words + EOS): the planner's default, max_length / 4."""
    return max(2, seq // 4)


def write_tasks(folder: Path, seq: int, rows: int = 64) -> dict:
    """{task type: config .yaml}: rows whose input is longer than any budget (cut to it: equal lengths)."""
    rng = random.Random(0)
    words = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    gen, cls = folder / "gen.jsonl", folder / "cls.jsonl"
    target = label_tokens(seq) - 1  # + EOS
    gen.write_text("".join(json.dumps({"text": words(2 * seq), "output": words(target)}) + "\n" for _ in range(rows)))
    cls.write_text(
        "".join(json.dumps({"text": words(2 * seq), "label": rng.choice(["yes", "no"])}) + "\n" for _ in range(rows))
    )
    common = (
        "data: {truncation: right, max_eval_examples: 4, eval_batch_size: 4}\n"
        "train: {log_every: 1, progress_bar: false, tensorboard: false, warmup_steps: 0, eval_baseline: false}\n"
    )
    out = {"generation": folder / "gen.yaml", "classification": folder / "cls.yaml"}
    out["generation"].write_text(f"""tasks:
  - name: mem
    type: generation
    train: {gen}
    eval: {gen}
    template: "{{text}}"
{common}""")
    out["classification"].write_text(f"""tasks:
  - name: mem
    type: classification
    train: {cls}
    eval: {cls}
    template: "{{text}} Answer:{{answer}}"
    verbalizer: {{"yes": [" yes"], "no": [" no"]}}
{common}""")
    return out


# -- the grid ---------------------------------------------------------------------------------------------
def grid(bases: dict, batches, classification: bool = True) -> list[dict]:
    """Per base (loaded once) and checkpointing (off, then on: it is switched on, never off): the generation
    cells, then one classification cell (prompt tuning, the largest batch), marked `extra`."""
    cells = []
    for base in bases:
        for ckpt in (False, True):
            for method in METHODS:
                for batch in batches:
                    cells.append(dict(base=base, ckpt=ckpt, method=method, batch=batch, task="generation"))
            if classification:
                cells.append(
                    dict(
                        base=base,
                        ckpt=ckpt,
                        method="prompt_tuning",
                        batch=max(batches),
                        task="classification",
                        extra=True,
                    )
                )
    for c in cells:
        c["name"] = f"{c['base']}-{METHODS[c['method']]}-b{c['batch']}-ckpt{int(c['ckpt'])}" + (
            "-cls" if c["task"] == "classification" else ""
        )
    return cells


def base_overrides(folder: Path, bases: dict, base: str) -> list[str]:
    dtype, quant = bases[base]
    o = [f"model.name_or_path={folder}", f"model.dtype={dtype}"]
    if quant != "none":
        o += [f"model.quant={quant}", f"model.quant_compute_dtype={dtype}"]
    return o


def cell_overrides(cell: dict, folder: Path, bases: dict, shape: dict, device: str, steps: int, out: Path) -> list[str]:
    return [
        *base_overrides(folder, bases, cell["base"]),
        f"model.gradient_checkpointing={str(cell['ckpt']).lower()}",
        f"method.name={cell['method']}",
        f"method.num_virtual_tokens={shape['virtual']}",
        f"data.batch_size={cell['batch']}",
        f"data.max_length={shape['seq']}",
        f"train.steps={steps}",
        f"train.device={device}",
        f"output_dir={out}",
    ]


# -- measuring ------------------------------------------------------------------------------------------
def allocated(device) -> int | None:
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def load_shared_base(folder: Path, bases: dict, base: str, task: Path, device):
    """(hf_model, info) through ptune's load_base, as build_session would load it (checkpointing off)."""
    from ptune_dist.config import load_config
    from ptune_dist.model.load import load_base

    cfg = load_config([str(task)], [*base_overrides(folder, bases, base), "model.gradient_checkpointing=false"])
    return load_base(cfg.model, trainable=False, device=device)


def predict_cell(cfg, folder: Path, task: str, seq: int) -> dict:
    from ptune_dist.plan import predict, resolve_arch, setup_from_config

    arch = resolve_arch(str(folder))
    plan = {"label_tokens": str(label_tokens(seq))} if task == "generation" else {}
    setup = setup_from_config(cfg, arch, plan)
    return {**predict(arch, setup, runtime=0.0).as_dict(), "attention_planned": setup.attention}


def run_cell(cell: dict, cfg, base, base_bytes, device) -> dict:
    """`loop.train(cfg)` with the shared base handed to build_session; the peak from metrics.jsonl."""
    import torch

    import ptune_dist.train.loop as loop
    from ptune_dist.kernels import dispatch
    from ptune_dist.train import session as session_mod

    seen, kernels = {}, set()

    def build_session(cfg, splits=("train", "eval"), env=None, base_=None):
        s = session_mod.build_session(cfg, splits=splits, env=env, base=base)
        seen["lengths"] = sorted({len(ex.input_ids) for t in s.tasks for ex in t.train})
        seen["labelled"] = sorted(
            {
                sum(1 for x in (ex.labels[1:] if isinstance(ex.labels, list) else []) if x != -100)
                for t in s.tasks
                for ex in t.train
            }
        )
        seen["attention"] = s.model.attention_impl
        seen["checkpointing"] = any(getattr(m, "gradient_checkpointing", False) for m in s.model.base.modules())
        return s

    def implementation(name):  # the attention kernels the run called (model.attention=auto picks per call)
        kernels.add(name)
        return original_impl(name)

    def make_engine(s):
        seen["allocated_at_engine"] = allocated(s.device)  # the base and the prompt, before the optimizer
        return original_engine(s)

    free_memory()
    before = allocated(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    original_build, original_engine, original_impl = loop.build_session, loop.make_engine, dispatch.implementation
    loop.build_session, loop.make_engine, dispatch.implementation = build_session, make_engine, implementation
    t0 = time.perf_counter()
    try:
        results = loop.train(cfg)
    finally:
        loop.build_session, loop.make_engine, dispatch.implementation = original_build, original_engine, original_impl
    out = {"seconds": time.perf_counter() - t0, **seen, "kernels": sorted(kernels)}
    from ptune_dist.train.metrics_file import read_metrics  # one history, resumes counted once

    records = read_metrics(Path(cfg.output_dir) / "metrics.jsonl")
    memory = next(r for r in records if r.get("event") == "memory")
    losses = [r["loss"] for r in records if "loss" in r and "split" not in r]
    out.update(
        memory_record=memory,
        losses=losses,
        ran_on=results.get("device", {}).get("device"),
        held=next(r for r in records if r.get("event") == "parameters")["bytes_per_rank"][0],
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["measured"] = memory["peak_gpu_bytes_per_rank"][0]
        out["peak_direct"] = torch.cuda.max_memory_allocated(device)  # after the checkpoint too
        out["peak_reserved"] = torch.cuda.max_memory_reserved(device)
        free, total = torch.cuda.mem_get_info(device)
        out["outside_allocator"] = max(0, total - free - torch.cuda.memory_reserved(device))
        out["left_over"] = before - base_bytes
    return out


# -- the report ----------------------------------------------------------------------------------------------
def base_names(bases: dict) -> str:
    return ", ".join(
        f"{k}: {dtype}" + (f" + {quant} ({dtype} compute)" if quant != "none" else "")
        for k, (dtype, quant) in bases.items()
    )


def gb(x) -> str:
    return "-" if x is None else f"{x / GiB:.3f}"


def report(state: dict) -> str:
    info, rows, shape = state["machine"], state["rows"], SHAPES[state["shape"]]
    from ptune_dist.plan import GPU_RUNTIME

    where = (
        f"{info['gpu']} ({info['gpu_memory_bytes'] / GiB:.0f} GiB, sm {info['capability']}), CUDA {info['cuda']}"
        if info.get("gpu")
        else f"CPU only ({info['cpus']} cores): nothing is measured, the code path is"
    )
    lines = [
        f"Machine: {where}; torch {info['torch']}, transformers {info['transformers']}, bitsandbytes "
        f"{info['bitsandbytes']}, triton {info['triton']}, Python {info['python']}; {info['date']}. "
        f"Run time {state['elapsed_s']:.0f} s of a {state['budget_s']:.0f} s budget.",
        "",
        f"Base: {shape['label']}, random init, loaded by ptune's load_base ({base_names(state['bases'])}); "
        f"{shape['virtual']} virtual tokens, rows of {shape['seq']} tokens (virtual tokens included), "
        f"generation: {label_tokens(shape['seq'])} labelled tokens per row; {state['steps']} steps per cell. "
        f"Base loads (s): {', '.join(f'{k} {v:.1f}' for k, v in state['loads'].items()) or '-'}; "
        f"base made in {state['made_s']:.1f} s.",
        "",
        "Predicted = the planner's tensors (runtime term 0); measured = torch.cuda.max_memory_allocated of the "
        "run (peak_gpu_bytes_per_rank in metrics.jsonl). Ratio = predicted / measured. Device peak = "
        f"max_memory_reserved + memory outside the allocator (CUDA context, kernels), against the planner's total "
        f"with its GPU runtime term ({GPU_RUNTIME / GiB:.2f} GiB).",
        "",
        "| cell | base | ckpt | method | task | batch x tokens | predicted GB | measured GB | ratio | within 15%? "
        "| planner: weights + prompt/opt + activations + logits + workspace | allocated at engine set-up GB "
        "(planner: weights + prompt) | left over GB | device peak GB (planner + runtime) | attention kernel | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["pred"]
        head = (
            f"| {r['name']} | {r['base']} | {'on' if r['ckpt'] else 'off'} | {r['method']} | {r['task']} | "
            f"{r['batch']} x {shape['seq']} | {gb(p['tensors'])} | "
        )
        parts = (
            " + ".join(f"{p[k] / GiB:.2f}" for k in ("frozen_weights",))
            + f" + {(p['trainable'] + p['optimizer']) / GiB:.3f} + "
            + " + ".join(f"{p[k] / GiB:.2f}" for k in ("activations", "logits", "workspace"))
        )
        if "error" in r:
            lines.append(head + f"did not run: {r['error'].replace('|', '/')[:200]} | | | {parts} | | | | | |")
            continue
        m = r.get("measured")
        if m is None:
            measured, ratio, ok, device = "n/a (CPU)", "-", "-", "-"
        else:
            measured, ratio = gb(m), f"{p['tensors'] / m:.2f}"
            ok = "yes" if abs(p["tensors"] - m) <= WITHIN * m else "**no**"
            device = (
                f"{(r['peak_reserved'] + r['outside_allocator']) / GiB:.2f} ({(p['tensors'] + GPU_RUNTIME) / GiB:.2f})"
            )
        start = f"{gb(r.get('allocated_at_engine'))} ({gb(p['frozen_weights'] + p['trainable'] / 2)})"
        lines.append(
            head + f"{measured} | {ratio} | {ok} | {parts} | {start} | {gb(r.get('left_over'))} | {device} | "
            f"{'+'.join(r.get('kernels', [])) or '-'} | {r['seconds']:.1f} |"
        )
    measured = [r for r in rows if r.get("measured")]
    if measured:
        off = [r["name"] for r in measured if abs(r["pred"]["tensors"] - r["measured"]) > WITHIN * r["measured"]]
        worst = max(measured, key=lambda r: abs(r["pred"]["tensors"] / r["measured"] - 1))
        lines += [
            "",
            f"Within 15%: {len(measured) - len(off)} of {len(measured)} measured cells; largest error "
            f"{worst['name']} {worst['pred']['tensors'] / worst['measured'] - 1:+.1%}; outside: {off or 'none'}.",
        ]
    failed = [r["name"] for r in rows if "error" in r]
    if failed:
        lines += ["", f"Failed cells: {failed}."]
    if state["skipped"]:
        lines += ["", f"Skipped (budget): {[s['name'] for s in state['skipped']]}."]
    return "\n".join(lines)


def write(state: dict, out: str, raw: str) -> None:
    text = report(state)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    if raw:
        Path(raw).parent.mkdir(parents=True, exist_ok=True)
        Path(raw).write_text(json.dumps(state, indent=1, default=str))
    return text


# -- the run --------------------------------------------------------------------------------------------------
class GridBudget(Budget):
    """harness.Budget (the whole script's --budget-s), with per-cell and per-load estimates from the cells run so
    far."""

    def __init__(self, seconds: float, reserve: float = 3.0):  # 0 s: a spent budget, every cell skipped
        super().__init__(seconds, reserve)
        self.cells: list[tuple[dict, float]] = []
        self.load_s: list[float] = []

    def cell_estimate(self, cell: dict) -> float:
        """The slowest finished cell of the same batch (the first cell pays for kernel compilation: left out
        once others ran), else of any batch, else 15 s."""
        done = (
            [s for c, s in self.cells[1:] or self.cells if c["batch"] == cell["batch"]]
            or [s for _, s in self.cells]
            or [15.0]
        )
        return max(done) * 1.15

    def load_estimate(self) -> float:
        return max(self.load_s, default=20.0) * 1.2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="", help="the markdown report (rewritten after every cell)")
    p.add_argument("--json", default="", help="the measurements (default: --out with .json)")
    p.add_argument("--budget-s", type=float, default=90.0, help="wall time of the whole script, seconds")
    p.add_argument("--base-dir", default="", help="where the random-init base folder is made (kept; reused when READY)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--cells", default="", help="comma-separated cell names (default: the whole grid)")
    p.add_argument("--no-classification", action="store_true", help="leave out the classification cells")
    p.add_argument("--device", default="", help="cuda (default) or cpu; --tiny: cpu")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="CPU check of this code: 2-layer Llama, batch 2 x 32, fp32 "
        "and nf4 (fp32 compute); the measured column says n/a",
    )
    args = p.parse_args(argv)
    budget = GridBudget(args.budget_s)

    import ptune_dist  # noqa: F401  (its import-time guards before torch)
    from ptune_dist.config import load_config
    from ptune_dist.device import choose
    from ptune_dist.model.load import enable_checkpointing

    shape_name = "tiny" if args.tiny else "1b"
    shape = SHAPES[shape_name]
    device = choose(args.device or ("cpu" if args.tiny else "cuda"))
    bases = dict(BASES_CPU if device.type == "cpu" else BASES_GPU)
    if importlib_missing("bitsandbytes"):
        bases = {k: v for k, v in bases.items() if v[1] == "none"}
    cells = grid(bases, shape["batches"], classification=not args.no_classification)
    if args.cells:
        wanted = args.cells.split(",")
        unknown = sorted(set(wanted) - {c["name"] for c in cells})
        if unknown:
            p.error(f"--cells: unknown {unknown}; the grid: {[c['name'] for c in cells]}")
        cells = [c for c in cells if c["name"] in wanted]
    raw = args.json or (str(Path(args.out).with_suffix(".json")) if args.out else "")
    work = Path(tempfile.mkdtemp(prefix="ptune-plan-gpu-"))
    base_dir = Path(args.base_dir) if args.base_dir else work
    base_dir.mkdir(parents=True, exist_ok=True)
    file_dtype = "float32" if device.type == "cpu" else "bfloat16"
    folder = plan_folder(base_dir, shape_name, file_dtype)
    state = {
        "machine": machine_info(device),
        "shape": shape_name,
        "steps": args.steps,
        "budget_s": args.budget_s,
        "bases": bases,
        "folder": str(folder),
        "loads": {},
        "made_s": 0.0,
        "rows": [],
        "skipped": [],
        "elapsed_s": 0.0,
    }
    try:
        state["made_s"] = make_base(shape_name, folder, device, file_dtype)
        tasks = write_tasks(work, shape["seq"])
        print(
            f"memory_plan_gpu: {state['machine'].get('gpu') or 'CPU'}; base {folder} "
            f"(made in {state['made_s']:.1f} s); {len(cells)} cells",
            flush=True,
        )
        for base_name in bases:
            todo = [c for c in cells if c["base"] == base_name]
            if not todo:
                continue
            if not budget.fits(budget.load_estimate() + budget.cell_estimate(todo[0])):
                state["skipped"] += [{**c, "why": "budget"} for c in todo]
                continue
            t0 = time.perf_counter()
            free_memory()
            base = load_shared_base(folder, bases, base_name, tasks["generation"], device)
            free_memory()
            base_bytes = allocated(device)
            state["loads"][base_name] = time.perf_counter() - t0
            budget.load_s.append(state["loads"][base_name])
            print(
                f"  base {base_name}: loaded in {state['loads'][base_name]:.1f} s, {gb(base_bytes)} GB allocated",
                flush=True,
            )
            checkpointing = False
            for i, cell in enumerate(todo):
                later_core = [c for c in cells[cells.index(cell) + 1 :] if not c.get("extra")]
                need = budget.cell_estimate(cell)
                if cell.get("extra"):  # a classification cell gives way to the generation cells still to run
                    loads = len({c["base"] for c in later_core} - {base_name})
                    need += sum(budget.cell_estimate(c) for c in later_core) + loads * budget.load_estimate()
                if not budget.fits(need):
                    state["skipped"].append({**cell, "why": "budget"})
                    continue
                if cell["ckpt"] and not checkpointing:
                    enable_checkpointing(base[0])
                    checkpointing = True
                if checkpointing and not cell["ckpt"]:
                    state["skipped"].append({**cell, "why": "the shared base has checkpointing on already"})
                    continue
                out = work / cell["name"]
                cfg = load_config(
                    [str(tasks[cell["task"]])], cell_overrides(cell, folder, bases, shape, device.type, args.steps, out)
                )
                row = {**cell, "pred": predict_cell(cfg, folder, cell["task"], shape["seq"])}
                t1 = time.perf_counter()
                try:
                    row.update(run_cell(cell, cfg, base, base_bytes, device))
                except Exception as e:  # noqa: BLE001  (an OOM or a failure: reported in its row, the grid goes on)
                    row.update(
                        error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300],
                        seconds=time.perf_counter() - t1,
                    )
                free_memory()
                budget.cells.append((cell, row["seconds"]))
                state["rows"].append(row)
                state["elapsed_s"] = budget.elapsed()
                write(state, args.out, raw)
                m = row.get("measured")
                print(
                    f"  {cell['name']:24s} "
                    + (
                        f"failed: {row['error']}"
                        if "error" in row
                        else f"predicted {gb(row['pred']['tensors'])} GB, measured "
                        f"{gb(m) if m is not None else 'n/a'} GB ({row['seconds']:.1f} s)"
                    ),
                    flush=True,
                )
            del base
            free_memory()
        done = {s["name"] for s in state["skipped"]} | {r["name"] for r in state["rows"]}
        state["skipped"] += [{**c, "why": "budget"} for c in cells if c["name"] not in done]
    finally:
        state["elapsed_s"] = budget.elapsed()
        text = write(state, args.out, raw)
        print(text, flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if state["rows"] and not any("error" in r for r in state["rows"]) else 1


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


if __name__ == "__main__":
    sys.exit(main())
