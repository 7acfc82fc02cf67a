"""What a checkpoint holds and how it is read back. Tensors in safetensors, everything else in JSON.

    trainable.safetensors   every trainable weight (prompts, prompt encoders, MLPs, heads) in fp32
    optimizer.safetensors   the optimizer's tensor state, keyed state.<param name>.<slot>
    state.json              step, optimizer hyper-parameters and scalars, scheduler, data position, RNG
    rng.safetensors         torch RNG state of every rank (rankN; rankN.cuda: its GPU's, when it ran on one)
    config.yaml             the resolved run config
    manifest.json           sizes and checksums (see atomic.py)

`final/` has the same layout without the optimizer and training state.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ptune_dist.errors import CheckpointError

from .atomic import atomic_dir, is_valid, verify

STEP_DIR = re.compile(r"^step-(\d+)$")


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().contiguous().cpu() for n, p in model.trainable_parameters().items()}


def optimizer_state(model, optimizer) -> tuple[dict, dict]:
    """(tensors, json) of the optimizer, with parameters named instead of numbered."""
    names = list(model.trainable_parameters())
    sd = optimizer.state_dict()
    order = [i for group in sd["param_groups"] for i in group["params"]]
    if len(order) != len(names):
        raise CheckpointError(f"the optimizer holds {len(order)} parameters, the model trains {len(names)}")
    tensors, scalars, name_of = {}, {}, dict(zip(order, names))
    for idx, name in name_of.items():
        for slot, value in sd["state"].get(idx, {}).items():
            if torch.is_tensor(value):
                tensors[f"state.{name}.{slot}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(name, {})[slot] = value
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [name_of[i] for i in g["params"]]}
              for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def check_optimizer_fits(where: Path, meta: dict, names: list[str]) -> None:
    saved = [n for g in meta["param_groups"] for n in g["params"]]
    if saved != names:
        raise CheckpointError(f"checkpoint {where}: its optimizer state is for parameters {saved[:3]}..., "
                              f"this model trains {names[:3]}... (a different method or tasks?)")


def state_by_param(tensors: dict) -> dict[str, dict]:
    """{param name: {slot: tensor}} from the state.<param name>.<slot> keys of optimizer.safetensors."""
    by_param: dict[str, dict] = {}
    for key, value in tensors.items():
        name, slot = key[len("state."):].rsplit(".", 1)
        by_param.setdefault(name, {})[slot] = value
    return by_param


def load_optimizer_state(model, optimizer, tensors: dict, meta: dict) -> None:
    names = list(model.trainable_parameters())
    by_param = state_by_param(tensors)
    state = {}
    for i, name in enumerate(names):
        slots = {**by_param.get(name, {}), **meta["scalars"].get(name, {})}
        if slots:
            state[i] = slots
    groups, i = [], 0
    for g in meta["param_groups"]:
        groups.append({**g, "params": list(range(i, i + len(g["params"])))})
        i += len(g["params"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state():
    """This rank's random state: (torch CPU, python, torch CUDA of the current GPU or None)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), _jsonable(random.getstate()), cuda


def save(folder: Path, config_yaml: str, trainable: dict, *, optimizer: tuple | None = None,
         training: dict | None = None, step: int = 0, rng_states: list | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (call on the writing rank only).

    trainable: {name: full fp32 tensor}; optimizer: (tensors, meta) as optimizer_state() makes them;
    training: {"scheduler": state, "loader": state}; rng_states: rng_state() of every rank.
    Non-finite weights are refused before anything is written: a good folder is never replaced by them.
    """
    bad = nonfinite(trainable)
    if bad:
        raise CheckpointError(f"not saving {folder}: {bad}; the previous one stays")
    with atomic_dir(folder) as tmp:
        save_file(trainable, tmp / "trainable.safetensors", metadata={"format": "ptune"})
        (tmp / "config.yaml").write_text(config_yaml)
        state = {"step": step, **(extra or {})}
        if optimizer is not None:
            tensors, meta = optimizer
            save_file(tensors, tmp / "optimizer.safetensors")
            state["optimizer"] = meta
            state.update(training)
            ranks = rng_states or [rng_state()]
            state["python_rng"] = [py for _, py, *_ in ranks]
            tensors = {}
            for r, (cpu, _, *cuda) in enumerate(ranks):
                tensors[f"rank{r}"] = cpu
                if cuda and cuda[0] is not None:
                    tensors[f"rank{r}.cuda"] = cuda[0]
            save_file(tensors, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    return folder


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


class CheckpointDamaged(CheckpointError):
    """The folder is complete (its manifest holds) but what it holds cannot be a ptune checkpoint."""

    def __init__(self, folder, what: str):
        super().__init__(f"checkpoint {folder} is damaged: {what}")


def nonfinite(tensors: dict) -> str:
    """'' when every tensor is finite, else which are not."""
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    return f"{len(bad)} tensor(s) hold NaN or inf ({', '.join(bad[:3])})" if bad else ""


def read_state(folder: Path) -> dict:
    verify(folder)
    try:
        state = json.loads((Path(folder) / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointDamaged(folder, f"state.json unreadable ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise CheckpointDamaged(folder, "state.json has no step (a whole number >= 0)")
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
        raise CheckpointError(f"checkpoint {folder} does not fit this model: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]} (another method, task list or base? to start "
                              "afresh use another output_dir or train.resume=never)")
    for name, shape in shapes.items():
        if tuple(saved[name].shape) != tuple(shape):
            raise CheckpointError(f"checkpoint {folder}: {name} has shape {tuple(saved[name].shape)}, "
                                  f"the model expects {tuple(shape)}")
    bad = nonfinite(saved)
    if bad:
        raise CheckpointDamaged(folder, bad)


def load_weights(folder: Path, model) -> None:
    """Copy a checkpoint's trainable weights into `model` (one process, no ZeRO partitioning)."""
    folder = Path(folder)
    verify(folder)
    saved = _load_tensors(folder / "trainable.safetensors")
    params = model.trainable_parameters()
    check_fits(folder, saved, {n: p.shape for n, p in params.items()})
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])


# state.json of a resumable checkpoint: key -> the type it must have
TRAINING_KEYS = {"optimizer": dict, "scheduler": dict, "loader": dict, "python_rng": list}


@dataclass
class Training:
    """A resumable checkpoint read and checked whole, before anything of the run is touched."""
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
    but for another model or method."""
    folder = Path(folder)
    state = read_state(folder)
    if "optimizer" not in state:
        raise CheckpointError(f"checkpoint {folder} has no training state (a final/ export?); "
                              "it can be evaluated or exported, not resumed")
    for key, kind in TRAINING_KEYS.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointDamaged(folder, f"state.json key {key!r} is {type(state.get(key)).__name__}, "
                                            f"expected {kind.__name__}")
    meta = state["optimizer"]
    if not isinstance(meta.get("param_groups"), list) or not isinstance(meta.get("scalars"), dict):
        raise CheckpointDamaged(folder, "state.json optimizer lacks param_groups (a list) or scalars (a map)")
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
            if t.dim() > 0 and not _fits_param(tuple(t.shape), tuple(shapes.get(name, ()))):
                raise CheckpointDamaged(folder, f"optimizer state {name}.{slot} has shape {tuple(t.shape)}, "
                                                f"its parameter {tuple(shapes.get(name, ()))}")
    bad = nonfinite(optimizer)
    if bad:
        raise CheckpointDamaged(folder, f"optimizer state: {bad}")
    return Training(folder, state, weights, optimizer, _load_tensors(folder / "rng.safetensors"))


def _fits_param(slot: tuple, param: tuple) -> bool:
    """An optimizer slot is shaped like its parameter, or factored (Adafactor: a 1 in place of a dim)."""
    return len(slot) == len(param) and all(s in (p, 1) for s, p in zip(slot, param))


def load_training(folder: Path, engine, loader, rank: int = 0) -> Training:
    """Restore everything a run needs to continue exactly (every rank calls it); returns what it read."""
    saved = read_training(folder, engine.shapes())
    state, folder = saved.state, saved.folder
    engine.load_state(saved.weights, saved.optimizer, state["optimizer"])
    try:
        engine.scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {folder}: {e}") from None
    rngs = saved.rngs
    if f"rank{rank}" in rngs and rank < len(state["python_rng"]):
        torch.set_rng_state(rngs[f"rank{rank}"])
        random.setstate(_tupled(state["python_rng"][rank]))
        if f"rank{rank}.cuda" in rngs and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.set_rng_state(rngs[f"rank{rank}.cuda"])  # a GPU run resumed on a GPU (the CPU has none)
    else:  # saved by fewer ranks: a fresh stream of its own, reproducible from the step
        torch.manual_seed(1_000_003 * saved.step + rank)
        random.seed(1_000_003 * saved.step + rank)
    return saved


def step_dirs(checkpoints: Path) -> list[tuple[int, Path]]:
    """Checkpoint folders under `checkpoints`, newest first (complete or not)."""
    if not Path(checkpoints).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(checkpoints).iterdir() if (m := STEP_DIR.match(p.name))]
    return sorted(found, reverse=True)


def latest_complete(checkpoints: Path) -> Path | None:
    for _, path in step_dirs(checkpoints):
        if is_valid(path):
            return path
    return None


def resume_point(resume: str, checkpoints: Path) -> Path | None:
    """train.resume: auto = the newest complete checkpoint (if any), never = none, else that folder."""
    if resume == "never":
        return None
    if resume == "auto":
        return latest_complete(checkpoints)
    verify(Path(resume))
    return Path(resume)


def prune(checkpoints: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints that have a manifest (were completely written)."""
    complete = [p for _, p in step_dirs(checkpoints) if (p / "manifest.json").is_file()]
    for path in complete[keep:]:
        shutil.rmtree(path, ignore_errors=True)
