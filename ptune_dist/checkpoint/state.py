"""What a checkpoint holds, and writing it. Tensors in safetensors, everything else in JSON.

    trainable.safetensors   every trainable weight (prompts, prompt encoders, MLPs, heads) in fp32
    optimizer.safetensors   the optimizer's tensor state, keyed state.<param name>.<slot>
    state.json              step, optimizer hyper-parameters and scalars, scheduler, data position, RNG
    rng.safetensors         torch RNG state of every rank (rankN; rankN.cuda: its GPU's, when it ran on one)
    config.yaml             the resolved run config
    manifest.json           sizes and checksums (see atomic.py)

`final/` has the same layout without the optimizer and training state.

The jobs around it, one module each: atomic.py makes a folder appear whole or not at all; read.py
reads a folder back and checks it (CheckpointDamaged vs CheckpointError); folders.py lists and prunes
the step-N folders; checkpointer.py saves and restores a training run's parts in this layout. Their
public names stay importable from here.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ptune_dist.errors import CheckpointError

from .atomic import atomic_dir, is_valid, verify
from .folders import STEP_DIR, latest_complete, prune, resume_point, step_dir, step_dirs
from .read import (
    TRAINING_KEYS,
    CheckpointDamaged,
    Training,
    check_fits,
    check_optimizer_fits,
    load_weights,
    nonfinite,
    read_state,
    read_training,
    state_by_param,
)

__all__ = [  # defined here (save_file: what save() writes with); the rest re-exported for the code and tests
    "save",
    "trainable_state",
    "rng_state",
    "jsonable",
    "tupled",
    "save_file",
    "load_file",  # that import them here
    "is_valid",
    "verify",
    "STEP_DIR",
    "latest_complete",
    "prune",
    "resume_point",
    "step_dir",
    "step_dirs",
    "TRAINING_KEYS",
    "CheckpointDamaged",
    "Training",
    "check_fits",
    "check_optimizer_fits",
    "load_weights",
    "nonfinite",
    "read_state",
    "read_training",
    "state_by_param",
]


def trainable_state(model) -> dict[str, torch.Tensor]:
    """{name: fp32 CPU copy} of a model's trainable weights (one process, no ZeRO partitioning)."""
    return {n: p.detach().float().contiguous().cpu() for n, p in model.trainable_parameters().items()}


def rng_state():
    """This process's random state as save() takes it: (torch CPU, python as JSON lists, torch CUDA of the
    current GPU or None)."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), jsonable(random.getstate()), cuda


def save(
    folder: Path,
    config_yaml: str,
    trainable: dict,
    *,
    optimizer: tuple | None = None,
    training: dict | None = None,
    step: int = 0,
    rng_states: list | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (call on the writing rank only).

    trainable: {name: full fp32 tensor}; optimizer: (tensors keyed state.<param>.<slot>, {"param_groups",
    "scalars"}); training: {"scheduler": state, "loader": state}; rng_states: rng_state() of every rank
    (this process's alone when not given); extra: more state.json keys (the baseline, final/'s metrics).
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


def jsonable(x):
    """Python's random state (nested tuples) as JSON lists."""
    return [jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def tupled(x):
    """The inverse of the JSON lists python_rng holds: random.setstate takes tuples."""
    return tuple(tupled(v) for v in x) if isinstance(x, list) else x
