"""From the config's tasks to TaskSpecs and encoded examples.

`resolve_tasks` fills in what the config leaves implicit (preset values, the label list, pooling)
so that the saved config.yaml of a run says exactly what eval and predict must use.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ptune_dist.errors import ConfigError, DataError

from .encode import Example, TaskEncoder
from .presets import apply_preset
from .sources import load_rows
from .task import TaskSpec, label_word_ids


@dataclass
class TaskData:
    spec: TaskSpec
    encoder: TaskEncoder
    train: list[Example]
    eval: list[Example]


def _inferred_labels(task, rows: list[dict], key: str) -> list[str]:
    field = task.tags_field if task.type == "token_classification" else task.label_field
    values = set()
    for i, row in enumerate(rows):
        if field not in row:
            raise DataError(f"{key}.train row {i} has no field {field!r}")
        vals = row[field] if task.type == "token_classification" else [row[field]]
        values.update(str(v).lower() if isinstance(v, bool) else str(v) for v in vals)
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
            raise ConfigError(f"{key}.scoring=verbalizer needs an LM head (model.kind causal_lm or masked_lm); "
                              f"the model loads as an encoder: use {key}.scoring=head")
        if not task.verbalizer:
            raise ConfigError(f"{key}.verbalizer is empty: scoring=verbalizer needs label words (or a preset)")
    labels = list(task.labels) or list(task.verbalizer)
    if not labels:
        if not task.train:
            raise ConfigError(f"{key}.labels: no label list and no training data to infer it from")
        labels = _inferred_labels(task, load_rows(task.train, task.train_split, f"{key}.train", limit), key)
    missing = [lab for lab in labels if task.scoring == "verbalizer" and task.type == "classification"
               and lab not in task.verbalizer]
    if missing:
        raise ConfigError(f"{key}.verbalizer has no label words for labels {missing}")
    pooling = task.pooling if task.pooling != "auto" else ("last" if kind == "causal_lm" else "cls")
    return dataclasses.replace(task, labels=labels, pooling=pooling)


def make_spec(task, tokenizer, key: str) -> TaskSpec:
    words = [list(task.verbalizer.get(lab, [])) for lab in task.labels]
    verbalized = task.type == "classification" and task.scoring == "verbalizer"
    return TaskSpec(
        name=task.name, type=task.type, scoring=task.scoring, labels=list(task.labels), label_words=words,
        label_word_ids=label_word_ids(words, task.labels, tokenizer, key) if verbalized else [],
        pooling=task.pooling, max_new_tokens=task.max_new_tokens)


def check_lengths(data_cfg, info, num_virtual_tokens: int, depth: str) -> int:
    """The token budget of one example; the deep prefix also takes positions."""
    prefix = num_virtual_tokens if depth == "deep" else 0
    if info.max_positions and data_cfg.max_length > info.max_positions:
        raise ConfigError(f"data.max_length={data_cfg.max_length} exceeds the model's {info.max_positions} "
                          "positions (virtual tokens included)")
    if data_cfg.max_length <= prefix:
        raise ConfigError(f"data.max_length={data_cfg.max_length} leaves no room after {prefix} virtual tokens")
    return data_cfg.max_length - prefix


def encode_rows(encoder: TaskEncoder, rows: list[dict], key: str) -> list[Example]:
    return [encoder.encode(row, f"{key} row {i}") for i, row in enumerate(rows)]


def prepare_tasks(tasks, data_cfg, tokenizer, info, num_virtual_tokens: int, depth: str,
                  splits=("train", "eval")) -> list[TaskData]:
    """Specs, encoders and encoded examples of every (resolved) task, for the asked splits."""
    budget = check_lengths(data_cfg, info, num_virtual_tokens, depth)
    num_soft = num_virtual_tokens if depth == "shallow" else 0
    out = []
    for i, task in enumerate(tasks):
        key = f"tasks.{i}"
        spec = make_spec(task, tokenizer, key)
        enc = TaskEncoder(spec, task, tokenizer, info.kind, num_soft, budget, data_cfg.truncation, i, key)
        parts = {}
        for split, source, hub_split, limit in (("train", task.train, task.train_split, data_cfg.max_train_examples),
                                                ("eval", task.eval, task.eval_split, data_cfg.max_eval_examples)):
            if split not in splits or not source:
                parts[split] = []
                continue
            rows = load_rows(source, hub_split, f"{key}.{split}", limit)
            parts[split] = encode_rows(enc, rows, f"{key}.{split}={source!r}")
        out.append(TaskData(spec, enc, parts["train"], parts["eval"]))
    return out
