"""The training batches, made ready on the host while the device runs the step before.

    Prefetch(loader, task_types, device, micro=1, depth=2)
        iterating gives one update's `micro` batches at a time, each described (data/host.py: what the host
        must know of it, read from its CPU tensors) and, for a GPU, pinned (device.pin), by a background thread
        that keeps up to `depth` updates ready: the host never stops the device to collate, count or pin a
        batch, and the step's copy to the device is asynchronous (as torchtitan and the HF Trainer do with
        DataLoader workers and pin_memory)
    state_dict() / load_state_dict(state), epoch
        the loader's state as of the last update handed out, not of the batches read ahead: what a checkpoint
        saves and a resume restores (load before iterating)

The loader draws its order from its own seeded generator (data/loader.py), so reading ahead on another thread
changes no random number of the step's; the thread makes the rank's GPU its current device before it pins (as
torch's DataLoader pin thread does), so it opens no CUDA context elsewhere. The thread stops when the iteration is
closed (use it in a `with closing(iter(prefetch))`); an error in it is raised in the training thread at the next
update.
"""

from __future__ import annotations

import queue
import threading

import torch

from ptune_dist.data.host import describe
from ptune_dist.device import pin


class Prefetch:
    def __init__(self, loader, task_types: list[str], device: torch.device, micro: int = 1, depth: int = 2):
        self.loader, self.task_types, self.device, self.micro, self.depth = loader, task_types, device, micro, depth
        self._state = loader.state_dict()
        self._started = False

    @property
    def epoch(self) -> int:
        return self._state["epoch"]

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        if self._started:
            raise RuntimeError("Prefetch.load_state_dict: the batches are already being read; load before iterating")
        self.loader.load_state_dict(state)
        self._state = self.loader.state_dict()

    def ready(self, batch: dict) -> dict:
        return pin(describe(batch, self.task_types), self.device)

    def __iter__(self):
        self._started = True
        ready: queue.Queue = queue.Queue(maxsize=self.depth)
        stop = threading.Event()

        def hand(item) -> None:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def work() -> None:
            try:
                if self.device.type == "cuda":  # pinning from this thread must not open a context on GPU 0
                    torch.cuda.set_device(self.device)
                batches = iter(self.loader)
                while not stop.is_set():
                    update = [self.ready(next(batches)) for _ in range(self.micro)]
                    hand((update, self.loader.state_dict()))
            except BaseException as e:  # noqa: BLE001 -- raised again in the training thread
                hand((None, e))

        thread = threading.Thread(target=work, name="ptune-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                update, state = ready.get()
                if update is None:
                    raise state
                self._state = state
                yield update
        finally:
            stop.set()
            thread.join(timeout=10)
