"""Where this process stands in a job: rank, world size, local rank and rendezvous address (below both
the launcher, which starts ranks, and the trainer, which runs as one).

Read from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or, inside
a Slurm step, from SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; a plain process is rank 0 of 1.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ=None) -> DistEnv:
        env = os.environ if environ is None else environ
        if "RANK" in env and "WORLD_SIZE" in env:
            rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
        else:
            return cls()
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside world size {world}")
        return cls(rank, world, local, env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)))


def free_port() -> int:
    """A TCP port nobody listens on right now (for a rendezvous on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
