"""What `ptune plan` is asked: the request read from the command line and the run config, the hardware and
where each figure of it came from, and the Setup (one way of running a method on a model: what decides the
memory of a device) that a run config describes.

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

    parse_request(args) -> Request       the command line read: model, run config, hardware, plan.* keys
    parse_size(text, key) -> bytes       '24GB', '80GiB', ... (a unit is required)
    setup_from_config(cfg, arch, plan)   the Setup a run config (file + overrides) describes
    planned_kernel(attention, dtype, device)  the prefix-attention kernel a run will use (kernels/auto.py's rule)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ptune_dist.config.schema import RunConfig
from ptune_dist.device import gpu_memories, on_gpu
from ptune_dist.errors import ConfigError
from ptune_dist.kernels.auto import rule as kernel_rule
from ptune_dist.methods import MethodConfig, method_class

from .arch import Arch, is_builtin, resolve_arch

GiB = 2**30
GPU_RUNTIME = 1.0 * GiB  # CUDA context, cuBLAS/cuDNN workspaces, allocator slack: an assumption, see docs/plan.md
# This CPU (2 cores, torch 2.13, tcmalloc): what a `ptune train` process holds besides the tensors of the
# model, measured once by bench/memory_plan.py (calibration cell) and written into docs/plan.md
CPU_RUNTIME = 71 * 2**20
HARDWARE_KEYS = {
    "gpus": "GPUs per node",
    "nodes": "nodes",
    "gpu_mem": "memory of one GPU, e.g. 24GB",
    "device": "gpu | cpu (cpu: one process per 'GPU', memory = RAM per process)",
    "runtime": "non-tensor memory per process, e.g. 1GB (default: 1GB on a GPU, calibrated on CPU)",
}
PLAN_KEYS = {
    "label_tokens": "labelled tokens per row that reach the LM head (generation; default max_length/4)",
    "sequences_per_row": "data.packing: examples per packed row (default max_length/128, at least 1)",
    "all": "true: every micro-batch and also the setups that do not fit",
    "top": "how many setups to print (default 20)",
}
HUB_IDS = {
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-2-13b": "meta-llama/Llama-2-13b-hf",
    "llama-65b": "huggyllama/llama-65b",
    "llama-2-70b": "meta-llama/Llama-2-70b-hf",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "chatglm-6b": "THUDM/chatglm-6b",
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
# what a size may be: from the memory of a process (hardware.device=cpu) to far beyond any GPU
SIZE_RANGE = {
    "hardware.gpu_mem": (2**20, 2**50),
    "hardware.runtime": (0, 2**50),
    "study.hardware.gpu_mem": (2**20, 2**50),
}
COUNT_MAX = {"hardware.gpus": 1024, "hardware.nodes": 65536, "plan.top": 10**6}


@dataclass(frozen=True)
class Setup:
    """One way of running a method on a model: what decides the memory of a device."""

    # the run config's method section (its method's Config, ptune_dist/methods), whose class answers for it;
    # a method name stands for that method's section at its defaults
    method: MethodConfig = field(default_factory=MethodConfig, hash=False)
    task: str = "classification"  # classification | generation | token_classification
    label_tokens: int = 1  # positions per row that reach the LM head (classification: 1)
    head_classes: int = 0  # a classification head (scoring=head) instead of the LM head
    batch_size: int = 8  # micro-batch per device
    grad_accum: int = 1
    max_length: int = 256  # tokens per row, virtual tokens included
    packing: bool = False  # data.packing: examples packed end to end in rows of max_length tokens
    sequences_per_row: int = 1  # packed rows: the examples in each (classification scores each one)
    dtype: str = "float32"
    quant: str = "none"
    quant_double: bool = False
    quant_storage: str = "uint8"  # 4-bit: the float dtype ZeRO-3 partitions the packed weights in
    gradient_checkpointing: bool = False
    lean_activations: bool = True
    attention: str = "sdpa"  # the kernel: sdpa copies the prefix into every row's keys/values
    optimizer: str = "adamw"
    engine: str = "torch"
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    world: int = 1  # ranks (GPUs) in all
    zero_extra: dict = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self):
        if isinstance(self.method, str):
            object.__setattr__(self, "method", method_class(self.method).section())

    @property
    def zero(self) -> int:
        return self.zero_stage if self.engine == "deepspeed" else 0


def method_section(s: Setup) -> MethodConfig:
    """The run config's method section the setup holds (what the method hooks take)."""
    return s.method


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


def planned_kernel(attention: str, dtype: str, device: str) -> str:
    """The prefix-attention kernel a run will use: with `auto`, kernels/auto.py's rule for the run's device
    (gpu: CUDA, where Triton, a requirement, is taken to run and flash-attn, optional, not), which picks the
    shared-prefix Triton kernel in fp16/bf16 and SDPA (the prefix copied into every row's keys/values)
    otherwise; `reference` copies the prefix as SDPA does."""
    if attention == "auto":
        return kernel_rule("cuda" if device == "gpu" else "cpu", dtype, can_run=lambda name: name == "triton")
    return "sdpa" if attention == "reference" else attention


def setup_from_config(cfg: RunConfig, arch: Arch, plan: dict, device: str | None = None) -> Setup:
    """The Setup a run config describes; `device` (gpu | cpu) decides the `auto` attention kernel (default:
    the CPU for train.device=cpu or a machine without CUDA, else a GPU)."""
    if device is None:
        device = "gpu" if on_gpu(cfg.train.device) else "cpu"
    m, d, dist = cfg.model, cfg.data, cfg.distributed
    task = cfg.tasks[0] if cfg.tasks else None
    ttype = task.type if task else "classification"
    head = len(task.labels) if task and task.scoring == "head" else 0
    label_tokens = (
        _int(plan["label_tokens"], "plan.label_tokens", maximum=d.max_length)
        if "label_tokens" in plan
        else 1
        if ttype == "classification"
        else max(1, d.max_length // 4)
    )
    if ttype == "token_classification":
        head, label_tokens = max(head, 2), d.max_length
    per_row = (
        _int(plan["sequences_per_row"], "plan.sequences_per_row", maximum=d.max_length)
        if "sequences_per_row" in plan
        else max(1, d.max_length // 128)
    )
    return Setup(
        method=cfg.method,
        task=ttype,
        label_tokens=label_tokens,
        head_classes=head,
        batch_size=d.batch_size,
        grad_accum=cfg.train.grad_accum,
        max_length=d.max_length,
        packing=d.packing,
        sequences_per_row=per_row,
        dtype=m.dtype,
        quant=m.quant,
        quant_double=m.quant_double,
        quant_storage=m.quant_storage,
        gradient_checkpointing=m.gradient_checkpointing,
        lean_activations=m.lean_activations,
        attention=planned_kernel(m.attention, m.dtype, device),
        optimizer=cfg.train.optimizer,
        engine=dist.engine,
        zero_stage=dist.zero_stage,
        offload_optimizer=dist.offload_optimizer,
        offload_params=dist.offload_params,
        world=1,
        zero_extra=dict(dist.zero_extra),
    )


def parse_size(text: str, key: str) -> float:
    """'24GB', '80GiB', '24000MB', '1.5T' -> bytes. GB and GiB both mean 2**30 (a '24 GB' GPU has 24 GiB).
    A number without a unit is refused (24 bytes is never what `hardware.gpu_mem=24` means), and so is one
    outside SIZE_RANGE[key]."""
    m = _SIZE.match(str(text))
    if not m:
        raise ConfigError(f"{key}={text!r}: expected a size such as 24GB, 80GiB, 24000MB or 1.5TB")
    if not m.group(2):
        raise ConfigError(
            f"{key}={text!r}: a size needs its unit, e.g. {key}={m.group(1)}GB or {m.group(1)}GiB (or {m.group(1)}MB)"
        )
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
                raise ConfigError(
                    f"{arg!r}: expected a run config (CONFIG.yaml) or key=value "
                    "(model=..., method=..., hardware.gpus=...)"
                )
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
                raise ConfigError(
                    f"config key {key} is unknown; allowed here: " + ", ".join(f"hardware.{k}" for k in HARDWARE_KEYS)
                )
            hardware[name] = value
        elif key.startswith("plan."):
            name = key.split(".", 1)[1]
            if name not in PLAN_KEYS:
                raise ConfigError(
                    f"config key {key} is unknown; allowed here: " + ", ".join(f"plan.{k}" for k in PLAN_KEYS)
                )
            plan[name] = value
        else:
            overrides.append(arg)
    if files and model_file:
        raise ConfigError(f"model={model_file!r}: the run config is already given ({' '.join(files)}); give it once")
    if not (model or files or model_file):
        raise ConfigError(
            "give a run config (CONFIG.yaml) or model=<built-in name | embedded:NAME | HF folder | run config .yaml>"
        )
    arch = resolve_arch(model) if model else None
    if model:
        overrides.insert(0, f"model.name_or_path={model}")
    cfg = load_config(files or ([model_file] if model_file else []), _config_overrides(overrides, model))
    if arch is None:
        arch = resolve_arch(cfg.model.name_or_path, key="model.name_or_path")
    fixed = {o.split("=", 1)[0] for o in overrides} | _keys_set_in(files)
    hw = _hardware(hardware, cfg)
    base = setup_from_config(cfg, arch, plan, hw.device)
    return Request(
        arch=arch,
        base=base,
        fixed=fixed,
        hardware=hw,
        attention=cfg.model.attention,
        config_file=" ".join(files) or model_file,
        model_override=HUB_IDS.get(arch.name, model) if model else "",
        overrides=[o for o in overrides if o.split("=", 1)[0] not in PLANNED_KEYS],
        backend=cfg.launch.backend,
        slurm_gpus=cfg.launch.gpus_per_node > 0,
        show_all=_bool(plan.get("all", "false"), "plan.all"),
        top=_int(plan.get("top", "20"), "plan.top"),
        cfg=cfg,
        builtin=bool(model) and is_builtin(model),
    )


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
    hw = Hardware(
        gpus=cfg.launch.nproc_per_node, nodes=cfg.launch.nnodes, device="cpu" if cfg.train.device == "cpu" else "gpu"
    )
    hw.sources = {
        "gpus": "from launch.nproc_per_node",
        "nodes": "from launch.nnodes",
        "runtime": "assumed (CUDA context, workspaces, allocator slack: docs/plan.md; hardware.runtime=... to set it)"
        if hw.device == "gpu"
        else "assumed (hardware.runtime=... to set it)",
    }
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
            hw.sources["gpu_mem"] = (
                f"detected (this machine's {hw.detected}, by torch.cuda; hardware.gpu_mem=... for another)"
            )
        elif hw.device == "gpu":
            hw.sources["gpu_mem"] = (
                "assumed: this machine shows no GPU (torch.cuda); give hardware.gpu_mem=... "
                "for the GPU the run will have"
            )
        else:
            hw.sources["gpu_mem"] = "assumed (the memory of one process; hardware.gpu_mem=... to set it)"
    return hw


def local_gpu() -> tuple[float, str] | None:
    """(memory in bytes, name) of the smallest GPU this machine shows (device.py); None without one."""
    gpus = gpu_memories()
    if not gpus:
        return None
    memory, name = min(gpus, key=lambda g: g[0])
    return float(memory), name


def _config_overrides(overrides: list[str], model: str) -> list[str]:
    """The run config cannot load a built-in planner name as a model; keep it out of validation."""
    if model and not (model.startswith("embedded:") or Path(model).expanduser().exists()):
        return [o for o in overrides if not o.startswith("model.name_or_path=")]
    return overrides


# keys the commands set from the planned setup; the command line's other run-config keys go in as given
PLANNED_KEYS = {
    "model.name_or_path",
    "model.dtype",
    "model.quant",
    "model.quant_compute_dtype",
    "model.quant_storage",
    "model.gradient_checkpointing",
    "data.batch_size",
    "train.grad_accum",
    "distributed.engine",
    "distributed.zero_stage",
    "distributed.offload_optimizer",
    "distributed.offload_params",
    "launch.nproc_per_node",
    "launch.nnodes",
    "launch.gpus_per_node",
}
