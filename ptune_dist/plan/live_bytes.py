"""The live bytes of one device through a traced step, and what they were at the peak, by category.

    tracker = LiveBytes(device)           a TorchDispatchMode; enter it inside a FakeTensorMode
    tracker.add(tensor, category)         a tensor made before the tracker (weights, the prompt) or named
    tracker.region = "forward"            where new storages are made (REGIONS), set by the trace
    tracker.end_forward()                 the storages made in the forward that are alive now are kept
    tracker.peak, tracker.breakdown()     the largest live total and its parts (CATEGORIES)

Every tensor an op returns on `device` has its storage recorded from the op that makes it until the
storage dies (its last reference, autograd's saved tensors and the autograd context included), at the
size CUDA's caching allocator gives it: rounded up to 512 bytes. What an op allocates and frees inside
itself (a fused kernel's scratch, the dequantised weight inside bitsandbytes' gemm_4bit) is not seen,
nor the allocator's fragmentation, the CUDA context or library workspaces (docs/plan_traced.md).

A storage's category is its identity when the trace names it (`add` or `name`: weights, quantisation
state, the prompt with its gradients and optimizer state), else where it was made:

    batch        the step's input tensors                          -> activations
    forward      the base's forward (and the prompt's)             -> activations if alive when the
                                                                      forward ended, else workspace
    head         the LM head and the loss, forward and backward    -> logits
    recompute    a checkpointed layer run again in the backward    -> activations
    backward     the rest of the backward pass                     -> workspace
    optimizer    clipping and the optimizer step                   -> workspace
    setup        building the run (loading, quantising)            -> workspace
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

CATEGORIES = ("weights", "quant_state", "prompt_optimizer", "activations", "logits", "workspace")
REGIONS = ("setup", "batch", "forward", "head", "recompute", "backward", "optimizer")
BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of 512 bytes


def rounded(nbytes: int) -> int:
    return -(-nbytes // BLOCK) * BLOCK if nbytes else 0


@dataclass(eq=False)
class Block:
    nbytes: int
    region: str
    category: str | None = None  # named by the trace
    kept: bool = False  # made in the forward and alive when it ended
    op: str = ""  # the operation that made it

    @property
    def kind(self) -> str:
        if self.category:
            return self.category
        if self.region in ("batch", "recompute"):
            return "activations"
        if self.region == "forward":
            return "activations" if self.kept else "workspace"
        if self.region == "head":
            return "logits"
        return "workspace"


class LiveBytes(TorchDispatchMode):
    def __init__(self, device: torch.device):
        super().__init__()
        self.device = torch.device(device)
        self.region = "setup"
        self.live: dict[int, Block] = {}  # id(block) -> block, the storages alive now
        self._blocks = WeakIdKeyDictionary()  # storage -> (block, weakref with its callback)
        self.total = 0
        self.peak = 0
        self.peak_region = ""
        self._peak_blocks: list[Block] = []
        self._at_peak = False  # the live set is the peak's and has not been copied yet

    # -- recording ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t, op=func)
        return out

    def _on_device(self, t: torch.Tensor) -> bool:
        d = t.device
        return d.type == self.device.type and (d.index or 0) == (self.device.index or 0)

    def add(self, t: torch.Tensor, category: str | None = None, op=None) -> None:
        """Record `t`'s storage (made now, in the current region), or name the category of one recorded."""
        if not isinstance(t, torch.Tensor) or not self._on_device(t):
            return
        st = t.untyped_storage()
        found = self._blocks.get(st)
        if found is not None:
            if category:
                found[0].category = category
            return
        block = Block(rounded(st.nbytes()), self.region, category, op=str(op or ""))
        self._blocks[st] = (block, weakref.ref(st, lambda _, b=block: self._free(b)))
        self.live[id(block)] = block
        self.total += block.nbytes
        if self.total > self.peak:
            self.peak, self.peak_region, self._at_peak = self.total, self.region, True

    def name(self, t: torch.Tensor | None, category: str) -> None:
        """Give a recorded tensor's storage its category (a gradient, an optimizer state)."""
        if t is not None:
            self.add(t, category)

    def _free(self, block: Block) -> None:
        if self._at_peak:
            self._peak_blocks, self._at_peak = list(self.live.values()), False
        if self.live.pop(id(block), None) is not None:
            self.total -= block.nbytes

    # -- phases ---------------------------------------------------------------------------
    def end_forward(self) -> None:
        """What the forward made and is still alive is kept for the backward."""
        for b in self.live.values():
            if b.region == "forward":
                b.kept = True

    def reset_peak(self) -> None:
        """Start the peak again from what is alive now (after loading, as torch.cuda.reset_peak_memory_stats)."""
        self.peak, self.peak_region, self._at_peak = self.total, self.region, True
        self._peak_blocks = []

    def peak_blocks(self) -> list[Block]:
        if self._at_peak:
            self._peak_blocks, self._at_peak = list(self.live.values()), False
        return self._peak_blocks

    def breakdown(self, blocks: list[Block] | None = None) -> dict[str, int]:
        """Bytes by category of `blocks` (default: those alive at the peak); they add up to the peak."""
        out = dict.fromkeys(CATEGORIES, 0)
        for b in self.peak_blocks() if blocks is None else blocks:
            out[b.kind] += b.nbytes
        return out

    def now(self) -> dict[str, int]:
        return self.breakdown(list(self.live.values()))
