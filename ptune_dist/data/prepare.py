"""From the config's tasks to TaskSpecs and encoded examples.

`resolve_tasks` fills in what the config leaves implicit (preset values, the label list, pooling)
so that the saved config.yaml of a run says exactly what eval and predict must use.

A row that does not fit its task (ptune_dist.data.rows) stops with an error naming it, or with
data.on_bad_row=skip is left out: one line on stderr per split says how many and why the first was,
and a split left with no row is still an error. Labels are inferred from the rows that fit only.
data.max_*_examples counts the rows read, before any is left out.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from ptune_dist.errors import ConfigError, DataError
from ptune_dist.methods.placement import Placement
from ptune_dist.rank_env import DistEnv

from .encode import Example, TaskEncoder, task_template
from .presets import apply_preset
from .rows import BadRow, RowCheck, Rows
from .sources import load_rows
from .task import TaskSpec, label_word_ids


@dataclass
class TaskData:
    spec: TaskSpec
    encoder: TaskEncoder
    train: list[Example]
    eval: list[Example]


def _inferred_labels(task, rows: Rows, key: str) -> list[str]:
    """The labels of the training rows that fit the task; the others are reported (or left out) when
    prepare_tasks encodes the same rows, so that data.on_bad_row decides there, once."""
    field = task.tags_field if task.type == "token_classification" else task.label_field
    check = RowCheck(task, task_template(task, key), key)
    values, first = set(), None
    for i, row in enumerate(rows):
        try:
            row = check(row, rows.where(i))
        except BadRow as e:
            first = first or e
            continue
        vals = row[field] if task.type == "token_classification" else [row[field]]
        values.update(str(v).lower() if isinstance(v, bool) else str(v) for v in vals)
    if not values:
        raise first or DataError(f"{rows.name}: no labels to infer {key}.labels from")
    return sorted(values)


def resolve_task(task, kind: str, key: str, limit: int = 0):
    """The task with preset values, labels and pooling filled in; reads the training rows only when the
    label list must be inferred from them."""
    task = apply_preset(task, kind, key)
    if task.type == "generation":
        if kind != "causal_lm":
            raise ConfigError(f"{key}.type=generation needs a causal LM; model.kind is {kind}")
        return task
    if task.type == "classification" and task.scoring == "verbalizer":
        if kind == "encoder":
            raise ConfigError(
                f"{key}.scoring=verbalizer needs an LM head (model.kind causal_lm or masked_lm); "
                f"the model loads as an encoder: use {key}.scoring=head"
            )
        if not task.verbalizer:
            raise ConfigError(f"{key}.verbalizer is empty: scoring=verbalizer needs label words (or a preset)")
    labels = list(task.labels) or list(task.verbalizer)
    if not labels:
        if not task.train:
            raise ConfigError(f"{key}.labels: no label list and no training data to infer it from")
        labels = _inferred_labels(task, load_rows(task.train, task.train_split, f"{key}.train", limit), key)
    missing = [
        lab
        for lab in labels
        if task.scoring == "verbalizer" and task.type == "classification" and lab not in task.verbalizer
    ]
    if missing:
        raise ConfigError(f"{key}.verbalizer has no label words for labels {missing}")
    pooling = task.pooling if task.pooling != "auto" else ("last" if kind == "causal_lm" else "cls")
    return dataclasses.replace(task, labels=labels, pooling=pooling)


def make_spec(task, tokenizer, key: str) -> TaskSpec:
    words = [list(task.verbalizer.get(lab, [])) for lab in task.labels]
    verbalized = task.type == "classification" and task.scoring == "verbalizer"
    return TaskSpec(
        name=task.name,
        type=task.type,
        scoring=task.scoring,
        labels=list(task.labels),
        label_words=words,
        label_word_ids=label_word_ids(words, task.labels, tokenizer, key) if verbalized else [],
        pooling=task.pooling,
        max_new_tokens=task.max_new_tokens,
    )


def check_lengths(data_cfg, info, num_virtual_tokens: int, placement: Placement) -> int:
    """The token budget of one example; a prefix (placement DEEP) also takes positions."""
    prefix = placement.prefix_length(num_virtual_tokens)
    if info.max_positions and data_cfg.max_length > info.max_positions:
        raise ConfigError(
            f"data.max_length={data_cfg.max_length} exceeds the model's {info.max_positions} "
            "positions (virtual tokens included)"
        )
    if data_cfg.max_length <= prefix:
        raise ConfigError(f"data.max_length={data_cfg.max_length} leaves no room after {prefix} virtual tokens")
    return data_cfg.max_length - prefix


_said: set[str] = set()  # skip reports already printed: the baseline view encodes the eval split again


def encode_rows(encoder: TaskEncoder, rows: list[dict], key: str, on_bad_row: str = "error") -> list[Example]:
    """The examples of `rows` (a Rows names each row by its line; a plain list by `key` and index)."""
    out, bad = [], []
    for i, row in enumerate(rows):
        where = rows.where(i) if isinstance(rows, Rows) else f"{key} row {i}"
        try:
            out.append(encoder.encode(row, where))
        except BadRow as e:
            if on_bad_row != "skip":
                raise
            bad.append(e)
    if not bad:
        return out
    name = rows.name if isinstance(rows, Rows) else key
    first = bad[0].short(name)
    if not out:
        raise DataError(
            f"{name}: none of the {len(rows)} rows fits the task (data.on_bad_row=skip left them "
            f"all out); the first: {first}"
        )
    line = (
        f"ptune: {name}: left out {len(bad)} of {len(rows)} rows that do not fit the task "
        f"(data.on_bad_row=skip); the first: {first}"
    )
    if line not in _said and DistEnv.from_environ().is_main:  # every rank encodes the same rows: say it once
        _said.add(line)
        print(line, file=sys.stderr, flush=True)
    return out


def prepare_tasks(
    tasks, data_cfg, tokenizer, info, num_virtual_tokens: int, placement: Placement, splits=("train", "eval")
) -> list[TaskData]:
    """Specs, encoders and encoded examples of every (resolved) task, for the asked splits."""
    budget = check_lengths(data_cfg, info, num_virtual_tokens, placement)
    num_soft = placement.soft_slots(num_virtual_tokens)
    out = []
    for i, task in enumerate(tasks):
        key = f"tasks.{i}"
        spec = make_spec(task, tokenizer, key)
        enc = TaskEncoder(spec, task, tokenizer, info.kind, num_soft, budget, data_cfg.truncation, i, key)
        parts = {}
        for split, source, hub_split, limit in (
            ("train", task.train, task.train_split, data_cfg.max_train_examples),
            ("eval", task.eval, task.eval_split, data_cfg.max_eval_examples),
        ):
            if split not in splits or not source:
                parts[split] = []
                continue
            rows = load_rows(source, hub_split, f"{key}.{split}", limit)
            parts[split] = encode_rows(enc, rows, f"{key}.{split}={source!r}", data_cfg.on_bad_row)
        out.append(TaskData(spec, enc, parts["train"], parts["eval"]))
    return out
