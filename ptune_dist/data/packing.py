"""Packing: examples laid end to end in rows of a fixed number of tokens, with no padding between them.

    pack(lengths, capacity, window=64) -> [[example index, ...], ...]
        first-fit in the given order over the last `window` open rows: an example goes into the oldest
        open row it fits in, else opens a new one; a row leaves the window (and is closed) when a new
        row would make `window + 1` open. Deterministic for a given order, so a run's packing follows
        from (seed, epoch, lengths, capacity) alone: the same on any number of ranks, and a resume
        rebuilds it instead of storing it. A larger window fills rows better and moves examples
        further from their place in the order.
    collate_packed(rows, pad_id, capacity=None) -> batch
        one tensor row per packed row; every sequence keeps its own positions (restarting at 0, as when
        it runs alone) and its own index (`segment_ids`), which is what attention and the losses need to
        keep sequences apart. Per-sequence values (task, answer position, class label) come as flat
        [S] tensors in row-major order with `seq_row` / `seq_start` / `seq_len` saying where each
        sequence lies.

The batch of collate_packed (the keys of data/batch.py):

    input_ids, attention_mask  [B, T]   T: the longest row, or `capacity` when given (static shapes)
    segment_ids                [B, T]   0, 1, ... per sequence within its row; -1 on padding
    position_ids               [B, T]   0 .. len-1 within each sequence; 0 on padding
    soft_mask                  [B, T]   virtual-token slots (shallow prompts), when any example has them
    labels                     [B, T]   per-token labels (IGNORE elsewhere), or [S] class labels
    seq_task, answer_pos       [S]      per sequence; answer_pos as a position in its packed row, or -1
    seq_row, seq_start, seq_len [S]     where each sequence lies
"""

from __future__ import annotations

import torch

from .encode import IGNORE, Example


def pack(lengths: list[int], capacity: int, window: int = 64) -> list[list[int]]:
    """Rows of example indices, each row's lengths summing to <= capacity (see the module docstring)."""
    if capacity < 1 or window < 1:
        raise ValueError(f"pack: capacity ({capacity}) and window ({window}) must be >= 1")
    rows: list[list[int]] = []
    free: list[int] = []  # room left in each row
    first_open = 0  # rows before it are closed
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"pack: example {i} has {n} tokens, more than a row's {capacity}")
        if n < 1:
            raise ValueError(f"pack: example {i} is empty")
        for r in range(first_open, len(rows)):
            if free[r] >= n:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
            first_open = max(first_open, len(rows) - window)
    return rows


def collate_packed(rows: list[list[Example]], pad_id: int, capacity: int | None = None) -> dict:
    """The batch of packed rows (see the module docstring); right padding only."""
    fill = [sum(len(ex.input_ids) for ex in row) for row in rows]
    T = capacity if capacity is not None else max(fill)
    if max(fill) > T:
        raise ValueError(f"collate_packed: a row holds {max(fill)} tokens, more than capacity {T}")
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    segments = torch.full((B, T), -1, dtype=torch.long)
    positions = torch.zeros(B, T, dtype=torch.long)
    soft = torch.zeros(B, T, dtype=torch.bool)
    examples = [ex for row in rows for ex in row]
    token_labels = isinstance(examples[0].labels, list)
    has_labels = all(ex.labels is not None for ex in examples)
    tok_labels = torch.full((B, T), IGNORE, dtype=torch.long)
    seq = {key: [] for key in ("seq_row", "seq_start", "seq_len", "seq_task", "answer_pos", "labels")}
    for b, row in enumerate(rows):
        start = 0
        for s, ex in enumerate(row):
            n = len(ex.input_ids)
            ids[b, start : start + n] = torch.tensor(ex.input_ids)
            mask[b, start : start + n] = 1
            segments[b, start : start + n] = s
            positions[b, start : start + n] = torch.arange(n)
            if ex.soft:
                soft[b, torch.tensor(ex.soft) + start] = True
            if has_labels and token_labels:
                tok_labels[b, start : start + n] = torch.tensor(ex.labels)
            for key, value in (
                ("seq_row", b),
                ("seq_start", start),
                ("seq_len", n),
                ("seq_task", ex.task_id),
                ("answer_pos", ex.answer_pos + start if ex.answer_pos >= 0 else -1),
                ("labels", ex.labels if has_labels and not token_labels else 0),
            ):
                seq[key].append(value)
            start += n
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "segment_ids": segments,
        "position_ids": positions,
        **{key: torch.tensor(seq[key], dtype=torch.long) for key in seq if key != "labels"},
    }
    if soft.any():
        batch["soft_mask"] = soft
    if has_labels:
        batch["labels"] = tok_labels if token_labels else torch.tensor(seq["labels"], dtype=torch.long)
    return batch
