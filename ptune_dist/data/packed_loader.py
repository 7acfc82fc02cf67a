"""The training order with packed rows (data.packing): reproducible, resumable, the same on any number of
ranks, like TrainLoader (loader.py), with rows of packed examples in place of single examples.

Epoch e shuffles the examples with seed + e (TrainLoader's order) and packs them in that order into rows of
`capacity` tokens (packing.pack). Global batch g is rows [g*G, (g+1)*G), G = batch_size * world; rank r takes
its r-th share. The packing follows from (seed, epoch, lengths, capacity), so the state stays (epoch, global
batches done): a resume rebuilds the epoch's rows instead of storing them, on 1 rank or on 4.

`packed_eval_batches` is eval_batches (loader.py) with packed rows: each rank's share, in order, packed.
"""

from __future__ import annotations

import math

from .encode import Example
from .loader import TrainLoader
from .packing import collate_packed, pack


class PackedTrainLoader(TrainLoader):
    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        seed: int,
        pad_id: int,
        capacity: int,
        rank: int = 0,
        world: int = 1,
    ):
        super().__init__(examples, batch_size, seed, pad_id, "right", rank, world)
        self.capacity = capacity
        self._rows: tuple[int, list[list[int]]] | None = None  # (epoch, rows of example indices)
        if len(self.rows(0)) < self.global_batch:
            raise ValueError(
                f"{len(examples)} training examples pack into {len(self.rows(0))} rows of {capacity} "
                f"tokens, fewer than one global batch ({batch_size} x {world} processes): lower "
                "data.batch_size"
            )

    def rows(self, epoch: int) -> list[list[int]]:
        if self._rows is None or self._rows[0] != epoch:
            order = self.order(epoch).tolist()
            packed = pack([len(self.examples[i].input_ids) for i in order], self.capacity)
            self._rows = (epoch, [[order[j] for j in row] for row in packed])
        return self._rows[1]

    def __iter__(self):
        while True:
            rows = self.rows(self.epoch)
            while self.position < len(rows) // self.global_batch:
                start = self.position * self.global_batch + self.rank * self.batch_size
                self.position += 1
                yield collate_packed(
                    [[self.examples[i] for i in row] for row in rows[start : start + self.batch_size]],
                    self.pad_id,
                    self.capacity,
                )
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {**super().state_dict(), "packing": self.capacity}

    def load_state_dict(self, state: dict) -> None:
        if state.get("packing", 0) != self.capacity:
            raise ValueError(
                f"the checkpoint's rows were packed to {state.get('packing', 0)} tokens (0: not packed), "
                f"this run's to {self.capacity}; keep data.packing and data.max_length"
            )
        super().load_state_dict(state)


def packed_eval_batches(
    examples: list[Example], batch_size: int, pad_id: int, capacity: int, rank: int = 0, world: int = 1
):
    """This rank's share of the evaluation examples (examples[rank::world], in order) packed into rows of
    `capacity` tokens, `batch_size` rows a batch. Every rank yields the same number of batches, as a forward
    under ZeRO-3 is a collective: a rank whose rows have run out yields a stand-in batch marked "skip"."""
    shares = [examples[r::world] for r in range(world)]
    rows = [pack([len(ex.input_ids) for ex in share], capacity) for share in shares]
    mine = shares[rank]
    for i in range(max(math.ceil(len(r) / batch_size) for r in rows)):
        chunk = rows[rank][i * batch_size : (i + 1) * batch_size]
        batch = collate_packed([[mine[j] for j in row] for row in chunk] or [[examples[0]]], pad_id, capacity)
        if not chunk:
            batch["skip"] = True
        yield batch
