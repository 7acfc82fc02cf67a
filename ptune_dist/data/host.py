"""What the host needs to know about a batch, read from its CPU tensors before the batch moves to the device.

    describe(batch, task_types) -> the batch with "host": HostInfo, and the index tensors the step uses

On a GPU every value the host reads from a device tensor (a task id, a count, a boolean mask's size) stalls
the host until the device has caught up. So whatever the model, its losses and the training loop need to
know on the host is read here, once per batch, from the batch as collated on the CPU (a background thread
does it while the device runs the previous step: train/prefetch.py), and the per-sequence indices the device
needs are computed here as tensors that move with the batch:

    table_index  [S]        each sequence's place in HostInfo.tasks (the rows of a mixed-task prompt table)
    group_order  [S]        the sequences sorted by task, stably: task t's sequences are
                            group_order[start:end] for its (t, start, end) in HostInfo.groups
    label_index  [n]        generation: the flat positions b * T + t of the hidden states that predict a
    label_gold   [n]        label (labels[b, t + 1], not the first token of a packed sequence), and the labels

The unit is the sequence (data/batch.py: one a row when padded, several when packed; `seq_task` has one
task id per sequence). Every tensor is
made on the device of the batch's tensors: on the CPU before the move (no sync); a batch that is already on
a GPU (a caller that skipped this step) pays its syncs here, once, and still works.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import is_packed
from .encode import IGNORE


@dataclass(frozen=True)
class HostInfo:
    sequences: int  # S: one a row (padded) or several (packed)
    seq_task: tuple  # each sequence's task id
    tasks: tuple  # the distinct task ids present, ascending
    groups: tuple  # (task, start, end) into group_order, per task present
    task_type: str  # the batch's type: every task of a batch has the same
    padded: bool  # some position is padding (attention_mask has a 0)
    tokens: int  # real tokens (attention_mask's sum)
    targets: int  # what the batch's loss is the mean over (the objective's Output.count)
    longest: int  # the longest sequence in tokens (a packed batch's unpacked view is this wide)


def describe(batch: dict, task_types: list[str]) -> dict:
    """`batch` with "host" and the index tensors added (a new dict; the tensors it had are shared, not copied).
    `task_types`: each task's type (TaskSpec.type), by task id."""
    seq_task = batch["seq_task"]
    ids = seq_task.tolist()
    tasks = tuple(sorted(set(ids)))
    kind = task_types[ids[0]]
    device = seq_task.device
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    groups, start = [], 0
    for t in tasks:
        n = ids.count(t)
        groups.append((t, start, start + n))
        start += n
    mask = batch["attention_mask"]
    tokens = int(mask.sum())
    out = {
        **batch,
        "table_index": torch.tensor([tasks.index(t) for t in ids], dtype=torch.long, device=device),
        "group_order": torch.tensor(order, dtype=torch.long, device=device),
    }
    longest = int(batch["seq_len"].max()) if is_packed(batch) else mask.shape[1]
    if kind == "generation" and "labels" in batch:
        out["label_index"], out["label_gold"] = label_positions(batch)
        targets = len(out["label_index"])
    elif kind == "generation":  # prompts to decode: nothing to predict a loss on
        targets = 0
    elif kind == "token_classification":
        targets = int((batch["labels"] != IGNORE).sum()) if "labels" in batch else 0
    else:
        targets = len(ids)
    out["host"] = HostInfo(
        len(ids), tuple(ids), tasks, tuple(groups), kind, tokens < mask.numel(), tokens, targets, longest
    )
    return out


def label_positions(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions b * T + t, labels[b, t + 1]) of every next-token target: labels[b, t + 1] is not IGNORE
    and position t + 1 does not start a packed sequence (a sequence's first token is no one's next token)."""
    labels = batch["labels"]
    B, T = labels.shape
    target = labels[:, 1:] != IGNORE
    if is_packed(batch):
        starts = torch.zeros(B, T, dtype=torch.bool, device=labels.device)
        starts[batch["seq_row"], batch["seq_start"]] = True
        target &= ~starts[:, 1:]
    b, t = target.nonzero(as_tuple=True)
    return b * T + t, labels[b, t + 1]
