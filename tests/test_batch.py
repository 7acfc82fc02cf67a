"""The batch's key table (ptune_dist/data/batch.py) is what collate and collate_packed make: exactly its keys,
per-token keys [B, T] and per-sequence keys [S] in both layouts, and data/host.py's description per sequence."""

import pytest

from ptune_dist.data.batch import DESCRIBED, OPTIONAL, PACKED, PADDED, PER_SEQUENCE, PER_TOKEN, is_packed
from ptune_dist.data.collate import collate
from ptune_dist.data.encode import IGNORE, Example
from ptune_dist.data.host import describe
from ptune_dist.data.packing import collate_packed

EXAMPLES = [
    Example([5, 6, 7], 0, soft=[0], labels=1, answer_pos=2),
    Example([8, 9], 1, soft=[0], labels=0, answer_pos=1),
    Example([4, 4, 4, 4], 0, soft=[0], labels=2, answer_pos=3),
]
TOKENS = [Example([5, 6, 7], 0, labels=[IGNORE, 3, 4]), Example([8, 9], 1, labels=[IGNORE, 2])]


def shapes_follow_the_table(batch, B, T, S, class_labels):
    for key, value in batch.items():
        if key in PER_TOKEN:
            assert tuple(value.shape) == (B, T), key
        elif key in PER_SEQUENCE:
            assert tuple(value.shape) == (S,), key
    assert tuple(batch["labels"].shape) == ((S,) if class_labels else (B, T))


@pytest.mark.parametrize("examples, class_labels", [(EXAMPLES, True), (TOKENS, False)])
def test_padded_batch_one_sequence_a_row(examples, class_labels):
    batch = collate(examples, pad_id=0)
    assert PADDED <= set(batch) <= PADDED | OPTIONAL and not is_packed(batch)
    shapes_follow_the_table(batch, len(examples), 4 if class_labels else 3, len(examples), class_labels)
    assert batch["seq_task"].tolist() == [ex.task_id for ex in examples]


@pytest.mark.parametrize("examples, class_labels", [(EXAMPLES, True), (TOKENS, False)])
def test_packed_batch_the_same_keys_per_sequence(examples, class_labels):
    batch = collate_packed([examples[:2], examples[2:]] if class_labels else [examples], pad_id=0, capacity=8)
    assert PACKED <= set(batch) <= PACKED | OPTIONAL and is_packed(batch)
    rows = 2 if class_labels else 1
    shapes_follow_the_table(batch, rows, 8, len(examples), class_labels)
    assert batch["seq_task"].tolist() == [ex.task_id for ex in examples]  # per sequence, as padded


def test_described_batch_counts_sequences_in_both_layouts():
    types = ["classification", "classification"]
    padded = describe(collate(EXAMPLES, pad_id=0), types)
    packed = describe(collate_packed([EXAMPLES[:2], EXAMPLES[2:]], pad_id=0, capacity=8), types)
    for batch in (padded, packed):
        assert set(batch) - PACKED - OPTIONAL <= DESCRIBED
        host = batch["host"]
        assert host.sequences == 3 and host.seq_task == (0, 1, 0) and host.targets == 3
        assert batch["table_index"].tolist() == [0, 1, 0] and batch["group_order"].tolist() == [0, 2, 1]
