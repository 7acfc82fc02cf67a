"""The batch: the one table of its keys, each meaning one thing whether the batch is padded or packed.

A batch is a plain dict of tensors (and a few host values), not a class: DeepSpeed, `device.pin` /
`to_device`, the prefetch thread and `{**batch, ...}` copies all pass it through as a mapping, and a mapping
is what `torch.utils` and DeepSpeed know how to move. Its keys are the ones below and no others; a test
(tests/test_batch.py) checks that collate (data/collate.py) and collate_packed (data/packing.py) make exactly
these, with these shapes.

The unit is the sequence: one example, its tokens and its targets. A padded batch holds one sequence per row
(sequence i is row i); a packed batch lays several end to end in a row, and `seq_row` / `seq_start` /
`seq_len` say where each lies. Every per-sequence key is [S] in both layouts (S = B when padded), every
per-token key [B, T]; nothing changes meaning with the layout:

    key             shape     made by         meaning
    input_ids       [B, T]    both            token ids; pad_id on padding
    attention_mask  [B, T]    both            1 on a real token, 0 on padding
    soft_mask       [B, T]    both, optional  the virtual-token slots of a shallow prompt (present when any)
    labels          [B, T]    both, optional  per-token labels (generation, token classification), IGNORE elsewhere
                    [S]                       or per sequence: its class index (classification)
    seq_task        [S]       both            each sequence's task id (its place in the run's task list)
    answer_pos      [S]       both            the position of a sequence's answer token in its row, or -1
    segment_ids     [B, T]    packed          0, 1, ... the sequence a token belongs to within its row; -1 on padding
    position_ids    [B, T]    packed          0 .. len-1 within each sequence
    seq_row         [S]       packed          the row a sequence lies in
    seq_start       [S]       packed          its first token's position in that row
    seq_len         [S]       packed          its tokens
    skip            bool      eval batches    a stand-in batch a rank runs (ZeRO-3 collectives) and does not count

and what data/host.py `describe` adds before the batch moves (HostInfo: host numbers; tensors per sequence):

    host            HostInfo  the tasks present, the sequences, the counts, the task type, the longest sequence
    table_index     [S]       each sequence's place in HostInfo.tasks (the rows of a mixed-task prompt table)
    group_order     [S]       the sequences sorted by task, stably (HostInfo.groups index it)
    label_index     [n]       generation: flat positions b * T + t that predict a label
    label_gold      [n]       generation: those labels

`is_packed(batch)` is the one test of the layout.
"""

from __future__ import annotations

PER_TOKEN = ("input_ids", "attention_mask", "soft_mask", "segment_ids", "position_ids")
PER_SEQUENCE = ("seq_task", "answer_pos", "seq_row", "seq_start", "seq_len")
PADDED = {"input_ids", "attention_mask", "seq_task", "answer_pos"}  # always there (labels, soft_mask optional)
PACKED = PADDED | {"segment_ids", "position_ids", "seq_row", "seq_start", "seq_len"}
OPTIONAL = {"soft_mask", "labels", "skip"}
DESCRIBED = {"host", "table_index", "group_order", "label_index", "label_gold"}


def is_packed(batch: dict) -> bool:
    """A packed batch (several sequences a row: data/packing.py) rather than a padded one (one a row)."""
    return "seq_row" in batch
