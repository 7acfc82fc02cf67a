"""The packer (ptune_dist/data/packing.py): every example packed once, rows within capacity, the packing a
function of the order alone; and a packed batch that keeps each sequence as it is alone (its tokens, labels,
virtual-token slots, answer position, positions restarting at 0) with segment ids that keep them apart."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptune_dist.data.collate import collate
from ptune_dist.data.encode import IGNORE, Example
from ptune_dist.data.packing import collate_packed, pack

lengths_and_capacity = st.integers(1, 64).flatmap(
    lambda cap: st.tuples(st.lists(st.integers(1, cap), min_size=1, max_size=80), st.just(cap), st.integers(1, 8))
)


@settings(max_examples=200, deadline=None)
@given(lengths_and_capacity)
def test_every_example_once_rows_within_capacity_order_kept_in_rows(case):
    lengths, capacity, window = case
    rows = pack(lengths, capacity, window)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= capacity for row in rows)
    assert all(row == sorted(row) for row in rows)
    assert pack(lengths, capacity, window) == rows  # a function of the order alone


def test_boundary_cases():
    assert pack([8, 8, 8], 8) == [[0], [1], [2]]  # a sequence filling a row
    assert pack([1] * 10, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # many short ones, space left over
    assert pack([3, 6, 2, 1], 8) == [[0, 2, 3], [1]]  # first fit: the 2 and the 1 go back to row 0
    assert pack([3, 6, 2, 1], 8, window=1) == [[0], [1, 2], [3]]  # window 1: only the newest row is open
    with pytest.raises(ValueError, match="more than a row"):
        pack([3, 9], 8)
    with pytest.raises(ValueError, match="empty"):
        pack([3, 0], 8)


def _examples():
    cls = [
        Example([5, 6, 7, 8], task_id=0, soft=[1, 2], labels=1, answer_pos=3),
        Example([9, 10], task_id=1, labels=0, answer_pos=1),
        Example([11, 12, 13], task_id=0, soft=[0], labels=2, answer_pos=2),
    ]
    gen = [Example([5, 6, 7], task_id=0, labels=[IGNORE, 6, 7]), Example([8, 9], task_id=0, labels=[IGNORE, 9])]
    return cls, gen


def test_packed_rows_keep_each_sequence_as_it_is_alone():
    cls, _ = _examples()
    batch = collate_packed([[cls[0], cls[1]], [cls[2]]], pad_id=0, capacity=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["segment_ids"].tolist() == [[0, 0, 0, 0, 1, 1, -1, -1], [0, 0, 0, -1, -1, -1, -1, -1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 0], [0, 1, 2, 0, 0, 0, 0, 0]]
    assert batch["seq_row"].tolist() == [0, 0, 1] and batch["seq_start"].tolist() == [0, 4, 0]
    assert batch["seq_task"].tolist() == [0, 1, 0] and batch["labels"].tolist() == [1, 0, 2]
    for s, ex in enumerate(cls):
        alone = collate([ex], pad_id=0)
        row, start, n = (int(batch[k][s]) for k in ("seq_row", "seq_start", "seq_len"))
        assert batch["input_ids"][row, start : start + n].tolist() == alone["input_ids"][0].tolist()
        assert (
            batch["soft_mask"][row, start : start + n].tolist()
            == alone.get("soft_mask", torch.zeros(1, n, dtype=torch.bool))[0].tolist()
        )
        assert int(batch["answer_pos"][s]) - start == int(alone["answer_pos"][0])
    assert int(batch["attention_mask"].sum()) == sum(len(ex.input_ids) for ex in cls)


def test_token_labels_follow_their_sequence_and_padding_is_ignored():
    _, gen = _examples()
    batch = collate_packed([gen], pad_id=0)
    assert batch["input_ids"].shape == (1, 5)
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]
    assert "soft_mask" not in batch
    padded = collate_packed([gen], pad_id=0, capacity=7)
    assert padded["labels"][0, 5:].tolist() == [IGNORE, IGNORE]
    with pytest.raises(ValueError, match="capacity"):
        collate_packed([gen], pad_id=0, capacity=4)


def _loader_examples(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        Example(list(range(1, 2 + int(torch.randint(12, (1,), generator=g)))), task_id=0, labels=i % 2, answer_pos=0)
        for i in range(n)
    ]


def test_packed_loader_same_batches_on_one_or_two_ranks_and_after_a_resume():
    from ptune_dist.data.packed_loader import PackedTrainLoader

    examples = _loader_examples()
    one = PackedTrainLoader(examples, batch_size=4, seed=3, pad_id=0, capacity=16)
    two = [PackedTrainLoader(examples, batch_size=2, seed=3, pad_id=0, capacity=16, rank=r, world=2) for r in (0, 1)]
    it1, it2 = iter(one), [iter(t) for t in two]
    seen = []
    for _ in range(12):  # several epochs
        b1, parts = next(it1), [next(i) for i in it2]
        assert torch.equal(b1["input_ids"], torch.cat([p["input_ids"] for p in parts]))
        assert torch.equal(b1["segment_ids"], torch.cat([p["segment_ids"] for p in parts]))
        seen.append(b1["input_ids"])
    state = one.state_dict()  # 12 batches in: past the first epoch
    assert state["packing"] == 16 and state["epoch"] >= 1
    after = [next(it1)["input_ids"] for _ in range(6)]
    resumed = PackedTrainLoader(examples, batch_size=4, seed=3, pad_id=0, capacity=16)
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert all(torch.equal(a, next(it)["input_ids"]) for a in after)
    assert len({tuple(b.flatten().tolist()) for b in seen}) > 1  # the batches differ (the order is shuffled)


def test_packed_loader_refuses_another_packing_and_too_few_rows():
    from ptune_dist.data.packed_loader import PackedTrainLoader

    examples = _loader_examples()
    state = PackedTrainLoader(examples, batch_size=2, seed=0, pad_id=0, capacity=16).state_dict()
    with pytest.raises(ValueError, match="packed to 16 tokens"):
        PackedTrainLoader(examples, batch_size=2, seed=0, pad_id=0, capacity=32).load_state_dict(state)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        PackedTrainLoader(examples[:4], batch_size=4, seed=0, pad_id=0, capacity=64)
