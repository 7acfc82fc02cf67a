"""What `ptune plan` prints: the request (model, method, hardware and where each figure came from), then the
setups that fit, best first, each with its command line, its predicted peak by part and, with --trace, the
peak traced on a fake CUDA device.

    render(request, rows, trace=0) -> str   the whole output
    engine_label(setup, world) -> str       the engine as tables name it: plain, DDP, ZeRO-N [offload ...]
"""

from __future__ import annotations

from ptune_dist.errors import ConfigError

from .request import GiB, Hardware, Request, Setup
from .search import Row, base_name, command_for, config_for, select

CPU_ZERO3_NOTE = (
    "note: on a CPU, ZeRO-3 rows are a lower bound: measured peaks were 1.3-1.8x the prediction, because the "
    "allocator keeps the memory freed while DeepSpeed gathers the base again every step and gloo's gathers "
    "stage their output (docs/plan.md)"
)


def hardware_origins(hw: Hardware, device: str) -> str:
    """One line: where each hardware figure came from."""
    s = hw.sources
    mem = "memory" if hw.device == "cpu" else "GPU memory"
    return (
        f"  where from: {hw.gpus} {device}(s) per node {s.get('gpus', 'assumed')}; {hw.nodes} node(s) "
        f"{s.get('nodes', 'assumed')}; {mem} {hw.gpu_mem / GiB:g} GB {s.get('gpu_mem', 'assumed')}; runtime "
        f"{hw.runtime_bytes / GiB:.2f} GB {s.get('runtime', 'assumed')}"
    )


def engine_label(s: Setup, world: int, count: bool = True) -> str:
    """The engine in the one vocabulary of ptune plan's table and the study's records: `plain` (one process),
    `DDP` (PyTorch data parallel), `ZeRO-N`, with ` offload` (parameters and optimizer), ` offload params` or
    ` offload opt`; `count`: followed by ` xN` for N ranks."""
    if s.engine != "deepspeed":
        name = "plain" if world == 1 else "DDP"
    else:
        name = f"ZeRO-{s.zero_stage}"
        if s.offload_params or s.offload_optimizer:
            name += " offload" + (
                "" if s.offload_params and s.offload_optimizer else " params" if s.offload_params else " opt"
            )
    return name + (f" x{world}" if count and world > 1 else "")


def trace_rows(req: Request, rows: list[Row], n: int) -> dict:
    """{id(row): Trace or the exception that stopped it} for the first `n` rows (plan/trace.py), one child
    process for all of them on a CPU-only torch."""
    from .arch import hf_config
    from .trace import trace_steps

    if req.hardware.device == "cpu":
        raise ConfigError(
            "--trace: hardware.device=cpu plans a CPU run; the trace counts a GPU's memory (drop "
            "hardware.device=cpu to trace the GPU setups)"
        )
    config = hf_config(req.arch) if req.builtin else None
    picked = rows[:n]
    answers = trace_steps([(config_for(r.setup, req), config, r.setup.label_tokens) for r in picked])
    return {id(r): a for r, a in zip(picked, answers)}


def trace_line(row: Row, trace) -> str:
    """The traced peak under a row: by part, and beside the predicted tensors."""
    if isinstance(trace, Exception):
        return f"      traced: not traced ({trace})"
    t, d = trace.parts, row.breakdown
    parts = " + ".join(
        f"{t[k] / GiB:.2f}"
        for k in ("weights", "quant_state", "prompt_optimizer", "activations", "logits", "workspace")
    )
    return (
        f"      traced: {trace.peak / GiB:.2f} GB of live CUDA tensors at the peak ({trace.peak_region}) = {parts} "
        f"(weights + quantisation state + prompt/optimizer + activations + logits + workspace); predicted "
        f"tensors {d.tensors / GiB:.2f} ({d.tensors / trace.peak:.2f}x the trace); + runtime "
        f"{d.runtime / GiB:.2f} = {(trace.peak + d.runtime) / GiB:.2f}"
        + "".join(f"\n      note: {n}" for n in trace.notes)
    )


def render(req: Request, rows: list[Row], trace: int = 0) -> str:
    a, b, hw = req.arch, req.base, req.hardware
    shown = select(rows, req.show_all)
    traces = trace_rows(req, shown[: req.top], trace) if trace and shown else {}
    fitting = sum(r.fits for r in rows)
    where = f"{hw.gpus} x {hw.gpu_mem / GiB:g} GB" + (f" x {hw.nodes} nodes" if hw.nodes > 1 else "")
    device = "GPU" if hw.device == "gpu" else "process (CPU)"
    unit = "example" if b.packing and b.task == "classification" else "row"  # what the LM head scores
    lines = [
        f"model: {a.name} ({a.total_params / 1e9:.2f}B parameters, {a.num_layers} layers, hidden {a.hidden_size}, "
        f"heads {a.num_heads}/{a.num_kv_heads} kv, vocab {a.vocab_size}; from {a.source or 'built-in'})",
        f"method: {b.method.name}, {b.method.num_virtual_tokens} virtual tokens, "
        f"{rows[0].breakdown.trainable_params:,} "
        f"trainable parameters; batch {b.batch_size} x {b.max_length} tokens per {device}"
        + (f" (packed, {b.sequences_per_row} examples a row)" if b.packing else "")
        + f", {b.task} "
        f"({f'LM head on {b.label_tokens} labelled token(s) per {unit}' if not b.head_classes else 'head'})",
        f"hardware: {where} ({hw.world} {device}{'s' if hw.world > 1 else ''}"
        + (f"; the memory of this machine's {hw.detected}" if hw.detected else "")
        + (f"; {hw.gpu_mem / GiB:g} GB assumed" if hw.sources.get("gpu_mem", "").startswith("assumed") else "")
        + f"), runtime overhead {hw.runtime_bytes / GiB:.2f} GB per {device}",
        hardware_origins(hw, "GPU" if hw.device == "gpu" else "process"),
        f"{fitting} of {len(rows)} setups fit"
        + ("" if req.show_all else "; best first, the largest micro-batch of each kind")
        + ". Predicted peak per "
        + device
        + " in GB = weights + ZeRO-3 gathered + prompt/grad/optimizer "
        "+ activations + logits + workspace - overlap (logits and a layer's backward are never live at once) "
        "+ runtime.",
        "",
    ]
    if not shown:
        smallest = min(rows, key=lambda r: r.peak)
        guessed = hw.sources.get("gpu_mem", "").startswith("assumed")
        assumed = " (assumed: hardware.gpu_mem=... sets it)" if guessed else ""
        lines.append(
            f"nothing fits in {hw.gpu_mem / GiB:g} GB{assumed}; the smallest setup needs "
            f"{smallest.peak / GiB:.1f} GB per {device}: {' '.join(smallest.overrides)}"
        )
        return "\n".join(lines)
    header = f"{'#':>3} {'fits':4} {'base':6} {'ckpt':4} {'micro x accum':13} {'engine':22} {'peak GB':>8}  breakdown"
    lines.append(header)
    for i, r in enumerate(shown[: req.top], 1):
        s, d = r.setup, r.breakdown
        parts = (
            "+".join(
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
            + f"-{d.overlap / GiB:.2f}+{d.runtime / GiB:.2f}"
        )
        host = f" (host {d.host / GiB:.1f} GB)" if d.host else ""
        lines.append(
            f"{i:>3} {'yes' if r.fits else 'no':4} {base_name(s):6} {'on' if s.gradient_checkpointing else 'off':4} "
            f"{f'{s.batch_size} x {s.grad_accum}':13} {engine_label(s, hw.world):22} {r.peak / GiB:8.2f}  "
            f"{parts}{host}"
        )
        lines.append(f"      {command_for(s, req)}")
        if id(r) in traces:
            lines.append(trace_line(r, traces[id(r)]))
    if len(shown) > req.top:
        lines.append(f"... {len(shown) - req.top} more (plan.top=N)")
    if hw.device == "cpu" and any(r.setup.engine == "deepspeed" and r.setup.zero_stage == 3 for r in shown[: req.top]):
        lines.append(CPU_ZERO3_NOTE)
    return "\n".join(lines)
