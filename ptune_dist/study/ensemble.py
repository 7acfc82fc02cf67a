"""Prompt ensembles (Lester et al. 2021, Table 3): the prompts one method learned for one task with different
seeds, scored together on one frozen base, then a majority vote.

The members are the done cells of the study's ablation method at its main setting (prompt length and init),
one per seed, for each model and task: at least MIN_MEMBERS of them, of a classification task. The base loads
once; each member's prompt (and head) goes into its own slot of one PromptModel, the task copied once per
member (`<task>_s<seed>`), so every batch holds each example once per member, each row with its member's
prompt (the mixed-task machinery). The vote is the class most members pick; a tie goes to the tied class with
the highest summed score of the members (label-word scoring), else to the class first in the task's labels.

`ptune study ensemble STUDY_DIR` writes ensembles/<model>__<task>.json (members, each member's accuracy, the
ensemble's accuracy, macro-F1 and the task's main metric); `ptune study report` shows them. The local queue
runs it after its cells; on Slurm run it where the base fits once the arrays are done. A record read back is
checked field by field (RECORD_KEYS); a damaged one is named on stderr, left out of the report, and written
again by the next `ptune study ensemble`.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

import torch

from ptune_dist.checkpoint.locate import resolve_checkpoint
from ptune_dist.checkpoint.nofollow import refuse_link
from ptune_dist.checkpoint.read import check_fits, load_trainable
from ptune_dist.config import load_config
from ptune_dist.data.collate import collate
from ptune_dist.device import to_device
from ptune_dist.errors import PtuneError
from ptune_dist.launcher.files import make_dir, write_file
from ptune_dist.launcher.grid_attempts import say_once
from ptune_dist.launcher.grid_cells import cell_dir, state
from ptune_dist.methods import method_class
from ptune_dist.read_back import count, list_of, name, number, one_of, read_record, text, value

from .cells import INITS, slug
from .folder import read_cells
from .rows import main_metric

MIN_MEMBERS = 3  # a majority of two is a coin toss on every disagreement


def member_groups(study_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """{(model, task): the done main-setting cells of the ablation method, by seed} for every group that can vote."""
    cfg = load_config([study_dir / "config.yaml"])
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in read_cells(study_dir):
        if (cell["method"] == cfg.study.ablation_method and "main" in cell["parts"]
                and method_class(cell["method"]).depth != "none"  # a prompt per member, on one shared base
                and cell.get("task_type", "classification") == "classification"
                and state(cell_dir(study_dir, cell["id"])) == "done"):
            groups.setdefault((cell["model"], cell["task"]), []).append(cell)
    return {k: sorted(v, key=lambda c: c["seed"]) for k, v in groups.items() if len(v) >= MIN_MEMBERS}


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


def ensemble_session(folders: list[Path], seeds: list[int]):
    """One session over the members' shared base: the task once per member, each slot holding its prompt."""
    from ptune_dist.train.session import build_session

    cfg = load_config([folders[0] / "config.yaml"])
    (task,) = cfg.tasks
    name = task.name or "task0"
    slots = [f"{name}_s{seed}" for seed in seeds]
    cfg = dataclasses.replace(cfg, tasks=[dataclasses.replace(task, name=s) for s in slots],
                              distributed=dataclasses.replace(cfg.distributed, engine="torch"))
    s = build_session(cfg, splits=("eval",))
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
    `batch_rows` rows a batch (each example once per member); the vote is applied later."""
    examples, n = s.tasks[0].eval, len(s.tasks)
    per_batch = max(1, batch_rows // n)
    gold, member_preds, member_scores = [], [[] for _ in range(n)], [[] for _ in range(n)]
    for i in range(0, len(examples), per_batch):
        chunk = examples[i:i + per_batch]
        rows = [dataclasses.replace(ex, task_id=m) for ex in chunk for m in range(n)]  # each example once per member
        batch = collate(rows, s.pad_id, s.cfg.data.padding_side)
        out = s.model(to_device(s.model.describe(batch), s.device))
        for r, ex in enumerate(chunk):
            gold.append(ex.labels)
            for m in range(n):
                member_preds[m].append(out.preds[r * n + m])
                member_scores[m].append(out.scores[r * n + m] if out.scores else None)
    return gold, member_preds, member_scores


def run_group(study_dir: Path, model: str, task: str, cells: list[dict]) -> Path:
    from ptune_dist.train.evaluate import class_metrics

    folders = [resolve_checkpoint(cell_dir(study_dir, c["id"])) for c in cells]
    s = ensemble_session(folders, [c["seed"] for c in cells])
    gold, preds, scores = score(s, s.cfg.data.eval_batch_size)
    classes = len(s.tasks[0].spec.labels)
    voted = [vote([p[i] for p in preds], [sc[i] for sc in scores]) for i in range(len(gold))]
    members = [class_metrics(gold, p, classes) for p in preds]
    ens = class_metrics(gold, voted, classes)
    preset = cells[0].get("preset", "")
    metric, value = main_metric("classification", preset, ens)
    member_scores = [main_metric("classification", preset, m)[1] for m in members]
    record = {"model": model, "task": task, "method": cells[0]["method"], "prompt_length": cells[0]["prompt_length"],
              "init": cells[0]["init"], "members": [c["id"] for c in cells], "seeds": [c["seed"] for c in cells],
              "metric": metric, "score": value, **ens, "member_scores": member_scores,
              "member_mean": statistics.fmean(member_scores), "member_best": max(member_scores),
              "gold": gold, "member_preds": preds, "voted": voted}  # per example, so a reader can check the vote
    path = make_dir(refuse_link(study_dir / "ensembles"), "output_dir") / f"{slug(model)}__{slug(task)}.json"
    return write_file(path, json.dumps(record, indent=1) + "\n", "output_dir")


def run_ensembles(study_dir: Path) -> list[Path]:
    """Every group's ensemble whose file is missing, damaged, or made from other members (more seeds done since)."""
    study_dir = Path(study_dir)
    written = []
    for (model, task), cells in member_groups(study_dir).items():
        path = study_dir / "ensembles" / f"{slug(model)}__{slug(task)}.json"
        old = read_ensemble(path) if path.is_file() else None
        if old is not None and old["members"] == [c["id"] for c in cells]:
            continue
        print(f"ptune study: ensemble of {len(cells)} prompts, {slug(model)} on {task}", file=sys.stderr, flush=True)
        written.append(run_group(study_dir, model, task, cells))
    return written


def _scores(v) -> list:
    scores = list_of(number)(v)
    if not scores:
        raise ValueError("a non-empty list of numbers")
    return scores


# what the report and run_ensembles read of a record: key -> check
RECORD_KEYS = {"model": text, "task": text, "method": text, "prompt_length": count, "init": one_of("", *INITS),
               "members": list_of(name), "metric": text, "score": number, "member_scores": _scores}
REMEDY = "left out of the report; `ptune study ensemble STUDY_DIR` writes it again"


def read_ensemble(path: Path) -> dict | None:
    """The record at `path` with its fields checked, or None when it is damaged (named on stderr)."""
    try:
        record = read_record(path, "an ensemble record `ptune study ensemble` writes", REMEDY)
        return {**record, **{k: value(record, k, check, path, REMEDY) for k, check in RECORD_KEYS.items()}}
    except PtuneError as e:
        say_once(f"ptune study: {e}")
        return None


def read_ensembles(study_dir: Path) -> list[dict]:
    """The study's ensemble records that are whole; each damaged one named on stderr and left out."""
    folder = Path(study_dir) / "ensembles"
    records = [read_ensemble(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return [r for r in records if r is not None]
