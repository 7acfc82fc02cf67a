"""Collectives that every rank calls; with one process they do nothing."""

from __future__ import annotations

import torch
import torch.distributed as tdist

from ptune_dist.launcher.env import DistEnv


def init(env: DistEnv) -> None:
    if env.world > 1 and not tdist.is_initialized():
        # the plain engine keeps the model on the CPU, so gloo; GPU ranks come with the DeepSpeed engine
        tdist.init_process_group("gloo", init_method=f"tcp://{env.master_addr}:{env.master_port}",
                                 rank=env.rank, world_size=env.world)


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
