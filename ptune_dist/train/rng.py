"""The random state of a run's ranks (dropout, anything else random), as a part the checkpointer saves
and restores (checkpoint/checkpointer.py):

    state_dict() -> {"ranks": [{"cpu": torch's CPU state, "python": random.getstate(),
                                "cuda": the current GPU's state, or None}, one per rank]}
                    a collective: every rank calls it and gets every rank's state
    load_state_dict({"ranks": [...], "step": the checkpoint's step})
                    each rank restores its own entry (the GPU's only when it runs on one now); a rank
                    the saving run did not have (it ran on fewer) starts a fresh stream of its own,
                    seeded from the step and the rank, so that too is reproducible
"""

from __future__ import annotations

import random

import torch

from . import dist


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


class RankRng:
    def __init__(self, rank: int):
        self.rank = rank

    def state_dict(self) -> dict:
        own = {
            "cpu": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if _cuda_in_use() else None,
        }
        return {"ranks": dist.gather_objects(own)}

    def load_state_dict(self, sd: dict) -> None:
        ranks, rank = sd["ranks"], self.rank
        if rank < len(ranks) and ranks[rank]["cpu"] is not None:
            torch.set_rng_state(ranks[rank]["cpu"])
            random.setstate(ranks[rank]["python"])
            if ranks[rank]["cuda"] is not None and _cuda_in_use():
                torch.cuda.set_rng_state(ranks[rank]["cuda"])  # a GPU run resumed on a GPU (the CPU has none)
        else:  # saved by fewer ranks: a fresh stream of its own, reproducible from the step
            torch.manual_seed(1_000_003 * sd["step"] + rank)
            random.seed(1_000_003 * sd["step"] + rank)
