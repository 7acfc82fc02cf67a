"""The setup search behind `ptune plan`: every setup the request leaves open (base, checkpointing,
micro-batch, engine), predicted (plan/memory.py), ranked fewest compromises first; and for each the run
config and the command line that run it.

    plan(request) -> [Row]           every setup, predicted, with whether it fits
    select(rows, show_all) -> [Row]  the fitting setups, best first, the largest micro-batch of each kind
    overrides_for / config_for / command_for(setup, request)   what runs a setup
    base_name(setup)                 the base as the tables name it (bf16, fp32, int8, nf4+dq, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ptune_dist.config.schema import RunConfig
from ptune_dist.methods import method_class

from .memory import Breakdown, predict
from .request import Request, Setup, planned_kernel

BASES_GPU = [("bfloat16", "none"), ("float32", "none"), ("bfloat16", "int8"), ("bfloat16", "nf4")]
BASES_CPU = [("float32", "none"), ("bfloat16", "none"), ("float32", "int8"), ("float32", "nf4")]


@dataclass
class Row:
    setup: Setup
    breakdown: Breakdown
    fits: bool
    overrides: list

    @property
    def peak(self) -> float:
        return self.breakdown.total


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
    if f & {
        "distributed.engine",
        "distributed.zero_stage",
        "distributed.offload_optimizer",
        "distributed.offload_params",
    }:
        return [
            dict(
                engine=base.engine,
                zero_stage=base.zero_stage,
                offload_optimizer=base.offload_optimizer,
                offload_params=base.offload_params,
            )
        ]
    plain = dict(engine="torch", zero_stage=0, offload_optimizer=False, offload_params=False)
    if base.optimizer != "adamw":  # ZeRO takes AdamW only (config validation: it undoes Adafactor's factoring)
        return [plain]
    z3 = dict(engine="deepspeed", zero_stage=3, offload_optimizer=False, offload_params=False)
    z3off = dict(engine="deepspeed", zero_stage=3, offload_optimizer=True, offload_params=True)
    out = [plain] + ([z3] if world > 1 else []) + [z3off]
    if method_class(base.method.name).trains_base and world > 1:
        out[1:1] = [
            dict(engine="deepspeed", zero_stage=s, offload_optimizer=False, offload_params=False) for s in (1, 2)
        ]
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
                    out.append(
                        replace(
                            b,
                            dtype=dtype,
                            quant=quant,
                            quant_storage=storage,
                            gradient_checkpointing=ckpt,
                            batch_size=micro,
                            grad_accum=b.grad_accum * max(1, target // micro),
                            world=req.hardware.world,
                            attention=planned_kernel(req.attention, dtype, req.hardware.device),
                            **eng,
                        )
                    )
    return out


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
            o.append(
                f"model.quant_storage={s.quant_storage}"
            )  # packed weights in a float dtype: ZeRO-3 can partition them
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
    m = replace(
        cfg.model,
        dtype=s.dtype,
        quant=s.quant,
        quant_double=s.quant_double,
        quant_compute_dtype="auto",
        gradient_checkpointing=s.gradient_checkpointing,
    )  # auto: the 4-bit matmul in model.dtype
    if s.quant in ("nf4", "fp4"):
        m = replace(m, quant_storage=s.quant_storage)
    return replace(
        cfg,
        model=m,
        data=replace(cfg.data, batch_size=s.batch_size),
        train=replace(cfg.train, grad_accum=s.grad_accum),
        distributed=replace(
            cfg.distributed,
            engine=s.engine,
            zero_stage=s.zero_stage,
            offload_optimizer=s.offload_optimizer,
            offload_params=s.offload_params,
        ),
    )


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
        key = (
            s.engine,
            s.zero_stage,
            s.offload_params,
            s.offload_optimizer,
            s.dtype,
            s.quant,
            s.gradient_checkpointing,
        )
        best.setdefault(key, r)
    return list(best.values())


def base_name(s: Setup) -> str:
    if s.quant == "none":
        return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[s.dtype]
    return s.quant + ("+dq" if s.quant_double else "")
