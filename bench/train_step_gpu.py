"""Training-step throughput and peak GPU memory of ptune against HF PEFT on Llama-shaped bases, one run.

    python bench/train_step_gpu.py [--shapes 1b,8b] [--methods prompt_tuning,prefix_tuning] [--steps 8]
                                   [--warmup 2] [--base-dir DIR] [--budget-s S] [--out docs/bench_train_step_gpu.md]
    python bench/train_step_gpu.py --tiny          # CPU check of the same code: 2-layer Llama, fp32, 1 step

Bases: random-init Llama-shaped models built from a LlamaConfig (no downloaded weights), bf16:
`1b` is TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 query / 4 KV heads, MLP 5632, vocab 32000),
trained at batch 8 x 1024 tokens; `8b` is Llama-3-8B's (hidden 4096, 32 layers, 32 / 8 heads, MLP 14336,
vocab 128256), batch 4 x 1024. Each base is made once on the GPU, saved with `save_pretrained` (config +
safetensors) into --base-dir, and then loaded the way each system loads a model: ptune through its
`load_base` (straight onto the GPU, its attention function, lean MLP activations), PEFT through
`from_pretrained(attn_implementation="sdpa")` and `get_peft_model`. bench/consumer_gpu.py reuses the 8b folder.
A base is made under a lock (FOLDER.lock): scripts/gpu-check.sh makes them all in the background beforehand
(bench/gpu_bases.py), and a bench that finds one being made waits for it instead of making it again.

Both systems train 20 virtual tokens with AdamW on the same token ids, labels on the last 16 tokens of each
row (train_step.py's `answer` batch); prompt tuning on both sides, and prefix tuning: PEFT's
PrefixTuningConfig (no projection) against ptune's P-tuning v2 (the same prefixes, no projection). Each
(shape, system) runs in a child process; the base is loaded once there and both methods run on it, one after
the other, everything of the first freed before the second. Per method: --warmup steps (Triton compilation,
cuBLAS heuristics, allocator growth), then --steps steps, each timed between torch.cuda.synchronize calls;
tokens/s = batch x seq / median step time. Peak memory = torch.cuda.max_memory_allocated, its counter reset
once the base is loaded (so it includes the base's weights); "above base" subtracts the base.

MFU counts 4N FLOPs per token, N the parameters that multiply (every linear layer and the LM head, not the
input embeddings): a frozen base needs the forward pass (2N) and the backward pass to the inputs (2N), no
weight gradients. Attention's own FLOPs are not counted. It is model FLOPs: ptune skips the LM head where
there are no labels, which this count does not credit. Ratios are ptune / PEFT, measured in the same run.
The report (--out) and the rows (--json) are rewritten after every child, so a run cut short keeps what it
measured.
"""

from __future__ import annotations

import argparse
import fcntl
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from harness import Budget, machine_info  # noqa: E402  (bench/ on sys.path)
from ptune_dist.nofollow import publish  # noqa: E402
from train_step import ANSWER, adamw_step, batch_tensors, peft_config, ptune_batch  # noqa: E402  (bench/ on sys.path)

GiB = 2**30
SHAPES = {
    "tiny": dict(
        label="tiny Llama (2 layers, hidden 64, 4/2 heads)",
        batch=2,
        seq=32,
        config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            max_position_embeddings=256,
        ),
    ),
    "1b": dict(
        label="TinyLlama-1.1B shape",
        batch=8,
        seq=1024,
        config=dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            vocab_size=32000,
            max_position_embeddings=2048,
        ),
    ),
    "8b": dict(
        label="Llama-3-8B shape",
        batch=4,
        seq=1024,
        config=dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
        ),
    ),
}
# ptune's name for the method PEFT runs under each bench name
PTUNE_METHOD = {"prompt_tuning": "prompt_tuning", "prefix_tuning": "p_tuning_v2"}
METHOD_LABEL = {"prompt_tuning": "prompt tuning", "prefix_tuning": "prefix tuning (ptune: P-tuning v2)"}
DATASHEET_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0}  # dense bf16, SXM parts


# -- shapes and bases ---------------------------------------------------------------------------------
def matmul_params(shape: str) -> int:
    """N of the 4N count: every block's linear weights plus the (untied) LM head."""
    c = SHAPES[shape]["config"]
    H, F, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    d = H // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    return L * (H * q + 2 * H * kv + q * H + 3 * H * F) + V * H


def base_folder(base_dir, shape: str, dtype: str) -> Path:
    return Path(base_dir) / f"llama-{shape}-{dtype}"


def make_base(shape: str, folder: Path, device: str, dtype: str) -> float:
    """A random-init Llama of `shape` saved as a HF folder (config.json + safetensors)."""
    config = {**SHAPES[shape]["config"], "tie_word_embeddings": False}
    return save_random_llama(folder, config, SHAPES[shape]["label"], device, dtype)


def save_random_llama(folder: Path, config: dict, label: str, device: str, dtype: str, tokenizer=None) -> float:
    """A random-init Llama (LlamaConfig(**config)) saved as a HF folder, with `tokenizer` when given; a no-op
    when the folder is complete (READY). Built on `device` (fast init), written to a temporary folder,
    renamed, under an exclusive lock (FOLDER.lock): a process that finds another one making it waits for that
    one and reuses its folder. Returns the seconds it took to make (0 when made by another process)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from transformers.utils import logging

    folder = Path(folder)
    if (folder / "READY").exists():
        return 0.0
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        waited = time.perf_counter()
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process making it (bench/gpu_bases.py): wait for it
        waited = time.perf_counter() - waited
        if (folder / "READY").exists():
            print(f"base {folder.name}: made by another process, waited {waited:.0f} s", file=sys.stderr, flush=True)
            return 0.0
        logging.disable_progress_bar()
        t0 = time.perf_counter()
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=getattr(torch, dtype))
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, max_shard_size="5GB")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / "READY").write_text(f"{label}, random init, {dtype}\n")
        del model
        shutil.rmtree(folder, ignore_errors=True)
        publish(tmp, folder)  # ptune_dist/nofollow.py: the one rename
        return time.perf_counter() - t0


# -- measuring in a child ----------------------------------------------------------------------------
def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def memory_now(device) -> int:
    import torch

    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


def peak_memory(device) -> dict:
    """Peak since the last reset: the allocator's on a GPU; on the CPU the process's peak RSS (since start)."""
    import torch

    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        reserved = torch.cuda.memory_reserved(device)
        return {
            "peak_bytes": torch.cuda.max_memory_allocated(device),
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(device),
            "outside_allocator_bytes": max(0, total - free - reserved),
        }  # CUDA context, modules, libraries
    return {"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def measure(build, device, warmup: int, steps: int, tokens: int, per_pass: bool = False) -> dict:
    """Build a step (closure over model, optimizer, batch), warm up, time `steps` steps; free everything.
    tokens/s = `tokens` / the median step time, or with `per_pass` (`tokens` counted over all the timed
    steps: a pass over batches of different sizes) `tokens` / the timed steps' total time."""
    import torch

    cuda = device.type == "cuda"
    free_memory()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step = None
    try:
        t0 = time.perf_counter()
        step = build()
        build_s = time.perf_counter() - t0
        for _ in range(warmup):
            step()
        times = []
        for _ in range(steps):
            if cuda:
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            loss = step()
            if cuda:
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        dt = statistics.median(times)
        out = {
            "tokens_per_s": tokens / (sum(times) if per_pass else dt),
            "step_s": dt,
            "step_s_min": min(times),
            "step_s_max": max(times),
            "timed_s": sum(times),
            "steps": steps,
            "build_s": build_s,
            "loss": float(loss.detach()),
            **peak_memory(device),
        }
    except torch.cuda.OutOfMemoryError as e:
        out = {"error": f"out of memory ({str(e).splitlines()[0][:160]})", **peak_memory(device)}
    finally:
        step = loss = None  # noqa: F841  (drop the closure: model, optimizer, activations)
        free_memory()
    return out


def child_prepare(spec: dict) -> dict:
    """What the report says about the machine (and the GPU's matmul rate); the bases of spec["shapes"] made
    when missing (seconds each). train_step_gpu makes each base in its shape's first child instead."""
    import torch

    info = machine_info(spec["device"])
    made = {}
    for shape in spec.get("shapes", []):
        made[shape] = make_base(
            shape, base_folder(spec["base_dir"], shape, spec["dtype"]), spec["device"], spec["dtype"]
        )
        free_memory()
    if spec["device"] == "cuda" and spec.get("matmul", True):
        info["matmul_tflops"] = matmul_tflops(torch)
    return {"machine": info, "made_s": made}


def ptune_base(spec: dict, common: list[str]):
    """(device, base, load seconds, bytes on the device after loading): ptune's load_config ->
    device.choose -> load_base, the frozen base every method of a child is built on."""
    import torch

    from ptune_dist.config import load_config
    from ptune_dist.device import choose
    from ptune_dist.model.load import load_base

    device = choose(spec["device"])
    torch.manual_seed(0)
    t0 = time.perf_counter()
    base = load_base(load_config([], common).model, trainable=False, device=device)
    return device, base, time.perf_counter() - t0, memory_now(device)


def ptune_rows(spec: dict, common: list[str], methods: dict, B: int, T: int, vocab: int) -> list[dict]:
    """ptune's public path: load_config -> device.choose -> load_base once -> build_model(base=...) and a
    measured step per method; `methods` maps the row's method name to ptune's method.name."""
    from ptune_dist.config import load_config
    from ptune_dist.data.task import TaskSpec
    from ptune_dist.device import to_device
    from ptune_dist.model.build import build_model

    device, base, load_s, base_bytes = ptune_base(spec, common)
    ids, labels = batch_tensors(B, T, "answer", high=vocab)
    rows = []
    for method, name in methods.items():
        cfg = load_config([], [*common, f"method.name={name}"])

        def build(cfg=cfg):
            model = build_model(
                cfg.method,
                cfg.model,
                cfg.train.seed,
                [TaskSpec(name="bench", type="generation")],
                None,
                base=base,
                device=device,
            ).train()
            batch = to_device(ptune_batch(model, ids, labels), device)
            return adamw_step(lambda: model(batch).loss, model.trainable_parameters().values())

        row = measure(build, device, spec["warmup"], spec["steps"], B * T)
        rows.append(
            {
                "system": "ptune",
                "method": method,
                "batch": B,
                "seq": T,
                "load_s": load_s,
                "base_bytes": base_bytes,
                **row,
            }
        )
    return rows


def child_ptune(spec: dict) -> dict:
    shape = SHAPES[spec["shape"]]
    B, T, P = spec.get("batch") or shape["batch"], spec.get("seq") or shape["seq"], spec["virtual"]
    common = [
        f"model.name_or_path={spec['folder']}",
        f"model.dtype={spec['dtype']}",
        f"train.device={spec['device']}",
        f"method.num_virtual_tokens={P}",
        "tasks.0.type=generation",
        f"data.batch_size={B}",
        f"data.max_length={T + P}",
        *spec.get("overrides", []),
    ]
    made_s = make_base(spec["shape"], Path(spec["folder"]), spec["device"], spec["dtype"])  # once per shape
    free_memory()
    methods = {m: PTUNE_METHOD.get(m, m) for m in spec["methods"]}
    rows = ptune_rows(spec, common, methods, B, T, shape["config"]["vocab_size"])
    return {"rows": [{**r, "base_made_s": made_s} for r in rows]}


def peft_base(spec: dict):
    """(device, base, load seconds, bytes on the device after loading): the base as PEFT's users load it,
    from_pretrained onto the GPU with SDPA attention (made first if ptune's child could not)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    device = torch.device("cuda", 0) if spec["device"] == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    make_base(
        spec["shape"], Path(spec["folder"]), spec["device"], spec["dtype"]
    )  # made by ptune's child unless it failed
    free_memory()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    extra = {"device_map": {"": device}} if device.type == "cuda" else {}
    base = AutoModelForCausalLM.from_pretrained(
        spec["folder"], dtype=getattr(torch, spec["dtype"]), attn_implementation="sdpa", **extra
    )
    return device, base, time.perf_counter() - t0, memory_now(device)


def child_peft(spec: dict) -> dict:
    """PEFT as its users run it: from_pretrained onto the GPU with SDPA attention, get_peft_model per method."""
    import torch
    from peft import get_peft_model

    shape = SHAPES[spec["shape"]]
    B, T, P = spec.get("batch") or shape["batch"], spec.get("seq") or shape["seq"], spec["virtual"]
    device, base, load_s, base_bytes = peft_base(spec)
    ids, labels = batch_tensors(B, T, "answer", high=shape["config"]["vocab_size"])
    ids, labels = ids.to(device), labels.to(device)
    mask = torch.ones_like(ids)
    rows = []
    for method in spec["methods"]:

        def build(method=method):
            model = get_peft_model(base, peft_config(method, P)).train()
            return adamw_step(
                lambda: model(input_ids=ids, attention_mask=mask, labels=labels).loss,
                [p for p in model.parameters() if p.requires_grad],
            )

        row = measure(build, device, spec["warmup"], spec["steps"], B * T)
        rows.append(
            {
                "system": "peft",
                "method": method,
                "batch": B,
                "seq": T,
                "load_s": load_s,
                "base_bytes": base_bytes,
                **row,
            }
        )
    return {"rows": rows}


def matmul_tflops(torch, n: int = 8192, reps: int = 10) -> float:
    """bf16 n^3 matrix products on random data, timed with CUDA events after three warm-ups."""
    a, b = (
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
        torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
    )
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return reps * 2 * n**3 / (start.elapsed_time(end) / 1e3) / 1e12


CHILDREN = {"prepare": child_prepare, "ptune": child_ptune, "peft": child_peft}


def child_main(spec: dict, children: dict) -> None:
    out = children[spec["kind"]](spec)
    print(json.dumps(out), flush=True)


# -- the parent: children under a time budget (harness.Budget) -------------------------------------------
def run_child(script: str, spec: dict, budget: Budget, min_s: float = 15.0, children: dict | None = None) -> dict:
    """Run `script --child SPEC` in a fresh process; its last stdout line is its JSON answer. Errors,
    time-outs and skips come back as {"error": ...}; the child's stderr tail is printed on failure.
    With `children` (--inline: the CPU check) the child's function runs in this process instead, its
    answer passed through JSON all the same."""
    left = budget.left()
    if left is not None and left < min_s:
        return {"error": f"skipped: {left:.0f} s of the time budget left"}
    t0 = time.perf_counter()
    if children is not None:
        try:
            out = json.loads(json.dumps(children[spec["kind"]](spec)))
        except Exception as e:  # noqa: BLE001  (reported as the subprocess path reports it)
            import traceback

            traceback.print_exc()
            return {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        out["child_s"] = time.perf_counter() - t0
        return out
    cmd = [sys.executable, script, "--child", json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-3000:]
        sys.stderr.write(tail.decode(errors="replace") if isinstance(tail, bytes) else tail)
        return {"error": f"timed out after {time.perf_counter() - t0:.0f} s (time budget)"}
    if done.returncode != 0 or not done.stdout.strip():
        sys.stderr.write(done.stderr[-4000:])
        last = [ln for ln in done.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {last[0][:200]}"}
    answer = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]  # a library may print too
    out = json.loads(answer[-1]) if answer else {"error": "no JSON answer: " + done.stdout.strip()[-200:]}
    out["child_s"] = time.perf_counter() - t0
    return out


def fmt(x, spec=".0f", none="-") -> str:
    return none if x is None else format(x, spec)


def gib(n) -> str:
    return "-" if n is None else f"{n / GiB:.2f}"


def ratio(a, b) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def machine_lines(info: dict, device: str) -> list[str]:
    if not info:
        return ["Machine: unknown (the prepare step failed; see the log)."]
    v = (
        f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, triton {info['triton']}, "
        f"bitsandbytes {info['bitsandbytes']}, Python {info['python']}"
    )
    if device == "cuda":
        rate = info.get("matmul_tflops")
        return [
            f"Machine: {info['gpu']} ({info['gpu_memory_bytes'] / GiB:.0f} GiB, compute capability "
            f"{info['capability']}, {info['sms']} SMs), CUDA {info['cuda']}, {info['cpus']} CPU cores; {v}."
        ] + ([f"Measured bf16 8192^3 matmul: {rate:.0f} TFLOP/s (CUDA events, random data)."] if rate else [])
    return [f"Machine: {info.get('cpu')} ({info['cpus']} cores), no GPU; {v}."]


def peak_tflops(info: dict) -> tuple[float | None, str]:
    name = (info or {}).get("gpu") or ""
    for key, rate in DATASHEET_BF16_TFLOPS.items():
        if key in name:
            return rate, f"{rate:.0f} TFLOP/s ({key} datasheet, dense bf16)"
    rate = (info or {}).get("matmul_tflops")
    return rate, (f"{rate:.0f} TFLOP/s (the measured matmul rate)" if rate else "n/a")


def report(args, info: dict, rows: list[dict], bases: str) -> str:
    device = "cpu" if args.tiny else "cuda"
    peak, peak_text = peak_tflops(info)
    mem = "peak GPU GiB" if device == "cuda" else "peak RSS GiB"
    lines = [
        f"# Training step on a GPU: ptune vs PEFT ({'tiny CPU check' if args.tiny else 'bf16'})",
        "",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Command: `python bench/train_step_gpu.py "
        f"{' '.join(args.argv)}`.",
        *machine_lines(info, device),
        "",
        f"{args.virtual} virtual tokens, labels on the last {ANSWER} tokens of each row, AdamW, "
        f"{args.dtype}; {args.warmup} warm-up step(s), then the median of {args.steps} timed step(s). "
        f"Bases: {bases}. tokens/s counts batch x seq real tokens. MFU = tokens/s x 4N / {peak_text}, "
        "N = linear-layer and LM-head parameters (forward 2N + backward to the inputs 2N; no weight "
        "gradients, attention FLOPs not counted). Peak memory includes the base's weights; 'above base' "
        "is what the method, optimizer and activations add.",
        "",
        f"| shape | method | batch x seq | PEFT tokens/s | ptune tokens/s | throughput ratio | PEFT {mem} | "
        f"ptune {mem} | memory ratio | PEFT above base GiB | ptune above base GiB | above-base ratio "
        "| PEFT MFU | ptune MFU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["shape"], r["system"], r["method"]): r for r in rows}
    for shape in args.shape_list:
        n, s = matmul_params(shape), SHAPES[shape]
        for method in args.method_list:
            a, b = by.get((shape, "peft", method), {}), by.get((shape, "ptune", method), {})
            ok_a, ok_b = "tokens_per_s" in a, "tokens_per_s" in b

            def speed(r, ok):
                return fmt(r["tokens_per_s"]) if ok else r.get("error", "-")

            def mfu(r, ok):
                return f"{r['tokens_per_s'] * 4 * n / (peak * 1e12):.1%}" if peak and ok else "-"

            def above(r, ok):
                return r["peak_bytes"] - r["base_bytes"] if ok and device == "cuda" else None

            both = ok_a and ok_b
            lines.append(
                f"| {s['label']} | {METHOD_LABEL.get(method, method)} | {a.get('batch', s['batch'])} x "
                f"{a.get('seq', s['seq'])} | {speed(a, ok_a)} | {speed(b, ok_b)} | "
                f"{ratio(b['tokens_per_s'], a['tokens_per_s']) if both else '-'} | "
                f"{gib(a['peak_bytes']) if ok_a else '-'} | {gib(b['peak_bytes']) if ok_b else '-'} | "
                f"{ratio(b['peak_bytes'], a['peak_bytes']) if both else '-'} | {gib(above(a, ok_a))} | "
                f"{gib(above(b, ok_b))} | {ratio(above(b, ok_b), above(a, ok_a))} | {mfu(a, ok_a)} | {mfu(b, ok_b)} |"
            )
    made = {r["shape"]: r["base_made_s"] for r in rows if r.get("base_made_s")}
    lines += [
        "",
        "Bases made (random init on the device, save_pretrained), seconds: "
        + (", ".join(f"{k} {v:.0f}" for k, v in made.items()) or "none (already there)")
        + ".",
        "Loads and step spread (seconds): "
        + "; ".join(
            f"{r['shape']} {r['system']} {r['method']}: load {r['load_s']:.1f}, step {r['step_s_min']:.3f}-"
            f"{r['step_s_max']:.3f}"
            for r in rows
            if "step_s_min" in r
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU check: a 2-layer Llama of hidden 64, fp32, 1 step")
    p.add_argument("--shapes", default="1b,8b")
    p.add_argument("--methods", default="prompt_tuning,prefix_tuning")
    p.add_argument("--virtual", type=int, default=20)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--base-dir", default=os.path.join(tempfile.gettempdir(), "ptune-bench-bases"))
    p.add_argument("--budget-s", type=float, default=0, help="stop starting children after this long (0: no limit)")
    p.add_argument("--out", default="", help="write the markdown table here")
    p.add_argument("--json", default="", help="write the raw rows here")
    p.add_argument("--inline", action="store_true", help="run the systems in this process (CPU checks, tests)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(json.loads(args.child), CHILDREN)
    args.argv = argv
    if args.tiny:
        args.shapes, args.steps, args.warmup = "tiny", 1, 1
    args.dtype = "float32" if args.tiny else "bfloat16"
    device = "cpu" if args.tiny else "cuda"
    args.shape_list, args.method_list = args.shapes.split(","), args.methods.split(",")
    budget = Budget(args.budget_s or None)
    script = os.path.abspath(__file__)
    inline = CHILDREN if args.inline else None
    # the machine (and its matmul rate); each base is made by its shape's first child (ptune's), so a slow
    # 8B save cannot cost the 1B results
    prep = run_child(
        script,
        {"kind": "prepare", "device": device, "dtype": args.dtype, "shapes": [], "base_dir": args.base_dir},
        budget,
        min_s=5,
        children=inline,
    )
    print(f"prepare: {prep.get('error') or format(prep['child_s'], '.0f') + ' s'}", flush=True)
    rows = []
    bases = (
        "random-init, made once on the GPU and saved with save_pretrained (config.json + safetensors) to "
        "a local folder, then loaded by each system's own loader in its own process"
        if not args.tiny
        else "random-init, saved with save_pretrained and loaded by each system's loader"
    )
    for shape in args.shape_list:
        folder = str(base_folder(args.base_dir, shape, args.dtype))
        for system in ("ptune", "peft"):
            spec = {
                "kind": system,
                "shape": shape,
                "folder": folder,
                "device": device,
                "dtype": args.dtype,
                "methods": args.method_list,
                "virtual": args.virtual,
                "steps": args.steps,
                "warmup": args.warmup,
            }
            out = run_child(script, spec, budget, children=inline)
            got = out.get("rows") or [
                {"system": system, "method": m, "error": out.get("error", "no rows")} for m in args.method_list
            ]
            for r in got:
                r["shape"] = shape
                rows.append(r)
                what = (
                    r["error"]
                    if "error" in r
                    else (
                        f"{r['tokens_per_s']:9.0f} tokens/s, peak {gib(r.get('peak_bytes'))} GiB, loss {r['loss']:.3f}"
                    )
                )
                print(f"{shape:4s} {system:5s} {r['method']:13s} {what}", flush=True)
            write_files(args, report(args, prep.get("machine", {}), rows, bases), prep.get("machine"), rows)
    return write_results(args, report(args, prep.get("machine", {}), rows, bases), prep.get("machine"), rows)


def write_results(args, text: str, machine, rows: list[dict]) -> int:
    """Print the table, write it to --out and the rows to --json; exit status 1 when a row failed."""
    print(text)
    write_files(args, text, machine, rows)
    return 1 if any("error" in r for r in rows) else 0


def write_files(args, text: str, machine, rows: list[dict]) -> None:
    """The table to --out and the rows to --json: after every child, so a run cut short keeps what it measured."""
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
