"""What `ptune plan` is asked: the Setup (one way of running a method on a model, what decides the memory of
a device) and the Setup a run config describes.

    Setup                                one setup: the method, the batch, the base, the engine, the world
    method_section(setup)                the run config's method section the setup describes
    setup_from_config(cfg, arch, plan)   the Setup a run config (file + overrides) describes
    planned_kernel(attention, dtype, device)  the prefix-attention kernel a run will use
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptune_dist.config.schema import MethodConfig, RunConfig
from ptune_dist.errors import ConfigError
from ptune_dist.methods import DEFAULT_METHOD

from .arch import Arch

COUNT_MAX = {"hardware.gpus": 1024, "hardware.nodes": 65536, "plan.top": 10**6}


@dataclass(frozen=True)
class Setup:
    """One way of running a method on a model: what decides the memory of a device."""

    method: str = DEFAULT_METHOD  # method.name; the method's class answers for it (ptune_dist/methods hooks)
    num_virtual_tokens: int = 20
    encoder: str = "mlp"  # a shallow prompt's encoder: mlp | lstm
    encoder_hidden_size: int = 0  # 0: hidden size
    projection: bool | None = None  # deep prompts: None = the method's default
    projection_hidden_size: int = 512
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

    @property
    def zero(self) -> int:
        return self.zero_stage if self.engine == "deepspeed" else 0



def method_section(s: Setup) -> MethodConfig:
    """The run config's method section that the setup describes (what the method hooks take)."""
    return MethodConfig(name=s.method, num_virtual_tokens=s.num_virtual_tokens, encoder=s.encoder,
                        encoder_hidden_size=s.encoder_hidden_size, projection=s.projection,
                        projection_hidden_size=s.projection_hidden_size)



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
        method=cfg.method.name, num_virtual_tokens=cfg.method.num_virtual_tokens, encoder=cfg.method.encoder,
        encoder_hidden_size=cfg.method.encoder_hidden_size, projection=cfg.method.projection,
        projection_hidden_size=cfg.method.projection_hidden_size, task=ttype, label_tokens=label_tokens,
        head_classes=head, batch_size=d.batch_size, grad_accum=cfg.train.grad_accum, max_length=d.max_length,
        packing=d.packing, sequences_per_row=per_row,
        dtype=m.dtype, quant=m.quant, quant_double=m.quant_double, quant_storage=m.quant_storage,
        gradient_checkpointing=m.gradient_checkpointing, lean_activations=m.lean_activations,
        attention=planned_kernel(m.attention, m.dtype, device), optimizer=cfg.train.optimizer,
        engine=dist.engine, zero_stage=dist.zero_stage, offload_optimizer=dist.offload_optimizer,
        offload_params=dist.offload_params, world=1, zero_extra=dict(dist.zero_extra))
