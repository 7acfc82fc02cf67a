"""Prompt ensembles at inference: the prompts of several runs trained on one base and one classification task
(e.g. one per seed), scored together on that base in one pass, then a majority vote (Lester et al. 2021,
Table 3). `ptune eval RUN1 RUN2 RUN3 --ensemble` prints `evaluate_ensemble`'s result; `ptune study ensemble`
asks it for each model and task of a study (study/ensemble.py).

The base loads once, from the first member's config. Each member's prompt (and head) goes into its own slot of
one PromptModel, the task copied once per member (`<task>_m<i>`), so every batch holds each example once per
member, each row with its member's prompt (the mixed-task machinery). The vote is the class most members pick; a
tie goes to the tied class with the highest summed score of the members (label-word scoring), else to the class
first in the task's labels. Members must be runs of one task (one `tasks` entry) whose trained tensors fit the
first member's model (checkpoint/read.check_fits names the file and tensor otherwise). Writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import torch

from ptune_dist.checkpoint.locate import resolve_checkpoint
from ptune_dist.checkpoint.read import check_fits, load_trainable
from ptune_dist.config import load_config
from ptune_dist.data.collate import collate
from ptune_dist.device import to_device
from ptune_dist.errors import ConfigError, DataError

MIN_MEMBERS = 2


def vote(preds: list[int], scores: list | None) -> int:
    """The class most members pick; ties by summed scores, then by label order."""
    counts = Counter(preds)
    top = max(counts.values())
    tied = sorted(c for c, n in counts.items() if n == top)
    if len(tied) > 1 and scores and all(s is not None for s in scores):
        return max(tied, key=lambda c: (sum(s[c] for s in scores), -c))
    return tied[0]


def member_weights(folder: Path, task: str, slot: str) -> dict[str, torch.Tensor]:
    """A member's trained tensors, renamed from its task's slot to `slot` (prompts.<task>. and heads.<task>.)."""
    out = {}
    for key, tensor in load_trainable(folder).items():
        for kind in ("prompts", "heads"):
            key = key.replace(f"{kind}.{task}.", f"{kind}.{slot}.", 1) if key.startswith(f"{kind}.") else key
        out[key] = tensor
    return out


def ensemble_session(folders: list[Path], overrides=()):
    """One session over the members' shared base (the first member's config): the task once per member, each
    slot holding its member's prompt."""
    from ptune_dist.train.session import build_session

    cfg = load_config([folders[0] / "config.yaml"], list(overrides))
    if len(cfg.tasks) != 1:
        raise ConfigError(f"{folders[0]}: tasks has {len(cfg.tasks)} entries; an ensemble scores runs of one task")
    (task,) = cfg.tasks
    name = task.name or "task0"
    slots = [f"{name}_m{i}" for i in range(len(folders))]
    cfg = dataclasses.replace(
        cfg,
        tasks=[dataclasses.replace(task, name=s) for s in slots],
        distributed=dataclasses.replace(cfg.distributed, engine="torch"),
    )
    s = build_session(cfg, splits=("eval",))
    if s.tasks[0].spec.type != "classification":
        raise ConfigError(f"{folders[0]}: tasks.0 is a {s.tasks[0].spec.type} task; a majority vote needs classes")
    params = s.model.trainable_parameters()
    saved = {}
    for folder, slot in zip(folders, slots):
        saved.update(member_weights(folder, name, slot))
    check_fits(folders[0], saved, {n: p.shape for n, p in params.items()})
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    s.model.eval()
    return s


@torch.no_grad()
def score(s, batch_rows: int) -> tuple[list[int], list[list[int]], list[list]]:
    """(gold, each member's predictions, each member's class scores or None) over the task's evaluation examples,
    `batch_rows` rows a batch (each example once per member)."""
    examples, n = s.tasks[0].eval, len(s.tasks)
    per_batch = max(1, batch_rows // n)
    gold, member_preds, member_scores = [], [[] for _ in range(n)], [[] for _ in range(n)]
    for i in range(0, len(examples), per_batch):
        chunk = examples[i : i + per_batch]
        rows = [dataclasses.replace(ex, task_id=m) for ex in chunk for m in range(n)]  # each example once per member
        batch = collate(rows, s.pad_id, s.cfg.data.padding_side)
        out = s.model(to_device(s.model.describe(batch), s.device))
        for r, ex in enumerate(chunk):
            gold.append(ex.labels)
            for m in range(n):
                member_preds[m].append(out.preds[r * n + m])
                member_scores[m].append(out.scores[r * n + m] if out.scores else None)
    return gold, member_preds, member_scores


def evaluate_ensemble(runs, overrides=()) -> dict:
    """The members' and the vote's metrics on the first member's eval data: {"members": [checkpoint folders],
    "member_metrics": [{accuracy, macro_f1, examples}], "ensemble": {...}, "gold", "member_preds", "voted"}."""
    from ptune_dist.train.evaluate import class_metrics

    if len(runs) < MIN_MEMBERS:
        raise ConfigError(f"an ensemble needs at least {MIN_MEMBERS} runs; {len(runs)} given")
    folders = [resolve_checkpoint(r) for r in runs]
    s = ensemble_session(folders, overrides)
    if not s.tasks[0].eval:
        raise DataError("tasks.0.eval: no evaluation data configured (set tasks.0.eval=...)")
    gold, preds, scores = score(s, s.cfg.data.eval_batch_size)
    classes = len(s.tasks[0].spec.labels)
    voted = [vote([p[i] for p in preds], [sc[i] for sc in scores]) for i in range(len(gold))]
    return {
        "members": [str(f) for f in folders],
        "member_metrics": [class_metrics(gold, p, classes) for p in preds],
        "ensemble": class_metrics(gold, voted, classes),
        "gold": gold,
        "member_preds": preds,
        "voted": voted,
    }
