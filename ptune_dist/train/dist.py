"""Collectives that every rank calls; with one process they do nothing."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as tdist

from ptune_dist import embedded
from ptune_dist.launcher.env import DistEnv, free_port


def init(env: DistEnv, engine: str = "torch", timeout_s: int = 300) -> None:
    """Join the process group: always for DeepSpeed (it needs one, also alone), else when world > 1.
    Models stay on the CPU here, so the backend is gloo."""
    if tdist.is_initialized() or (engine == "torch" and env.world == 1):
        return
    timeout = timedelta(seconds=timeout_s)
    if engine == "deepspeed":
        import deepspeed

        port = env.master_port if env.world > 1 else free_port()
        for key, value in (("RANK", env.rank), ("WORLD_SIZE", env.world), ("LOCAL_RANK", env.local_rank),
                           ("MASTER_ADDR", env.master_addr), ("MASTER_PORT", port)):
            os.environ.setdefault(key, str(value))
        # DeepSpeed compiles a shared-memory op at first use (~30 s); keep it next to the models
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(embedded.home() / "torch_extensions"))
        deepspeed.init_distributed(dist_backend="gloo", timeout=timeout, auto_mpi_discovery=False)
        return
    tdist.init_process_group("gloo", init_method=f"tcp://{env.master_addr}:{env.master_port}",
                             rank=env.rank, world_size=env.world, timeout=timeout)



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
