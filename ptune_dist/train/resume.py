"""Where a run continues from, decided once by the main rank and shared with every rank, and which of
the config's changes since that checkpoint the resumed run takes.

Only the main rank repairs folders a crash left half-replaced and reads the checkpoint list, so ranks
cannot race on the same renames or see different "newest" checkpoints while one is being written.
train.resume=never refuses a folder that holds an earlier run's checkpoints or final/ (a fresh start would
prune and replace them).

train.resume=auto takes the newest checkpoint that can be resumed. One that cannot is skipped with a line
on stderr naming it and why, and the one before it is tried: incomplete (no manifest, a checksum that
differs), or complete but damaged (read.py's CheckpointDamaged: a state.json key missing or of the wrong
type, a step that is not its folder's step-N, tensors of the wrong shape, NaN weights). When checkpoints
exist and none can be resumed, the run is refused, naming the folder and each reason: it never restarts
from step 0 over them; moving checkpoints/ away starts afresh. A checkpoint named by train.resume=PATH
must be whole: its error otherwise. A checkpoint past train.steps is refused (config_changes): resuming
it would label a run trained N steps as train.steps; raise train.steps to continue it.

Changed settings, by one rule: a setting that says how long the run goes, how it is watched or where
it runs (RESUMABLE below) is applied and reported; one that shapes the training itself (the model,
method, data, optimizer, schedule, seed...) is refused, naming every difference, since the
checkpoint's optimizer state, schedule and data order belong to the old values.

A checkpoint is judged by the run's checkpointer (checkpoint/checkpointer.py: its read() checks a folder
whole against the run's model without loading anything).
"""

from __future__ import annotations

import dataclasses
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Callable

from ptune_dist.checkpoint.atomic import is_valid, recover_all, verify
from ptune_dist.checkpoint.folders import step_dirs
from ptune_dist.checkpoint.read import CheckpointDamaged, read_state
from ptune_dist.config import from_yaml
from ptune_dist.config.schema import RunConfig
from ptune_dist.errors import CheckpointError, ConfigError

from . import dist

RESUMABLE = (
    "output_dir",
    "train.steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_at_start",
    "train.eval_baseline",
    "train.save_every",
    "train.keep_checkpoints",
    "train.resume",
    "train.progress_bar",
    "train.tensorboard",
    "train.threads",
    "train.device",
    "train.on_nonfinite",
    "train.max_skipped_steps",
    "data.batch_size",  # per rank: with another number of ranks; the loader checks the global batch stays
    "data.eval_batch_size",
    "data.max_eval_examples",
    "tasks.*.eval",
    "tasks.*.eval_split",
    "tasks.*.max_new_tokens",
    "model.attention",
    "model.gradient_checkpointing",
    "model.lean_activations",
    "distributed.*",
    "launch.*",
    "sweep.*",
)


def agreed_resume_point(resume: str, out: Path, is_main: bool, read: Callable[[Path], object]) -> Path | None:
    """train.resume resolved on the main rank (auto: the newest whole checkpoint); its answer, or its
    error, on every rank. A collective: every rank calls it. `read`: the run's Checkpointer.read, which
    raises CheckpointDamaged or CheckpointError for a folder this run cannot resume from."""
    answer = None
    if is_main:
        try:
            for folder in (out, out / "checkpoints"):
                recover_all(folder)
            answer = ("ok", _choose(resume, out / "checkpoints", read))
        except CheckpointError as e:
            answer = ("error", str(e))
    kind, value = dist.broadcast_object(answer)
    if kind == "error":
        raise CheckpointError(value)
    return value


def _choose(resume: str, checkpoints: Path, read: Callable[[Path], object]) -> Path | None:
    if resume == "never":
        held = [p.name for _, p in step_dirs(checkpoints)] + ["final"] * (checkpoints.parent / "final").exists()
        if held:  # a fresh run would prune and replace them: an earlier run's results, lost
            raise CheckpointError(
                f"train.resume=never, but output_dir={str(checkpoints.parent)!r} holds an earlier "
                f"run ({', '.join(held[:4])}) that a fresh start would replace; choose another "
                "output_dir, or remove that run yourself"
            )
        return None
    if resume != "auto":
        read(Path(resume))  # a named checkpoint must be whole: its error otherwise
        return Path(resume)
    skipped = []
    for _, folder in step_dirs(checkpoints):
        try:
            verify(folder)  # incomplete (no manifest) or changed since written: not a checkpoint at all
            read(folder)  # whole: CheckpointDamaged, or a CheckpointError for another run's (raised as it is)
            return folder
        except CheckpointDamaged as e:
            reason = str(e)
        except CheckpointError as e:
            if is_valid(folder):
                raise
            reason = str(e)
        print(f"ptune: {reason}; skipped, trying the checkpoint before it", file=sys.stderr, flush=True)
        skipped.append(reason)
    if skipped:
        raise CheckpointError(
            f"{checkpoints}: none of its {len(skipped)} checkpoint(s) can be resumed ({'; '.join(skipped)}); "
            f"nothing was changed. To resume, name a good checkpoint with train.resume=PATH; to start afresh, "
            f"move {checkpoints} away (e.g. `mv {checkpoints} {checkpoints}.unusable`) or choose another output_dir"
        )
    return None


def flat_config(obj, prefix: str = "") -> dict:
    """{dotted key: value} of a config: sections and lists of tasks are opened, other values kept whole."""
    out = {}
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out.update(flat_config(value, key + "."))
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            for i, item in enumerate(value):
                out.update(flat_config(item, f"{key}.{i}."))
        else:
            out[key] = value
    return out


def config_changes(folder: Path, cfg: RunConfig) -> dict[str, tuple]:
    """{dotted key: (checkpoint's value, this config's value)} for the settings the resumed run applies;
    raises ConfigError naming every setting that shapes training and differs, or a train.steps below the
    checkpoint's step."""
    try:
        saved = from_yaml((Path(folder) / "config.yaml").read_text())
    except (OSError, ConfigError) as e:
        raise CheckpointError(f"checkpoint {folder}: config.yaml unreadable ({e})") from None
    step = read_state(folder)["step"]  # checked there: a whole number, its folder's step-N
    if step > cfg.train.steps:
        raise ConfigError(
            f"train.steps={cfg.train.steps}, but checkpoint {folder} is at step {step}: resuming it "
            f"would label a run trained {step} steps as train.steps={cfg.train.steps}. Set "
            f"train.steps={step} or more to continue it (nothing was changed)"
        )
    old, new = flat_config(saved), flat_config(cfg)
    changed = {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    refused = {k: v for k, v in changed.items() if not any(fnmatchcase(k, pat) for pat in RESUMABLE)}
    if refused:
        diffs = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in refused.items())
        raise ConfigError(
            f"train.resume: {folder} was trained with other settings ({diffs}). These shape the "
            "training itself, so a resumed run cannot take them: put the old values back, or "
            "start afresh (another output_dir, or train.resume=never)"
        )
    return changed
