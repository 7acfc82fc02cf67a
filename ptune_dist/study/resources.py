"""Each study cell's resources, asked of the planner (`ptune plan`, ptune_dist/plan) for the cluster that
study.hardware describes: GPUs per node, the memory of one GPU, and how many full nodes a cell may take.

The policy, for one cell's run config (built with the user's overrides):
- world sizes ascending: 1, 2, 4, ... GPUs up to gpus_per_node on one node, then 2 ... max_nodes full nodes.
  With study.global_batch > 0, only the worlds that divide it: each GPU takes global_batch / world examples a
  step (data.batch_size x train.grad_accum), so every size trains with the same batch;
- two passes: first only setups with an unquantised base and no offload (a study compares model sizes; a
  quantised or offloaded base changes the model or its speed), then any setup that fits. The smallest world
  that fits in the first pass wins, else the smallest of the second; within a world, the planner's best
  (search.select: no ZeRO-3 before ZeRO-3, bf16 before fp32, no checkpointing, the largest micro-batch);
- the keys the user set for the cell (the command line, study.method_overrides, study.model_overrides) are the
  planner's fixed keys (Request.fixed), so an explicit model.quant=int8 for a 70B wins; launch.nproc_per_node,
  launch.nnodes or launch.gpus_per_node set there fix the world;
- nothing fits: a ConfigError naming the cell, its model and the smallest peak found.

Models are read offline: a built-in planner name, the hub id of one (search.HUB_IDS), embedded:NAME or a local
HF folder. Host memory is not bounded here: an offloading setup (second pass only) needs it on the nodes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import ConfigError
from ptune_dist.plan import (
    HUB_IDS,
    Arch,
    GiB,
    Hardware,
    Request,
    Row,
    Setup,
    base_name,
    engine_label,
    overrides_for,
    parse_size,
    plan,
    resolve_arch,
    select,
    setup_from_config,
)

BUILTIN_OF_HUB_ID = {hub_id.lower(): name for name, hub_id in HUB_IDS.items()}
WORLD_KEYS = {"launch.nproc_per_node", "launch.nnodes", "launch.gpus_per_node"}
# what overrides_for leaves out when it is off; a cell's config file may say otherwise, so it is said
OFF = {
    "model.quant": "none",
    "model.gradient_checkpointing": "false",
    "train.grad_accum": "1",
    "distributed.engine": "torch",
    "distributed.zero_stage": "0",
    "distributed.offload_optimizer": "false",
    "distributed.offload_params": "false",
}
NOT_FOUR_BIT = {"model.quant_compute_dtype": "auto", "model.quant_storage": "uint8", "model.quant_double": "false"}


@dataclass(frozen=True)
class Cluster:
    gpus_per_node: int
    max_nodes: int
    gpu_mem: float  # bytes
    global_batch: int  # 0: data.batch_size stays the batch per device


@dataclass(frozen=True)
class Planned:
    """The setup a cell runs: the planner's Setup on gpus x nodes, and its predicted peak per GPU."""

    setup: Setup
    gpus: int
    nodes: int
    peak: float
    device: str = "gpu"

    @property
    def world(self) -> int:
        return self.gpus * self.nodes

    def label(self) -> str:
        """e.g. 'bf16, 4 x 8, plain, 1 GPU, 12.3 GB' (micro-batch x accumulation, the peak per GPU)."""
        s = self.setup
        where = f"{self.world} GPU{'s' * (self.world > 1)}" + (f" on {self.nodes} nodes" if self.nodes > 1 else "")
        ckpt = ", checkpointing" if s.gradient_checkpointing else ""
        return (
            f"{base_name(s)}{ckpt}, {s.batch_size} x {s.grad_accum}, {engine_name(s, self.world)}, {where}, "
            f"{self.peak / GiB:.1f} GB"
        )

    def describe(self) -> dict:
        """What study.json records of the cell's resources."""
        s = self.setup
        return {
            "label": self.label(),
            "gpus": self.world,
            "nodes": self.nodes,
            "base": base_name(s),
            "engine": engine_name(s, self.world),
            "micro_batch": s.batch_size,
            "grad_accum": s.grad_accum,
            "gradient_checkpointing": s.gradient_checkpointing,
            "peak_gb": round(self.peak / GiB, 1),
        }


def engine_name(s: Setup, world: int) -> str:
    return engine_label(s, world, count=False)  # the planner's words, without the rank count (said beside it)


# -- the study's section --------------------------------------------------------------------------
def cluster_of(cfg: RunConfig) -> Cluster | None:
    """study.hardware and study.global_batch, checked; None without study.hardware.gpu_mem (no planning)."""
    s, hw = cfg.study, cfg.study.hardware
    if not hw.gpu_mem.strip():
        if s.global_batch:
            raise ConfigError(
                f"study.global_batch={s.global_batch} is shared out over the GPUs the planner gives "
                "each cell; set study.hardware.gpu_mem too (e.g. 80GB), or study.global_batch=0 to "
                "keep data.batch_size the batch per device"
            )
        return None
    if hw.max_nodes > 1 and cfg.launch.backend != "slurm":
        raise ConfigError(
            f"study.hardware.max_nodes={hw.max_nodes} needs launch.backend=slurm: the local queue runs "
            "each cell on this machine (set study.hardware.max_nodes=1)"
        )
    return Cluster(hw.gpus_per_node, hw.max_nodes, parse_size(hw.gpu_mem, "study.hardware.gpu_mem"), s.global_batch)


def worlds(c: Cluster) -> list[tuple[int, int]]:
    """(GPUs per node, nodes), smallest first: 1, 2, 4, ... gpus_per_node on one node, then full nodes."""
    one_node, g = [], 1
    while g < c.gpus_per_node:
        one_node.append(g)
        g *= 2
    return [(g, 1) for g in [*one_node, c.gpus_per_node]] + [(c.gpus_per_node, n) for n in range(2, c.max_nodes + 1)]


def arch_of(model: str) -> Arch:
    """The planner's description of a study model, read offline (never the weights)."""
    name = BUILTIN_OF_HUB_ID.get(model.lower(), model)
    try:
        return resolve_arch(name, key="model")
    except ConfigError as e:
        raise ConfigError(
            f"study.models: {model!r}: the planner cannot read its architecture offline ({e}); give a "
            "local HF folder, embedded:NAME or a built-in name (or its hub id, e.g. "
            f"{HUB_IDS['llama-3.1-70b']}), or leave study.hardware.gpu_mem unset to keep the config's "
            "resources"
        ) from None


def user_keys(settings: list[str]) -> frozenset[str]:
    """The dotted keys of key=value settings (tasks[0].x written tasks.0.x)."""
    return frozenset(s.split("=", 1)[0].strip().replace("[", ".").replace("]", "") for s in settings if "=" in s)


# -- one cell -------------------------------------------------------------------------------------
def base_setup(
    cfg: RunConfig, arch: Arch, world: int, fixed: frozenset, c: Cluster, device: str
) -> tuple[Setup, frozenset] | None:
    """The planner's starting Setup and fixed keys on `world` GPUs; None when global_batch cannot be shared out
    there (with the user's data.batch_size and train.grad_accum as set)."""
    s = setup_from_config(cfg, arch, {}, device)
    given_batch, given_accum = "data.batch_size" in fixed, "train.grad_accum" in fixed
    if given_batch:  # the micro-batch as the user gave it: the planner keeps train.grad_accum too
        fixed = fixed | {"train.grad_accum"}
    if not c.global_batch:
        return s, fixed
    per_device, left = divmod(c.global_batch, world)
    batch, accum = cfg.data.batch_size, cfg.train.grad_accum
    if given_batch and given_accum:
        micro = batch if per_device == batch * accum and not left else 0
    elif given_batch or given_accum:
        step = batch if given_batch else accum
        micro, accum = (batch, per_device // batch) if given_batch else (per_device // accum, accum)
        micro = 0 if left or per_device % step else micro
    else:
        micro, accum = (0 if left else per_device), 1  # the planner splits it into micro-batch x accumulation
    return (dataclasses.replace(s, batch_size=micro, grad_accum=accum), fixed) if micro else None


def request(
    cfg: RunConfig, arch: Arch, base: Setup, fixed: frozenset, gpus: int, nodes: int, c: Cluster, device: str
) -> Request:
    """The planner's request for one world (no model or method in the overrides: the cell sets them)."""
    return Request(
        arch=arch,
        base=base,
        fixed=set(fixed),
        config_file="study cell",
        hardware=Hardware(gpus=gpus, nodes=nodes, gpu_mem=c.gpu_mem, device=device),
        backend=cfg.launch.backend,
        attention=cfg.model.attention,
    )


def rows_for(req: Request) -> tuple[list[Row], Row]:
    """(the fitting rows best first, the row of the smallest peak) of one request."""
    rows = plan(req)
    return select(rows), min(rows, key=lambda r: r.peak)


def keeps_the_model(s: Setup) -> bool:
    """The first pass: an unquantised base, nothing offloaded."""
    return s.quant == "none" and not (s.offload_optimizer or s.offload_params)


def candidates(cfg: RunConfig, arch: Arch, fixed: frozenset, c: Cluster, device: str) -> list[tuple[Request, tuple]]:
    """(request, its rows) of every world tried, smallest first."""
    if fixed & WORLD_KEYS:
        tried = [(cfg.launch.nproc_per_node, cfg.launch.nnodes)]
    else:
        tried = worlds(c)
    out = []
    for gpus, nodes in tried:
        start = base_setup(cfg, arch, gpus * nodes, fixed, c, device)
        if start is not None:
            req = request(cfg, arch, start[0], start[1], gpus, nodes, c, device)
            out.append((req, rows_for(req)))
    return out


def plan_cell(cfg: RunConfig, cell_id: str, model: str, fixed: frozenset, c: Cluster) -> tuple[Planned, Request]:
    """The cell's setup by the policy above (and the request it was planned for), or a ConfigError."""
    arch = arch_of(model)
    device = "cpu" if cfg.train.device == "cpu" else "gpu"
    tried = candidates(cfg, arch, fixed, c, device)
    if not tried:
        raise ConfigError(
            f"study cell {cell_id}: study.global_batch={c.global_batch} cannot be shared out: no world "
            "tried divides it into data.batch_size x train.grad_accum per GPU (the user's batch "
            "settings kept)"
        )
    for keep in (keeps_the_model, lambda s: True):
        for req, (fitting, _) in tried:
            rows = [r for r in fitting if keep(r.setup)]
            if rows:
                hw = req.hardware
                return Planned(rows[0].setup, hw.gpus, hw.nodes, rows[0].peak, device), req
    req, (_, smallest) = min(tried, key=lambda t: t[1][1].peak)
    hw = req.hardware
    raise ConfigError(
        f"study cell {cell_id}: model {model} fits no setup on study.hardware ({c.gpus_per_node} x "
        f"{c.gpu_mem / GiB:g} GB GPUs a node, at most {c.max_nodes} node(s)); the smallest needs "
        f"{smallest.peak / GiB:.1f} GB per GPU on {hw.world} GPU(s): {' '.join(smallest.overrides)}"
    )


def settings(planned: Planned, req: Request, cfg: RunConfig, fixed: frozenset) -> list[str]:
    """key=value of the planned setup and GPUs that differ from the cell's config; the user's keys left out."""
    values = {**OFF, **dict(o.split("=", 1) for o in overrides_for(planned.setup, req))}
    if planned.setup.quant not in ("nf4", "fp4"):
        values.update(NOT_FOUR_BIT)
    values.update({"launch.nproc_per_node": str(planned.gpus), "launch.nnodes": str(planned.nodes)})
    if cfg.launch.backend == "slurm" and planned.device == "gpu":
        values["launch.gpus_per_node"] = str(planned.gpus)  # one GPU per rank (launcher/slurm.py)
    return [f"{k}={v}" for k, v in values.items() if k not in fixed and v != current(cfg, k)]


def current(cfg: RunConfig, key: str) -> str:
    """A config value written as an override would write it."""
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    return str(value).lower() if isinstance(value, bool) else str(value)
