"""Counting, on the CPU, the operations that would make the host wait for a CUDA GPU (a host-device sync).

On a GPU the host queues kernels and runs ahead; an operation whose result the host must read (`.item()`,
`int(t)`, `bool(t)`, `.tolist()`, `.cpu()`, `nonzero`, boolean-mask indexing, `unique`, ...) or a pageable
copy to the device (`torch.tensor(data, device=...)`) stalls the host until the GPU's queue drains. Here
there is no GPU, so a `SyncCounter` tells which tensors would live on the device and counts what would sync:

- device tensors: the ones handed to `mark` (the model's parameters and buffers, the batch after it moved),
  every tensor an operation makes from a device tensor (views, results, gradients, optimizer state), every
  tensor made by a factory call given `device=` (as `torch.zeros(n, device=x.device)`) other than the string
  "cpu", and what a call on device tensors makes inside (F.scaled_dot_product_attention's masks) or what runs
  where no Python-level call is seen (autograd's recompute of a checkpointed layer); everything else is host
  memory (the CPU batch before it moves, Python numbers, `torch.arange(n)` without a device, tensors made with
  `device="cpu"`, as torch.optim makes its step counters).
- syncs: an aten operation that reads a device tensor's values on the host or whose output shape depends on
  them (SYNC_OPS; boolean or byte masks as indices; repeat_interleave without output_size; copies between host
  and device tensors), Tensor.tolist/.cpu/.numpy of a device tensor, a factory that copies host data to the
  device (torch.tensor / as_tensor with a device), `.to("cpu")` of a device tensor, and a host tensor (not
  0-dim) used in an operation on device tensors (a device mismatch on a GPU, or a hidden copy).

The count is per thread: only the thread that entered the counter is watched (a background loader thread's
work on host tensors is not a sync). On the CPU, `.to(device)` cannot be told from `.to(torch.device("cpu"))`:
only the string "cpu" names the host; a value read after such a call is counted where it is read.
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

aten = torch.ops.aten
SYNC_OPS = {  # read a device tensor's values on the host, or size their output by them
    aten._local_scalar_dense.default: "item/int/bool/float of a device tensor",
    aten.nonzero.default: "nonzero",
    aten.masked_select.default: "masked_select",
    aten.equal.default: "torch.equal",
    aten.is_nonzero.default: "bool of a device tensor",
    aten._unique.default: "unique",
    aten._unique2.default: "unique",
    aten.unique_dim.default: "unique",
    aten.unique_consecutive.default: "unique_consecutive",
    aten.unique_dim_consecutive.default: "unique_consecutive",
    aten.bincount.default: "bincount",
    aten.allclose.default: "allclose",
}
REPEAT = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}
INDEX = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
COPIES = {aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
TO_HOST = {"tolist", "cpu", "numpy", "__array__"}
DATA_FACTORIES = {torch.tensor, torch.as_tensor, torch.asarray}
HOME = ("ptune_dist", "kernels", "transformers", "deepspeed", "bitsandbytes", "torch/optim", "torch/nn")
ROOT = str(Path(__file__).resolve().parents[1]) + "/"  # the repository: our frames are named relative to it


@dataclass
class Sync:
    what: str
    where: str  # the innermost frame of our code or a library that asked for it


@dataclass
class SyncCounter:
    """`with counter:` watches this thread; `counter.mark(*tensors)` names device tensors; `counter.take()`
    returns the syncs seen since the last take."""

    cpu_is_host: bool = True  # False where a library names the CPU "cpu" as its device (DeepSpeed's CPU accelerator)
    syncs: list = field(default_factory=list)
    marks: WeakIdKeyDictionary = field(default_factory=WeakIdKeyDictionary)

    def host(self, device) -> bool:
        """Only the string "cpu" names host memory (a torch.device("cpu") may be the run's device on the CPU)."""
        return self.cpu_is_host and isinstance(device, str) and device.split(":")[0] == "cpu"

    def mark(self, *objs) -> None:
        for obj in objs:
            for t in tree_flatten(obj)[0]:
                if isinstance(t, torch.Tensor):
                    self.marks[t] = True
            if isinstance(obj, torch.nn.Module):
                params = list(obj.parameters())
                self.mark(params, list(obj.buffers()), [_quant_state(p) for p in params])

    def on_device(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t in self.marks

    def take(self) -> list:
        out, self.syncs = self.syncs, []
        return out

    def record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack() if "sync_counter" not in f.filename]
        ours = [f for f in frames if any(h in f.filename for h in HOME)]
        f = (ours or frames)[-1]
        short = f.filename.replace(ROOT, "").split("site-packages/")[-1]  # ptune_dist/..., kernels/..., deepspeed/...
        self.syncs.append(Sync(what, f"{short}:{f.lineno} {f.name}"))

    def __enter__(self):
        self._thread = threading.get_ident()
        self.context = []  # per Python-level call in progress: whether it works on (or for) the device
        self._modes = [_Functions(self), _Dispatch(self)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)


def _quant_state(p) -> list:
    """A bitsandbytes 4-bit weight's quantisation state: attributes of the parameter, on the device with it."""
    from ptune_dist.model.quant import state_tensors

    state = getattr(p, "quant_state", None)
    return [] if state is None else list(state_tensors(state))


def summary(syncs: list) -> Counter:
    return Counter(f"{s.what} at {s.where}" for s in syncs)


class _Functions(TorchFunctionMode):
    """Python-level calls: host reads of device tensors, and factories that place their result on a device."""

    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.c = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if args and self.c.on_device(args[0]):
            if name in TO_HOST:
                self.c.record(f"Tensor.{name} of a device tensor")
            elif name == "to" and self.c.host(kwargs.get("device", args[1] if len(args) > 1 else None)):
                self.c.record("Tensor.to('cpu') of a device tensor")
        device = kwargs.get("device")
        placed = device is not None and not self.c.host(device)
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        self.c.context.append(placed or any(self.c.on_device(t) for t in tensors))  # where its insides live
        try:
            out = func(*args, **kwargs)
        finally:
            self.c.context.pop()
        if placed and not tensors:
            if func in DATA_FACTORIES:
                self.c.record(f"{name}(data, device=...): a pageable copy to the device")
            self.c.mark(out)
        return out


class _Dispatch(TorchDispatchMode):
    """aten-level operations: syncs by kind, and device-ness passed from inputs to outputs."""

    def __init__(self, counter: SyncCounter):
        super().__init__()
        self.c = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device = [self.c.on_device(t) for t in tensors]
        if threading.get_ident() == self.c._thread and any(device):
            self.check(func, args, kwargs, tensors, device)
        out = func(*args, **kwargs)
        if any(device) or (not tensors and (not self.c.context or self.c.context[-1])):
            # a factory inside a Python-level call on device tensors, or where no Python-level call is seen
            # (autograd's recompute of a checkpointed layer runs the forward's code again): made for the device
            self.c.mark(out)
        return out

    def check(self, func, args, kwargs, tensors, device) -> None:
        c = self.c
        if func in SYNC_OPS:
            c.record(SYNC_OPS[func])
        elif func in REPEAT and kwargs.get("output_size") is None and (len(args) < 4 or args[3] is None):
            c.record("repeat_interleave without output_size")
        elif func in INDEX and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in tree_flatten(args[1])[0]
        ):
            c.record("boolean-mask indexing")
        elif func in COPIES and not all(device):
            c.record("copy between host and device memory")
        elif not all(device) and any(t.dim() > 0 for t, d in zip(tensors, device) if not d):
            c.record(f"host tensor in {func}")


# -- counting the syncs of every step of a real `ptune train` -----------------------------------------------------


class CudaSyncWarnings:
    """On a real GPU the same question has torch's own answer: torch.cuda.set_sync_debug_mode("warn") warns at
    every operation that makes the host wait for the device; `take()` returns those warnings' texts."""

    def __init__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)

    def mark(self, *objs) -> None:  # the device knows its own tensors
        pass

    def take(self) -> list:
        out = [Sync(str(w.message), f"{w.filename}:{w.lineno}") for w in self._seen if "synchroniz" in str(w.message)]
        self._seen.clear()
        return out

    def __enter__(self):
        import warnings

        self._seen = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)


def count_steps(cfg, cpu_is_host: bool = True, watch=None) -> dict:
    """{step: (logged, [Sync])} of `ptune_dist.train.loop.train(cfg)` itself: the counter watches run_steps (every
    step: forward, backward, optimizer, logging), the model's parameters, buffers and quantisation state are the
    device's from the start, and every batch is from the moment it moves (device.to_device). `watch`: a
    CudaSyncWarnings on a GPU (default: a SyncCounter)."""
    from ptune_dist.train import loop
    from ptune_dist.train import update as moves  # where the loop's update moves each batch (device.to_device)

    steps, real_run, real_to = {}, loop.run_steps, moves.to_device

    def run_steps(s, engine, loader, start, log, run_eval, stop, save):
        counter = watch or SyncCounter(cpu_is_host=cpu_is_host)
        counter.mark(s.model)
        state = {"step": start + 1, "logged": False}
        advance, write = log.advance, log.train

        def to_device(batch, device):
            out = real_to(batch, device)
            counter.mark(out)
            return out

        def logged(record):
            state["logged"] = True
            write(record)

        def advanced():
            steps[state["step"]] = (state["logged"], counter.take())
            state["step"], state["logged"] = state["step"] + 1, False
            advance()

        log.advance, log.train, moves.to_device = advanced, logged, to_device
        try:
            with counter:
                return real_run(s, engine, loader, start, log, run_eval, stop, save)
        finally:
            moves.to_device = real_to

    loop.run_steps = run_steps
    try:
        loop.train(cfg)
    finally:
        loop.run_steps = real_run
    return steps


if __name__ == "__main__":  # a case in a process of its own (DeepSpeed's process group): syncs per step as JSON
    import json
    import sys

    from ptune_dist.config import load_config

    found = count_steps(load_config([], sys.argv[2:]), cpu_is_host=sys.argv[1] == "host")
    print(json.dumps({step: [logged, [[s.what, s.where] for s in syncs]] for step, (logged, syncs) in found.items()}))
