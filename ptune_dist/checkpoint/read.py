"""Reading a checkpoint folder back (the layout state.py writes), checked whole before anything uses it.

Two kinds of failure, for resume to tell apart:

    CheckpointDamaged   complete (its manifest holds) but it cannot be a ptune checkpoint: a file
                        unreadable, a state.json key missing or of the wrong type, a step that is not
                        a whole number >= 0 or differs from the folder's name (step-N), optimizer state
                        misshapen, NaN or inf in the weights or the optimizer state; train.resume=auto
                        falls back to an older one
    CheckpointError     whole, but not for this run: another model, method or task list (shapes or
                        names differ), or a final/ export without training state

Nothing here touches a model, an engine or the RNG except load_weights, which copies weights into a
model for eval, predict and export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ptune_dist import read_back
from ptune_dist.config.schema import INT32
from ptune_dist.errors import CheckpointError, PtuneError

from .atomic import verify
from .folders import STEP_DIR

# state.json of a resumable checkpoint: key -> the type it must have
TRAINING_KEYS = {"optimizer": dict, "scheduler": dict, "loader": dict, "python_rng": list}


class CheckpointDamaged(CheckpointError):
    """The folder is complete (its manifest holds) but what it holds cannot be a ptune checkpoint."""

    def __init__(self, folder, what: str):
        super().__init__(f"checkpoint {folder} is damaged: {what}")


def nonfinite(tensors: dict) -> str:
    """'' when every tensor is finite, else which are not."""
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return f"{len(bad)} tensor(s) hold NaN or inf ({', '.join(bad[:3])})" if bad else ""


def state_by_param(tensors: dict) -> dict[str, dict]:
    """{param name: {slot: tensor}} from the state.<param name>.<slot> keys of optimizer.safetensors."""
    by_param: dict[str, dict] = {}
    for key, value in tensors.items():
        name, slot = key[len("state.") :].rsplit(".", 1)
        by_param.setdefault(name, {})[slot] = value
    return by_param


def read_state(folder: Path) -> dict:
    """state.json of a complete folder (verified against its manifest), with its step checked: a whole
    number >= 0 (read_back.count) within train.steps' range, equal to N when the folder is named step-N (a
    step-4 folder whose state says 3 or 10**12 would resume and label the run at a step it never reached)."""
    folder = Path(folder)
    verify(folder)
    try:
        state = read_back.read_record(folder / "state.json", "a checkpoint's state", "")
        step = read_back.value(state, "step", read_back.count, folder / "state.json", "")
    except PtuneError as e:
        raise CheckpointDamaged(folder, str(e).removesuffix("; ")) from None
    named = STEP_DIR.fullmatch(folder.name)
    if named and int(named.group(1)) != step:
        raise CheckpointDamaged(folder, f"state.json step={step} differs from its folder's name {folder.name}")
    if step > INT32[0]:  # no run trains that long: train.steps stops there
        raise CheckpointDamaged(folder, f"state.json step={step} is past any train.steps (at most {INT32[0]})")
    return state


def _load_tensors(path: Path) -> dict:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise CheckpointDamaged(path.parent, f"{path.name} unreadable ({e})") from None


def check_fits(folder: Path, saved: dict, shapes: dict) -> None:
    """The checkpoint's trainable tensors must be exactly the model's, name by name and shape by shape."""
    missing, unexpected = sorted(set(shapes) - set(saved)), sorted(set(saved) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {folder} does not fit this model: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]} (another method, task list or base? to start "
            "afresh use another output_dir or train.resume=never)"
        )
    for name, shape in shapes.items():
        if tuple(saved[name].shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint {folder}: {name} has shape {tuple(saved[name].shape)}, the model expects {tuple(shape)}"
            )
    bad = nonfinite(saved)
    if bad:
        raise CheckpointDamaged(folder, bad)


def check_optimizer_fits(where: Path, meta: dict, names: list[str]) -> None:
    saved = [n for g in meta["param_groups"] for n in g["params"]]
    if saved != names:
        raise CheckpointError(
            f"checkpoint {where}: its optimizer state is for parameters {saved[:3]}..., "
            f"this model trains {names[:3]}... (a different method or tasks?)"
        )


def load_trainable(folder: Path) -> dict:
    """A checkpoint's trainable tensors by name, the folder verified first."""
    folder = Path(folder)
    verify(folder)
    return _load_tensors(folder / "trainable.safetensors")


def load_weights(folder: Path, model) -> None:
    """Copy a checkpoint's trainable weights into `model` (one process, no ZeRO partitioning)."""
    folder = Path(folder)
    saved = load_trainable(folder)
    params = model.trainable_parameters()
    check_fits(folder, saved, {n: p.shape for n, p in params.items()})
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])


@dataclass
class Training:
    """A resumable checkpoint read and checked whole, before anything of the run is touched: state.json,
    trainable.safetensors, optimizer.safetensors and rng.safetensors as they are on disk."""

    folder: Path
    state: dict
    weights: dict
    optimizer: dict
    rngs: dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def read_training(folder: Path, shapes: dict) -> Training:
    """Everything a run needs to continue from `folder`, checked: CheckpointDamaged when it cannot be a
    ptune checkpoint (resume=auto then falls back to an older one), CheckpointError when it is whole
    but for another model or method. `shapes`: {name: shape} of the trainable weights, in the order
    the optimizer holds them."""
    folder = Path(folder)
    state = read_state(folder)
    if "optimizer" not in state:
        raise CheckpointError(
            f"checkpoint {folder} has no training state (a final/ export?); "
            "it can be evaluated or exported, not resumed"
        )
    for key, kind in TRAINING_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointDamaged(
                folder, f"state.json key {key!r} is {type(state.get(key)).__name__}, expected {kind.__name__}"
            )
    meta = state["optimizer"]
    if not isinstance(meta.get("param_groups"), list) or not isinstance(meta.get("scalars"), dict):
        raise CheckpointDamaged(folder, "state.json optimizer lacks param_groups (a list) or scalars (a map)")
    check_fields(folder, state)
    weights = _load_tensors(folder / "trainable.safetensors")
    check_fits(folder, weights, shapes)
    optimizer = _load_tensors(folder / "optimizer.safetensors")
    try:
        check_optimizer_fits(folder, meta, list(shapes))
        by_param = state_by_param(optimizer)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointDamaged(folder, f"optimizer state unreadable ({type(e).__name__}: {e})") from None
    for name, slots in by_param.items():
        for slot, t in slots.items():
            wanted = slot_shape(slot, tuple(shapes[name])) if name in shapes else None
            if not t.is_floating_point() or tuple(t.shape) != wanted:
                raise CheckpointDamaged(
                    folder,
                    f"optimizer.safetensors tensor state.{name}.{slot} is {t.dtype} "
                    f"{tuple(t.shape)}, expected a float tensor of shape {wanted} "
                    f"(its parameter is {tuple(shapes.get(name, ()))})",
                )
    bad = nonfinite(optimizer)
    if bad:
        raise CheckpointDamaged(folder, f"optimizer state: {bad}")
    return Training(folder, state, weights, optimizer, _load_tensors(folder / "rng.safetensors"))


def slot_shape(slot: str, param: tuple) -> tuple:
    """The shape an optimizer slot of a parameter shaped `param` has: `step` a scalar; Adafactor's factored
    row_var / col_var the parameter's with a 1 in the last / second-to-last dim; every other slot (AdamW's
    moments, Adafactor's variance) exactly the parameter's. Another shape would be broadcast or fail at
    the first update after the resume (a raw traceback mid-run), so it is refused here."""
    if slot == "step":
        return ()
    if slot in ("row_var", "col_var") and len(param) >= 2:
        at = -1 if slot == "row_var" else -2
        return tuple(1 if i == len(param) + at else d for i, d in enumerate(param))
    return param


def _number(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise ValueError("a finite number")
    return v


def _slots(v) -> dict:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ValueError("a mapping of slot names to values")
    return v


def check_fields(folder: Path, state: dict) -> None:
    """The state.json values a resume puts into the scheduler and the optimizer's groups, each with its type
    (read_back) where present: a string or a negative number there would be taken in and fail, or train
    wrongly, steps later. (The loader checks its own state: data/loader.py.)"""
    path, rb = folder / "state.json", read_back
    try:
        rb.value(state["scheduler"], "last_epoch", rb.count, path, "", default=None)
        rb.value(state["scheduler"], "base_lrs", rb.list_of(_number), path, "", default=None)
        for group in state["optimizer"]["param_groups"]:
            if not isinstance(group, dict):
                raise PtuneError(f"{path}: optimizer.param_groups holds {type(group).__name__}, not a group; ")
            rb.value(group, "params", rb.list_of(rb.text), path, "")
            for key in ("lr", "weight_decay"):  # eps differs by optimizer (Adafactor: a pair)
                rb.value(group, key, _number, path, "", default=None)
        for name, slots in state["optimizer"]["scalars"].items():
            rb.value({f"optimizer.scalars.{name}": slots}, f"optimizer.scalars.{name}", _slots, path, "")
    except PtuneError as e:
        raise CheckpointDamaged(folder, str(e).removesuffix("; ")) from None
