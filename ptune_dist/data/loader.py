"""The training order: reproducible, resumable, and the same whatever the number of processes.

Epoch e shuffles the examples with seed + e. Global batch g is the slice [g*G, (g+1)*G) of that
order, G = batch_size * world; rank r takes its r-th share. The state is (epoch, global batches
done), so a run saved on 2 ranks resumes on 1 or 4 with the same data, and resuming needs no
replay of the data before it.
"""

from __future__ import annotations

import math

import torch

from .collate import collate
from .encode import Example


class TrainLoader:
    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        seed: int,
        pad_id: int,
        padding_side: str,
        rank: int = 0,
        world: int = 1,
    ):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.pad_id, self.padding_side, self.rank, self.world = pad_id, padding_side, rank, world
        self.global_batch = batch_size * world
        if len(examples) < self.global_batch:
            raise ValueError(
                f"{len(examples)} training examples are fewer than one global batch "
                f"({batch_size} x {world} processes): lower data.batch_size"
            )
        self.epoch, self.position = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.global_batch

    def order(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed + epoch))

    def __iter__(self):
        while True:
            order = self.order(self.epoch)
            while self.position < self.batches_per_epoch:
                start = self.position * self.global_batch + self.rank * self.batch_size
                idx = order[start : start + self.batch_size].tolist()
                self.position += 1
                yield collate([self.examples[i] for i in idx], self.pad_id, self.padding_side)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "global_batch": self.global_batch,
            "examples": len(self.examples),
        }

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint's loader state, each value checked with its type and domain first (a string or a
        position past the epoch's end would be taken in and fail, or skip data, steps later)."""
        for key, most in (
            ("epoch", None),
            ("position", self.batches_per_epoch),
            ("global_batch", None),
            ("examples", None),
        ):
            v = state.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (most is not None and v > most):
                limit = f" and <= {most} (the batches of an epoch)" if most is not None else ""
                raise ValueError(f"state.json loader.{key}={v!r} is not a whole number >= 0{limit}")
        if state["global_batch"] != self.global_batch or state["examples"] != len(self.examples):
            raise ValueError(
                f"the checkpoint's data order ({state['examples']} examples, global batch "
                f"{state['global_batch']}) differs from this run's ({len(self.examples)}, "
                f"{self.global_batch}); keep data.batch_size x processes and the data the same"
            )
        self.epoch, self.position = state["epoch"], state["position"]


def eval_batches(
    examples: list[Example], batch_size: int, pad_id: int, padding_side: str, rank: int = 0, world: int = 1
):
    """This rank's share of the evaluation examples, in order, in batches.

    Every rank yields the same number of batches, because a forward under ZeRO-3 is a collective: a
    rank whose share has run out yields a stand-in batch marked "skip", to run and not to count.
    """
    mine = examples[rank::world]
    for i in range(math.ceil(math.ceil(len(examples) / world) / batch_size)):
        chunk = mine[i * batch_size : (i + 1) * batch_size]
        batch = collate(chunk or examples[:1], pad_id, padding_side)
        if not chunk:
            batch["skip"] = True
        yield batch
