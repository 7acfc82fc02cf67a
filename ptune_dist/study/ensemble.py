"""Prompt ensembles (Lester et al. 2021, Table 3): the prompts one method learned for one task with different
seeds, scored together on one frozen base, then a majority vote.

The members are the done cells of the study's ablation method at its main setting (prompt length and init),
one per seed, for each model and task: at least MIN_MEMBERS of them, of a classification task. Scoring them
(one base, each member's prompt in its own slot, one pass, the vote) is an inference feature:
ptune_dist/inference_ensemble.py `evaluate_ensemble`, which `ptune eval RUN... --ensemble` uses too; this
module chooses the members and keeps the study's record.

`ptune study ensemble STUDY_DIR` writes ensembles/<model>__<task>.json (members, each member's accuracy, the
ensemble's accuracy, macro-F1 and the task's main metric); `ptune study report` shows them. The local queue
runs it after its cells; on Slurm run it where the base fits once the arrays are done. A record read back is
checked field by field (RECORD_KEYS); a damaged one is named on stderr, left out of the report, and written
again by the next `ptune study ensemble`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from ptune_dist.config import load_config
from ptune_dist.errors import PtuneError
from ptune_dist.launcher.files import make_dir, write_file
from ptune_dist.launcher.grid_attempts import say_once
from ptune_dist.launcher.grid_cells import cell_dir, state
from ptune_dist.methods import method_class
from ptune_dist.nofollow import refuse_link
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
        if (
            cell["method"] == cfg.study.ablation_method
            and "main" in cell["parts"]
            and method_class(cell["method"]).placement.learned  # a prompt per member, on one shared base
            and cell.get("task_type", "classification") == "classification"
            and state(cell_dir(study_dir, cell["id"])) == "done"
        ):
            groups.setdefault((cell["model"], cell["task"]), []).append(cell)
    return {k: sorted(v, key=lambda c: c["seed"]) for k, v in groups.items() if len(v) >= MIN_MEMBERS}


def run_group(study_dir: Path, model: str, task: str, cells: list[dict]) -> Path:
    """The group's ensemble, scored on the inference side (inference_ensemble.evaluate_ensemble), as a record."""
    from ptune_dist.inference_ensemble import evaluate_ensemble

    scored = evaluate_ensemble([cell_dir(study_dir, c["id"]) for c in cells])
    gold, preds, voted = scored["gold"], scored["member_preds"], scored["voted"]
    members, ens = scored["member_metrics"], scored["ensemble"]
    preset = cells[0].get("preset", "")
    metric, value = main_metric("classification", preset, ens)
    member_scores = [main_metric("classification", preset, m)[1] for m in members]
    record = {
        "model": model,
        "task": task,
        "method": cells[0]["method"],
        "prompt_length": cells[0]["prompt_length"],
        "init": cells[0]["init"],
        "members": [c["id"] for c in cells],
        "seeds": [c["seed"] for c in cells],
        "metric": metric,
        "score": value,
        **ens,
        "member_scores": member_scores,
        "member_mean": statistics.fmean(member_scores),
        "member_best": max(member_scores),
        "gold": gold,
        "member_preds": preds,
        "voted": voted,
    }  # per example, so a reader can check the vote
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
RECORD_KEYS = {
    "model": text,
    "task": text,
    "method": text,
    "prompt_length": count,
    "init": one_of("", *INITS),
    "members": list_of(name),
    "metric": text,
    "score": number,
    "member_scores": _scores,
}
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
