"""Pad a list of Examples into a batch of tensors (left or right padding), one sequence a row: the keys of
data/batch.py."""

from __future__ import annotations

import torch

from .encode import IGNORE, Example


def collate(examples: list[Example], pad_id: int, padding_side: str = "right") -> dict:
    T = max(len(ex.input_ids) for ex in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    soft = torch.zeros(B, T, dtype=torch.bool)
    answer = torch.full((B,), -1, dtype=torch.long)
    token_labels = isinstance(examples[0].labels, list)
    labels = torch.full((B, T), IGNORE, dtype=torch.long) if token_labels else torch.zeros(B, dtype=torch.long)
    has_labels = all(ex.labels is not None for ex in examples)
    for i, ex in enumerate(examples):
        n = len(ex.input_ids)
        off = T - n if padding_side == "left" else 0
        ids[i, off : off + n] = torch.tensor(ex.input_ids)
        mask[i, off : off + n] = 1
        if ex.soft:
            soft[i, torch.tensor(ex.soft) + off] = True
        if ex.answer_pos >= 0:
            answer[i] = ex.answer_pos + off
        if has_labels and token_labels:
            labels[i, off : off + n] = torch.tensor(ex.labels)
        elif has_labels:
            labels[i] = ex.labels
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "answer_pos": answer,
        "seq_task": torch.tensor([ex.task_id for ex in examples]),
    }
    if soft.any():
        batch["soft_mask"] = soft
    if has_labels:
        batch["labels"] = labels
    return batch
