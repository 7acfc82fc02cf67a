"""`ptune plan`: read the request, enumerate setups, predict each, print those that fit.

    ptune plan CONFIG.yaml [MORE.yaml ...] [dotted.key=value ...] [hardware.* ...] [plan.* ...]
    ptune plan model=<built-in | embedded:NAME | HF folder | run config .yaml> method=NAME \
        hardware.gpus=1 hardware.gpu_mem=24GB [hardware.nodes=1] [run-config key=value ...] [plan.* ...]

Keys given on the command line are kept as given, and so are the keys that config files given as
CONFIG.yaml set (they describe the run: its quantisation, checkpointing, accumulation, engine);
`model=CONFIG.yaml` only starts from the file. The planner varies the rest of what decides memory:
the base (bf16, fp32, int8, nf4), gradient checkpointing, the micro-batch (with gradient
accumulation keeping `data.batch_size` the batch per device and step), and the engine (plain, ZeRO-3,
ZeRO-3 with offload; ZeRO-1/2 too for full fine-tuning; ZeRO only with train.optimizer=adamw, as the
config's checks require). Hardware not given follows the run config (launch.nproc_per_node GPUs per
node, launch.nnodes nodes, train.device=cpu a CPU run) and, on a machine with a GPU, takes that GPU's
memory (24GB without one). The output says where each hardware figure came from (Hardware.sources):
given (a hardware.* key), from the run config (launch.*, train.device), detected (torch.cuda on this
machine) or assumed (a default, with the key that sets it): a plan made on a laptop never presents
24 GB as the GPU it will run on.

With --trace[=N] (ptune_dist/cli.py), the first N setups listed (default 3) are also traced: their training
step built as `ptune train` builds it and run on a fake CUDA device (plan/trace.py), and the peak of live
CUDA tensor bytes it reaches is printed under each, by part, beside the prediction.

Numbers given here are checked like the config's: hardware.gpu_mem and hardware.runtime are sizes with
a unit (24GB, 80GiB, 512MB; a bare `24` is refused, not read as 24 bytes), finite and within
SIZE_RANGE; counts are whole numbers within COUNT_MAX (plan.label_tokens at most data.max_length).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import ConfigError
from ptune_dist.methods import method_class

from .arch import Arch, is_builtin, resolve_arch
from .memory import GiB, Breakdown, Setup, predict

GPU_RUNTIME = 1.0 * GiB  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack: an assumption, see docs/plan.md
# This CPU (2 cores, torch 2.13, tcmalloc): what a `ptune train` process holds besides the tensors of the
# model, measured once by bench/memory_plan.py (calibration cell) and written into docs/plan.md
CPU_RUNTIME = 71 * 2**20
CPU_ZERO3_NOTE = (
    "note: on a CPU, ZeRO-3 rows are a lower bound: measured peaks were 1.3-1.8x the prediction, because the "
    "allocator keeps the memory freed while DeepSpeed gathers the base again every step and gloo's gathers "
    "stage their output (docs/plan.md)")
HARDWARE_KEYS = {"gpus": "GPUs per node", "nodes": "nodes", "gpu_mem": "memory of one GPU, e.g. 24GB",
                 "device": "gpu | cpu (cpu: one process per 'GPU', memory = RAM per process)",
                 "runtime": "non-tensor memory per process, e.g. 1GB (default: 1GB on a GPU, calibrated on CPU)"}
PLAN_KEYS = {"label_tokens": "labelled tokens per row that reach the LM head (generation; default max_length/4)",
             "sequences_per_row": "data.packing: examples per packed row (default max_length/128, at least 1)",
             "all": "true: every micro-batch and also the setups that do not fit",
             "top": "how many setups to print (default 20)"}
BASES_GPU = [("bfloat16", "none"), ("float32", "none"), ("bfloat16", "int8"), ("bfloat16", "nf4")]
BASES_CPU = [("float32", "none"), ("bfloat16", "none"), ("float32", "int8"), ("float32", "nf4")]
HUB_IDS = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B", "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
           "llama-2-7b": "meta-llama/Llama-2-7b-hf", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
           "llama-2-13b": "meta-llama/Llama-2-13b-hf", "llama-65b": "huggyllama/llama-65b",
           "llama-2-70b": "meta-llama/Llama-2-70b-hf", "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
           "chatglm-6b": "THUDM/chatglm-6b"}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
# what a size may be: from the memory of a process (hardware.device=cpu) to far beyond any GPU
SIZE_RANGE = {"hardware.gpu_mem": (2**20, 2**50), "hardware.runtime": (0, 2**50),
              "study.hardware.gpu_mem": (2**20, 2**50)}
COUNT_MAX = {"hardware.gpus": 1024, "hardware.nodes": 65536, "plan.top": 10**6}


def parse_size(text: str, key: str) -> float:
    """'24GB', '80GiB', '24000MB', '1.5T' -> bytes. GB and GiB both mean 2**30 (a '24 GB' GPU has 24 GiB).
    A number without a unit is refused (24 bytes is never what `hardware.gpu_mem=24` means), and so is one
    outside SIZE_RANGE[key]."""
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{key}={text!r}: expected a size such as 24GB, 80GiB, 24000MB or 1.5TB")
    if not m.group(2):
        raise ConfigError(f"{key}={text!r}: a size needs its unit, e.g. {key}={m.group(1)}GB or {m.group(1)}GiB "
                          f"(or {m.group(1)}MB)")
    unit = m.group(2).lower().rstrip("b").rstrip("i") or "b"
    scale = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit]
    size = float(m.group(1)) * scale
    low, high = SIZE_RANGE.get(key, (0, 2**50))
    if not math.isfinite(size) or not low <= size <= high:
        raise ConfigError(f"{key}={text!r} must be between {_human(low)} and {_human(high)}")
    return size


def _human(size: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:g}{unit}"
    return f"{size:g} bytes"


@dataclass
class Hardware:
    gpus: int = 1
    nodes: int = 1
    gpu_mem: float = 24 * GiB
    device: str = "gpu"
    runtime: float | None = None
    detected: str = ""  # the GPU of this machine whose memory gpu_mem is, when it was not given
    sources: dict = field(default_factory=dict)  # figure -> where it came from (given, config, detected, assumed)

    @property
    def world(self) -> int:
        return self.gpus * self.nodes

    @property
    def runtime_bytes(self) -> float:
        if self.runtime is not None:
            return self.runtime
        return GPU_RUNTIME if self.device == "gpu" else CPU_RUNTIME


@dataclass
class Request:
    arch: Arch
    base: Setup  # from the run config (file + overrides)
    fixed: set  # dotted keys the planner keeps: given on the command line or set by a CONFIG.yaml
    hardware: Hardware
    config_file: str = ""  # the config file(s) of the commands
    model_override: str = ""  # model.name_or_path to put in the commands
    overrides: list = field(default_factory=list)  # the command line's run-config key=value, for the commands
    backend: str = "local"  # the config's launch.backend
    slurm_gpus: bool = False  # the config asks Slurm for GPUs (launch.gpus_per_node), one per rank
    attention: str = "auto"  # the config's model.attention: the planned kernel follows each setup's dtype
    show_all: bool = False
    top: int = 20
    cfg: RunConfig | None = None  # the run config as given (file + overrides), before the planned keys
    builtin: bool = False  # model= is a built-in description (no config.json to read)


@dataclass
class Row:
    setup: Setup
    breakdown: Breakdown
    fits: bool
    overrides: list

    @property
    def peak(self) -> float:
        return self.breakdown.total


# -- the request ----------------------------------------------------------------------------
def _int(value: str, key: str, minimum: int = 1, maximum: int | None = None) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected a whole number") from None
    maximum = COUNT_MAX.get(key) if maximum is None else maximum
    if n < minimum:
        raise ConfigError(f"{key}={n} must be >= {minimum}")
    if maximum is not None and n > maximum:
        raise ConfigError(f"{key}={value} must be <= {maximum}")
    return n


def _bool(value: str, key: str) -> bool:
    if value.lower() in ("true", "yes", "1", "on"):
        return True
    if value.lower() in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{key}={value!r}: expected true or false")


def parse_request(args: list[str]) -> Request:
    from ptune_dist.config import load_config

    hardware, plan, overrides, model, files, model_file = {}, {}, [], "", [], ""
    for arg in args:
        if "=" not in arg:
            if not arg.endswith((".yaml", ".yml")) and not Path(arg).is_file():
                raise ConfigError(f"{arg!r}: expected a run config (CONFIG.yaml) or key=value "
                                  "(model=..., method=..., hardware.gpus=...)")
            files.append(arg)
            continue
        key, value = arg.split("=", 1)
        if key == "model":
            if value.endswith((".yaml", ".yml")):
                if not Path(value).is_file():
                    raise ConfigError(f"model={value!r}: config file not found")
                model_file = value
            else:
                model = value
        elif key == "method":
            overrides.append(f"method.name={value}")
        elif key.startswith("hardware."):
            name = key.split(".", 1)[1]
            if name not in HARDWARE_KEYS:
                raise ConfigError(f"config key {key} is unknown; allowed here: "
                                  + ", ".join(f"hardware.{k}" for k in HARDWARE_KEYS))
            hardware[name] = value
        elif key.startswith("plan."):
            name = key.split(".", 1)[1]
            if name not in PLAN_KEYS:
                raise ConfigError(f"config key {key} is unknown; allowed here: "
                                  + ", ".join(f"plan.{k}" for k in PLAN_KEYS))
            plan[name] = value
        else:
            overrides.append(arg)
    if files and model_file:
        raise ConfigError(f"model={model_file!r}: the run config is already given ({' '.join(files)}); give it once")
    if not (model or files or model_file):
        raise ConfigError("give a run config (CONFIG.yaml) or model=<built-in name | embedded:NAME | "
                          "HF folder | run config .yaml>")
    arch = resolve_arch(model) if model else None
    if model:
        overrides.insert(0, f"model.name_or_path={model}")
    cfg = load_config(files or ([model_file] if model_file else []), _config_overrides(overrides, model))
    if arch is None:
        arch = resolve_arch(cfg.model.name_or_path, key="model.name_or_path")
    fixed = {o.split("=", 1)[0] for o in overrides} | _keys_set_in(files)
    hw = _hardware(hardware, cfg)
    base = setup_from_config(cfg, arch, plan, hw.device)
    return Request(arch=arch, base=base, fixed=fixed, hardware=hw, attention=cfg.model.attention,
                   config_file=" ".join(files) or model_file,
                   model_override=HUB_IDS.get(arch.name, model) if model else "",
                   overrides=[o for o in overrides if o.split("=", 1)[0] not in PLANNED_KEYS],
                   backend=cfg.launch.backend, slurm_gpus=cfg.launch.gpus_per_node > 0,
                   show_all=_bool(plan.get("all", "false"), "plan.all"),
                   top=_int(plan.get("top", "20"), "plan.top"), cfg=cfg, builtin=bool(model) and is_builtin(model))


def _keys_set_in(files: list[str]) -> set[str]:
    """The dotted keys that YAML files set (load_config has read them already)."""
    import yaml

    keys = set()

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                keys.add(f"{prefix}{k}")

    for f in files:
        walk(yaml.safe_load(Path(f).read_text()) or {}, "")
    return keys


def _hardware(given: dict, cfg: RunConfig) -> Hardware:
    """hardware.* as given; the rest from the run config and, on a GPU, this machine's GPU memory; each
    figure's origin in `sources`."""
    hw = Hardware(gpus=cfg.launch.nproc_per_node, nodes=cfg.launch.nnodes,
                  device="cpu" if cfg.train.device == "cpu" else "gpu")
    hw.sources = {"gpus": "from launch.nproc_per_node", "nodes": "from launch.nnodes",
                  "runtime": "assumed (CUDA context, workspaces, allocator slack: docs/plan.md; hardware.runtime=... "
                             "to set it)" if hw.device == "gpu" else "assumed (hardware.runtime=... to set it)"}
    for name, value in given.items():
        key = f"hardware.{name}"
        hw.sources[name] = f"given ({key})"
        if name in ("gpus", "nodes"):
            setattr(hw, name, _int(value, key))
        elif name == "gpu_mem":
            hw.gpu_mem = parse_size(value, key)
        elif name == "runtime":
            hw.runtime = parse_size(value, key)
        elif value not in ("gpu", "cpu"):
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of ['gpu', 'cpu']")
        else:
            hw.device = value
    if hw.device == "cpu" and "runtime" not in given:
        hw.sources["runtime"] = "assumed (hardware.runtime=... to set it)"
    if "gpu_mem" not in given:
        local = local_gpu() if hw.device == "gpu" else None
        if local:
            hw.gpu_mem, hw.detected = local
            hw.sources["gpu_mem"] = (f"detected (this machine's {hw.detected}, by torch.cuda; hardware.gpu_mem=... "
                                     "for another)")
        elif hw.device == "gpu":
            hw.sources["gpu_mem"] = ("assumed: this machine shows no GPU (torch.cuda); give hardware.gpu_mem=... "
                                     "for the GPU the run will have")
        else:
            hw.sources["gpu_mem"] = "assumed (the memory of one process; hardware.gpu_mem=... to set it)"
    return hw


def hardware_origins(hw: Hardware, device: str) -> str:
    """One line: where each hardware figure came from."""
    s = hw.sources
    mem = "memory" if hw.device == "cpu" else "GPU memory"
    return (f"  where from: {hw.gpus} {device}(s) per node {s.get('gpus', 'assumed')}; {hw.nodes} node(s) "
            f"{s.get('nodes', 'assumed')}; {mem} {hw.gpu_mem / GiB:g} GB {s.get('gpu_mem', 'assumed')}; runtime "
            f"{hw.runtime_bytes / GiB:.2f} GB {s.get('runtime', 'assumed')}")


def local_gpu() -> tuple[float, str] | None:
    """(memory in bytes, name) of the smallest GPU this machine shows; None without one."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        return None
    props = min((torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())),
                key=lambda p: p.total_memory)
    return float(props.total_memory), props.name


def _config_overrides(overrides: list[str], model: str) -> list[str]:
    """The run config cannot load a built-in planner name as a model; keep it out of validation."""
    if model and not (model.startswith("embedded:") or Path(model).expanduser().exists()):
        return [o for o in overrides if not o.startswith("model.name_or_path=")]
    return overrides


def planned_kernel(attention: str, dtype: str, device: str) -> str:
    """The prefix-attention kernel a run will use (kernels/auto.py's rule): with `auto`, the shared-prefix
    Triton kernel on a GPU in fp16/bf16, else SDPA (the prefix copied into every row's keys/values)."""
    if attention == "auto" and device == "gpu" and dtype in ("bfloat16", "float16"):
        return "triton"
    return "sdpa" if attention in ("auto", "reference") else attention


def setup_from_config(cfg: RunConfig, arch: Arch, plan: dict, device: str | None = None) -> Setup:
    """The Setup a run config describes; `device` (gpu | cpu) decides the `auto` attention kernel (default:
    the CPU for train.device=cpu or a machine without CUDA, else a GPU)."""
    if device is None:
        import torch

        device = "gpu" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    m, d, dist = cfg.model, cfg.data, cfg.distributed
    task = cfg.tasks[0] if cfg.tasks else None
    ttype = task.type if task else "classification"
    head = len(task.labels) if task and task.scoring == "head" else 0
    label_tokens = (_int(plan["label_tokens"], "plan.label_tokens", maximum=d.max_length) if "label_tokens" in plan
                    else 1 if ttype == "classification" else max(1, d.max_length // 4))
    if ttype == "token_classification":
        head, label_tokens = max(head, 2), d.max_length
    per_row = (_int(plan["sequences_per_row"], "plan.sequences_per_row", maximum=d.max_length)
               if "sequences_per_row" in plan else max(1, d.max_length // 128))
    return Setup(
        method=cfg.method, task=ttype, label_tokens=label_tokens,
        head_classes=head, batch_size=d.batch_size, grad_accum=cfg.train.grad_accum, max_length=d.max_length,
        packing=d.packing, sequences_per_row=per_row,
        dtype=m.dtype, quant=m.quant, quant_double=m.quant_double, quant_storage=m.quant_storage,
        gradient_checkpointing=m.gradient_checkpointing, lean_activations=m.lean_activations,
        attention=planned_kernel(m.attention, m.dtype, device), optimizer=cfg.train.optimizer,
        engine=dist.engine, zero_stage=dist.zero_stage, offload_optimizer=dist.offload_optimizer,
        offload_params=dist.offload_params, world=1, zero_extra=dict(dist.zero_extra))


# -- enumeration ----------------------------------------------------------------------------
def _micro_batches(target: int) -> list[int]:
    out = {target}
    b = 1
    while b < target:
        if target % b == 0:
            out.add(b)
        b *= 2
    return sorted(out, reverse=True)


def _engines(req: Request) -> list[dict]:
    f, base, world = req.fixed, req.base, req.hardware.world
    if f & {"distributed.engine", "distributed.zero_stage", "distributed.offload_optimizer",
            "distributed.offload_params"}:
        return [dict(engine=base.engine, zero_stage=base.zero_stage, offload_optimizer=base.offload_optimizer,
                     offload_params=base.offload_params)]
    plain = dict(engine="torch", zero_stage=0, offload_optimizer=False, offload_params=False)
    if base.optimizer != "adamw":  # ZeRO takes AdamW only (config validation: it undoes Adafactor's factoring)
        return [plain]
    z3 = dict(engine="deepspeed", zero_stage=3, offload_optimizer=False, offload_params=False)
    z3off = dict(engine="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True)
    out = [plain] + ([z3] if world > 1 else []) + [z3off]
    if method_class(base.method.name).trains_base and world > 1:
        out[1:1] = [dict(engine="deepspeed", zero_stage=s, offload_optimizer=False, offload_params=False)
                    for s in (1, 2)]
    return out


def _bases(req: Request) -> list[tuple[str, str]]:
    b, f = req.base, req.fixed
    options = BASES_GPU if req.hardware.device == "gpu" else BASES_CPU
    if "model.dtype" in f:
        options = [(b.dtype, q) for _, q in options]
    if "model.quant" in f:
        options = [(dt, b.quant) for dt, _ in options]
    if method_class(b.method.name).trains_base:
        options = [(dt, q) for dt, q in options if q == "none"]
    return list(dict.fromkeys(options))


def enumerate_setups(req: Request) -> list[Setup]:
    b, f = req.base, req.fixed
    ckpts = [b.gradient_checkpointing] if "model.gradient_checkpointing" in f else [False, True]
    target = b.batch_size
    micros = [b.batch_size] if "train.grad_accum" in f else _micro_batches(target)
    out = []
    for dtype, quant in _bases(req):
        for eng in _engines(req):
            if eng["zero_stage"] == 3 and quant == "int8":
                continue  # bitsandbytes' int8 weights cannot be partitioned by ZeRO-3
            # ZeRO-3 partitions 4-bit weights packed in a float dtype (QLoRA's recipe)
            storage = "bfloat16" if eng["zero_stage"] == 3 and quant in ("nf4", "fp4") else b.quant_storage
            for ckpt in ckpts:
                for micro in micros:
                    out.append(replace(b, dtype=dtype, quant=quant, quant_storage=storage, gradient_checkpointing=ckpt,
                                       batch_size=micro, grad_accum=b.grad_accum * max(1, target // micro),
                                       world=req.hardware.world,
                                       attention=planned_kernel(req.attention, dtype, req.hardware.device), **eng))
    return out


# keys the commands set from the planned setup; the command line's other run-config keys go in as given
PLANNED_KEYS = {"model.name_or_path", "model.dtype", "model.quant", "model.quant_compute_dtype",
                "model.quant_storage", "model.gradient_checkpointing", "data.batch_size", "train.grad_accum",
                "distributed.engine", "distributed.zero_stage", "distributed.offload_optimizer",
                "distributed.offload_params", "launch.nproc_per_node", "launch.nnodes", "launch.gpus_per_node"}


def overrides_for(s: Setup, req: Request) -> list[str]:
    o = []
    if req.model_override:
        o.append(f"model.name_or_path={req.model_override}")
    if not req.config_file and "method.name" not in req.fixed:
        o.append(f"method.name={s.method.name}")  # CONFIG.yaml stands for any config: say the method planned
    o += req.overrides
    o.append(f"model.dtype={s.dtype}")
    if s.quant != "none":
        o.append(f"model.quant={s.quant}")
        if s.quant in ("nf4", "fp4") and s.zero == 3:
            o.append(f"model.quant_storage={s.quant_storage}")  # packed weights in a float dtype: ZeRO-3 can partition them
    if s.gradient_checkpointing:
        o.append("model.gradient_checkpointing=true")
    o.append(f"data.batch_size={s.batch_size}")
    if s.grad_accum > 1:
        o.append(f"train.grad_accum={s.grad_accum}")
    if s.engine == "deepspeed":
        o += ["distributed.engine=deepspeed", f"distributed.zero_stage={s.zero_stage}"]
        if s.offload_optimizer:
            o.append("distributed.offload_optimizer=true")
        if s.offload_params:
            o.append("distributed.offload_params=true")
    return o


def config_for(s: Setup, req: Request) -> RunConfig:
    """The run config of a planned setup: the request's config with the keys the planner chose (what
    overrides_for puts in the command)."""
    cfg = req.cfg
    m = replace(cfg.model, dtype=s.dtype, quant=s.quant, quant_double=s.quant_double, quant_compute_dtype="auto",
                gradient_checkpointing=s.gradient_checkpointing)  # auto: the 4-bit matmul in model.dtype
    if s.quant in ("nf4", "fp4"):
        m = replace(m, quant_storage=s.quant_storage)
    return replace(cfg, model=m, data=replace(cfg.data, batch_size=s.batch_size),
                   train=replace(cfg.train, grad_accum=s.grad_accum),
                   distributed=replace(cfg.distributed, engine=s.engine, zero_stage=s.zero_stage,
                                       offload_optimizer=s.offload_optimizer, offload_params=s.offload_params))


def command_for(s: Setup, req: Request) -> str:
    cfg = req.config_file or "CONFIG.yaml"
    hw = req.hardware
    if hw.world == 1 and s.engine == "torch" and req.backend == "local":
        head = f"ptune train {cfg}"
    else:
        head = f"ptune launch {cfg} launch.nproc_per_node={hw.gpus}"
        if req.slurm_gpus:  # one GPU per rank (launcher/slurm.py)
            head += f" launch.gpus_per_node={hw.gpus}"
        if hw.nodes > 1:
            head += f" launch.nnodes={hw.nodes}"
    return " ".join([head, *overrides_for(s, req)])


def plan(req: Request) -> list[Row]:
    rows = []
    for s in enumerate_setups(req):
        b = predict(req.arch, s, runtime=req.hardware.runtime_bytes)
        rows.append(Row(s, b, b.total <= req.hardware.gpu_mem, overrides_for(s, req)))
    return rows


BASE_ORDER = ["bf16", "fp16", "fp32", "int8", "nf4", "nf4+dq", "fp4", "fp4+dq"]


def _rank(row: Row) -> tuple:
    """Fewest compromises first: no offload, no ZeRO-3, an unquantised base (bf16 before fp32), no
    checkpointing, then the largest micro-batch."""
    s = row.setup
    name = base_name(s)
    base = BASE_ORDER.index(name) if name in BASE_ORDER else len(BASE_ORDER)
    return (s.offload_optimizer or s.offload_params, s.zero, base, s.gradient_checkpointing, -s.batch_size)


def select(rows: list[Row], show_all: bool = False) -> list[Row]:
    """The fitting setups, best first; per (engine, base, checkpointing) only the largest micro-batch."""
    if show_all:
        return sorted(rows, key=lambda r: (not r.fits, _rank(r)))
    best = {}
    for r in sorted((r for r in rows if r.fits), key=_rank):
        s = r.setup
        key = (s.engine, s.zero_stage, s.offload_params, s.offload_optimizer, s.dtype, s.quant, s.gradient_checkpointing)
        best.setdefault(key, r)
    return list(best.values())


def base_name(s: Setup) -> str:
    if s.quant == "none":
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[s.dtype]
    return s.quant + ("+dq" if s.quant_double else "")


def _engine_name(s: Setup, world: int) -> str:
    if s.engine == "torch":
        return "plain" if world == 1 else f"DDP x{world}"
    name = f"ZeRO-{s.zero_stage}"
    if s.offload_params or s.offload_optimizer:
        name += " offload" + ("" if s.offload_params and s.offload_optimizer else
                              " params" if s.offload_params else " opt")
    return name + (f" x{world}" if world > 1 else "")


def trace_rows(req: Request, rows: list[Row], n: int) -> dict:
    """{id(row): Trace or the exception that stopped it} for the first `n` rows (plan/trace.py), one child
    process for all of them on a CPU-only torch."""
    from .arch import hf_config
    from .trace import trace_steps

    if req.hardware.device == "cpu":
        raise ConfigError("--trace: hardware.device=cpu plans a CPU run; the trace counts a GPU's memory (drop "
                          "hardware.device=cpu to trace the GPU setups)")
    config = hf_config(req.arch) if req.builtin else None
    picked = rows[:n]
    answers = trace_steps([(config_for(r.setup, req), config, r.setup.label_tokens) for r in picked])
    return {id(r): a for r, a in zip(picked, answers)}


def trace_line(row: Row, trace) -> str:
    """The traced peak under a row: by part, and beside the predicted tensors."""
    if isinstance(trace, Exception):
        return f"      traced: not traced ({trace})"
    t, d = trace.parts, row.breakdown
    parts = " + ".join(f"{t[k] / GiB:.2f}" for k in ("weights", "quant_state", "prompt_optimizer", "activations",
                                                       "logits", "workspace"))
    return (f"      traced: {trace.peak / GiB:.2f} GB of live CUDA tensors at the peak ({trace.peak_region}) = {parts} "
            f"(weights + quantisation state + prompt/optimizer + activations + logits + workspace); predicted "
            f"tensors {d.tensors / GiB:.2f} ({d.tensors / trace.peak:.2f}x the trace); + runtime "
            f"{d.runtime / GiB:.2f} = {(trace.peak + d.runtime) / GiB:.2f}"
            + "".join(f"\n      note: {n}" for n in trace.notes))


def render(req: Request, rows: list[Row], trace: int = 0) -> str:
    a, b, hw = req.arch, req.base, req.hardware
    shown = select(rows, req.show_all)
    traces = trace_rows(req, shown[:req.top], trace) if trace and shown else {}
    fitting = sum(r.fits for r in rows)
    where = f"{hw.gpus} x {hw.gpu_mem / GiB:g} GB" + (f" x {hw.nodes} nodes" if hw.nodes > 1 else "")
    device = "GPU" if hw.device == "gpu" else "process (CPU)"
    unit = "example" if b.packing and b.task == "classification" else "row"  # what the LM head scores
    lines = [
        f"model: {a.name} ({a.total_params / 1e9:.2f}B parameters, {a.num_layers} layers, hidden {a.hidden_size}, "
        f"heads {a.num_heads}/{a.num_kv_heads} kv, vocab {a.vocab_size}; from {a.source or 'built-in'})",
        f"method: {b.method.name}, {b.method.num_virtual_tokens} virtual tokens, {rows[0].breakdown.trainable_params:,} "
        f"trainable parameters; batch {b.batch_size} x {b.max_length} tokens per {device}"
        + (f" (packed, {b.sequences_per_row} examples a row)" if b.packing else "") + f", {b.task} "
        f"({f'LM head on {b.label_tokens} labelled token(s) per {unit}' if not b.head_classes else 'head'})",
        f"hardware: {where} ({hw.world} {device}{'s' if hw.world > 1 else ''}"
        + (f"; the memory of this machine's {hw.detected}" if hw.detected else "")
        + (f"; {hw.gpu_mem / GiB:g} GB assumed" if hw.sources.get("gpu_mem", "").startswith("assumed") else "")
        + f"), runtime overhead {hw.runtime_bytes / GiB:.2f} GB per {device}",
        hardware_origins(hw, "GPU" if hw.device == "gpu" else "process"),
        f"{fitting} of {len(rows)} setups fit" + ("" if req.show_all else
                                                  "; best first, the largest micro-batch of each kind")
        + ". Predicted peak per " + device + " in GB = weights + ZeRO-3 gathered + prompt/grad/optimizer "
        "+ activations + logits + workspace - overlap (logits and a layer's backward are never live at once) "
        "+ runtime.",
        "",
    ]
    if not shown:
        smallest = min(rows, key=lambda r: r.peak)
        guessed = hw.sources.get("gpu_mem", "").startswith("assumed")
        assumed = " (assumed: hardware.gpu_mem=... sets it)" if guessed else ""
        lines.append(f"nothing fits in {hw.gpu_mem / GiB:g} GB{assumed}; the smallest setup needs "
                     f"{smallest.peak / GiB:.1f} GB per {device}: {' '.join(smallest.overrides)}")
        return "\n".join(lines)
    header = f"{'#':>3} {'fits':4} {'base':6} {'ckpt':4} {'micro x accum':13} {'engine':22} {'peak GB':>8}  breakdown"
    lines.append(header)
    for i, r in enumerate(shown[:req.top], 1):
        s, d = r.setup, r.breakdown
        parts = "+".join(f"{x / GiB:.2f}" for x in (d.frozen_weights, d.zero3_gathered, d.trainable + d.optimizer,
                                                     d.activations, d.logits, d.workspace)) + \
            f"-{d.overlap / GiB:.2f}+{d.runtime / GiB:.2f}"
        host = f" (host {d.host / GiB:.1f} GB)" if d.host else ""
        lines.append(f"{i:>3} {'yes' if r.fits else 'no':4} {base_name(s):6} {'on' if s.gradient_checkpointing else 'off':4} "
                     f"{f'{s.batch_size} x {s.grad_accum}':13} {_engine_name(s, hw.world):22} {r.peak / GiB:8.2f}  "
                     f"{parts}{host}")
        lines.append(f"      {command_for(s, req)}")
        if id(r) in traces:
            lines.append(trace_line(r, traces[id(r)]))
    if len(shown) > req.top:
        lines.append(f"... {len(shown) - req.top} more (plan.top=N)")
    if hw.device == "cpu" and any(r.setup.engine == "deepspeed" and r.setup.zero_stage == 3 for r in shown[:req.top]):
        lines.append(CPU_ZERO3_NOTE)
    return "\n".join(lines)


def run(args: list[str], trace: int = 0) -> str:
    """`ptune plan`'s output; `trace`: how many of the setups listed to trace (plan/trace.py)."""
    req = parse_request(args)
    return render(req, plan(req), trace)
