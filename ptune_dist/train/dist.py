"""Collectives that every rank calls; with one process they do nothing.

A collective waits at most distributed.timeout_s (the process group's timeout). gloo raises then (and at
once when a peer's connection closes). On NCCL the watchdog ends it: TORCH_NCCL_ASYNC_ERROR_HANDLING=3
(torch's default, set here unless the user set it) tears the rank down when a collective runs past the
timeout, without waiting on the broken communicator; TORCH_NCCL_BLOCKING_WAIT stays 0, since a blocking
wait would make the host wait for every collective (a sync per step, tests/test_sync_free.py). Naming the
rank that did not answer, with one line and status 97, is train/peers.py's part (its heartbeat thread ends
the rank before the watchdog's abort, which would leave no line)."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as tdist

from ptune_dist import embedded
from ptune_dist.device import backend, tensor_backend
from ptune_dist.rank_env import DistEnv, free_port


def init(env: DistEnv, engine: str = "torch", timeout_s: int = 300, device: torch.device | None = None) -> None:
    """Join the process group: always for DeepSpeed (it needs one, also alone), else when world > 1.
    The backend follows the rank's device (device.backend): NCCL for GPU tensors with gloo beside it,
    gloo alone on CPUs. The group is made here for both engines; DeepSpeed then adopts it."""
    if tdist.is_initialized() or (engine == "torch" and env.world == 1):
        return
    device = device or torch.device("cpu")
    port = env.master_port if env.world > 1 else free_port()
    extra = {}
    if tensor_backend(device) == "nccl" and env.world > 1:
        extra["device_id"] = device  # binds NCCL to this rank's GPU at once (eager init)
        if "NCCL_ASYNC_ERROR_HANDLING" not in os.environ:  # torch's older name, which the user may have set
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")  # read when the group is made
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "0")
    tdist.init_process_group(
        backend(device),
        init_method=f"tcp://{env.master_addr}:{port}",
        rank=env.rank,
        world_size=env.world,
        timeout=timedelta(seconds=timeout_s),
        **extra,
    )
    if engine == "deepspeed":
        import deepspeed

        # DeepSpeed makes LOCAL_RANK its current device: the GPU index (0 when a launcher bound one GPU to the task)
        local = device.index if device.type == "cuda" else env.local_rank
        for key, value in (
            ("RANK", env.rank),
            ("WORLD_SIZE", env.world),
            ("LOCAL_RANK", local),
            ("MASTER_ADDR", env.master_addr),
            ("MASTER_PORT", port),
        ):
            os.environ.setdefault(key, str(value))
        # DeepSpeed compiles a shared-memory op at first use on CPUs (~30 s); keep it next to the models
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(embedded.home() / "torch_extensions"))
        deepspeed.init_distributed(
            dist_backend=tensor_backend(device), timeout=timedelta(seconds=timeout_s), auto_mpi_discovery=False
        )


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if active():
        tdist.barrier()


def broadcast_object(obj, src: int = 0):
    if not active():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not active():
        return [obj]
    out = [None] * tdist.get_world_size()
    tdist.all_gather_object(out, obj)
    return out
