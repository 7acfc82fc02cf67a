"""One checkpointer for a training run: it saves the run's parts into the layout state.py describes and
restores them from it (as torchtitan's trainer does with its stateful parts). It knows the parts only by
the state they expose, never what they are:

    state_dict() -> dict      every rank calls it; a part may gather over the ranks inside it
    load_state_dict(sd)       every rank calls it with the whole dict; a part takes its own share

The parts of a run, their state dicts, and where the layout keeps them:

    engine  {"weights": {name: full fp32 tensor},                     trainable.safetensors
             "optimizer": {"state": {name: {slot: tensor|number}},    optimizer.safetensors state.<name>.<slot>
                                                                      (tensors), state.json optimizer.scalars
                           "param_groups": [{..., "params": [names]}]},  state.json optimizer.param_groups
             "scheduler": {...}}                                      state.json scheduler
            and shapes() {name: shape} of its trainable weights, in the optimizer's order
    loader  {...}                                                     state.json loader
    rng     {"ranks": [{"cpu": tensor, "python": random.getstate(),   rng.safetensors rankN, rankN.cuda;
                        "cuda": tensor or None}, one per rank]}       state.json python_rng
            on load also "step": the checkpoint's step

    save(step, extra)   every rank calls it: the parts gather, the main rank writes step-N atomically
                        with `extra` (results a resumed run carries on) in state.json, prunes to
                        `keep`, and all wait at the barrier
    read(folder)        the folder read and checked whole (read.py), no part touched: CheckpointDamaged
                        or CheckpointError; resume chooses with it
    load(folder)        every rank calls it: read(folder), then each part's load_state_dict in turn
                        (engine, loader, rng); a part refusing its state is a CheckpointError

Collectives come from the caller (`barrier`, and whatever the parts do), so this package needs no process
group of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import torch

from ptune_dist.errors import CheckpointError
from ptune_dist.nofollow import refuse_link

from .folders import prune, step_dir
from .read import Training, read_training, state_by_param
from .state import jsonable, save, tupled


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, sd: dict) -> None: ...


class EngineState(Stateful, Protocol):
    def shapes(self) -> dict: ...


class Checkpointer:
    def __init__(
        self,
        root: Path,
        *,
        engine: EngineState,
        loader: Stateful,
        rng: Stateful,
        config_yaml: str,
        keep: int,
        is_main: bool,
        barrier: Callable[[], None],
    ):
        """`root`: the run's checkpoints/ folder; `config_yaml`: the resolved config each checkpoint keeps;
        `keep`: train.keep_checkpoints; `barrier`: waits for every rank (a no-op with one)."""
        self.root, self.engine, self.loader, self.rng = Path(root), engine, loader, rng
        self.config_yaml, self.keep, self.is_main, self.barrier = config_yaml, keep, is_main, barrier
        if is_main:  # saving and pruning through a link would write and delete in the folder it points to
            refuse_link(self.root)

    def save(self, step: int, extra: dict | None = None) -> Path:
        engine, loader, rng = self.engine.state_dict(), self.loader.state_dict(), self.rng.state_dict()
        folder = step_dir(self.root, step)
        if self.is_main:
            save(folder, self.config_yaml, engine["weights"], step=step, extra=extra, **to_layout(engine, loader, rng))
            prune(self.root, self.keep)
        self.barrier()
        return folder

    def read(self, folder: Path) -> Training:
        return read_training(folder, self.engine.shapes())

    def load(self, folder: Path) -> Training:
        saved = self.read(folder)
        try:
            parts = from_layout(saved)
            self.engine.load_state_dict(parts["engine"])
            self.loader.load_state_dict(parts["loader"])
            self.rng.load_state_dict(parts["rng"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"checkpoint {saved.folder}: {e}") from None
        return saved


def to_layout(engine: dict, loader: dict, rng: dict) -> dict:
    """The parts' state dicts as state.save() takes them (optimizer, training, rng_states)."""
    tensors, scalars = {}, {}
    for name, slots in engine["optimizer"]["state"].items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{name}.{slot}"] = value
            else:
                scalars.setdefault(name, {})[slot] = value
    return {
        "optimizer": (tensors, {"param_groups": engine["optimizer"]["param_groups"], "scalars": scalars}),
        "training": {"scheduler": engine["scheduler"], "loader": loader},
        "rng_states": [(r["cpu"], jsonable(r["python"]), r["cuda"]) for r in rng["ranks"]],
    }


def from_layout(saved: Training) -> dict:
    """{"engine", "loader", "rng"}: each part's state dict from a checkpoint read_training() has checked."""
    state, meta = saved.state, saved.state["optimizer"]
    by_param = state_by_param(saved.optimizer)
    optimizer = {}
    for name in (n for g in meta["param_groups"] for n in g["params"]):
        slots = {**by_param.get(name, {}), **meta["scalars"].get(name, {})}
        if slots:
            optimizer[name] = slots
    rngs = saved.rngs
    ranks = [
        {"cpu": rngs.get(f"rank{r}"), "python": tupled(py), "cuda": rngs.get(f"rank{r}.cuda")}
        for r, py in enumerate(state["python_rng"])
    ]
    engine = {
        "weights": saved.weights,
        "optimizer": {"state": optimizer, "param_groups": meta["param_groups"]},
        "scheduler": state["scheduler"],
    }
    return {"engine": engine, "loader": state["loader"], "rng": {"ranks": ranks, "step": saved.step}}
