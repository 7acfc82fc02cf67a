"""Evaluation and predict on packed rows (data.packing=true) give what they give padded: the same metrics for
classification (shallow and deep prompts, mixed tasks), generation and token classification, the same
predictions; and every rank of a packed evaluation runs the same number of batches over its own share."""

import dataclasses

import pytest
import torch

from conftest import FIXTURES, MINI, assert_close_rel, session
from ptune_dist.data.encode import Example
from ptune_dist.data.packed_loader import packed_eval_batches
from ptune_dist.inference import predict_rows
from ptune_dist.train.evaluate import evaluate

MIXED = (
    "tasks=[{name: support, preset: support}, "
    f"{{name: rte, preset: rte, train: '{FIXTURES}/superglue/rte.jsonl', eval: '{FIXTURES}/superglue/rte.jsonl'}}]"
)
NER = [
    f"model.name_or_path={MINI}",
    "method.name=p_tuning_v2",
    "method.init=random",
    "tasks.0.name=ner",
    "tasks.0.preset=",
    "tasks.0.type=token_classification",
    "tasks.0.scoring=head",
    f"tasks.0.train={FIXTURES}/ner.jsonl",
    f"tasks.0.eval={FIXTURES}/ner.jsonl",
]
CASES = {
    "shallow": ("smol", ["tasks.0.preset=support", "method.name=prompt_tuning"]),
    "deep-mixed": ("smol", [MIXED, "method.name=p_tuning_v2"]),
    "generation": (
        "smol",
        [
            "tasks.0.type=generation",
            f"tasks.0.train={FIXTURES}/instructions.jsonl",
            f"tasks.0.eval={FIXTURES}/instructions.jsonl",
            "method.name=prefix_tuning",
        ],
    ),
    "token-classification": ("mini", NER),
}


def packed_session(request, case):
    base, overrides = CASES[case]
    s = session(
        [
            *overrides,
            "method.num_virtual_tokens=4",
            "data.max_eval_examples=6",
            "data.max_length=160",
            "data.eval_batch_size=2",
            "data.packing=true",
        ],
        base=request.getfixturevalue(base),
        splits=("eval",),
    )
    s.model.eval()
    return s


def count_packed(s, monkeypatch) -> list:
    """The forward calls on `s.model` that got packed rows (segment_ids), recorded as they happen."""
    seen, forward = [], s.model.forward

    def spy(batch):
        seen.append("segment_ids" in batch)
        return forward(batch)

    monkeypatch.setattr(s.model, "forward", spy)
    return seen


@pytest.mark.parametrize("case", CASES)
def test_packed_evaluation_equals_padded(case, request, monkeypatch):
    s = packed_session(request, case)
    seen = count_packed(s, monkeypatch)
    capacity = s.model.row_capacity(s.cfg.data.max_length)
    for t in s.tasks:  # the packing is real: fewer rows than examples
        rows = sum(len(b["input_ids"]) for b in packed_eval_batches(t.eval, 2, s.pad_id, capacity))
        assert rows < len(t.eval), (t.spec.name, rows, len(t.eval))
    plain = evaluate(s.model, s.tasks, 2, s.pad_id, "right")
    assert seen and not any(seen)
    seen.clear()
    packed = evaluate(s.model, s.tasks, 2, s.pad_id, "right", pack_to=s.cfg.data.max_length)
    assert seen and all(seen)
    assert packed.keys() == plain.keys() and plain
    for task, want in plain.items():
        got = packed[task]
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, int) or key in ("accuracy", "macro_f1", "token_accuracy"):
                assert got[key] == value, (task, key, got[key], value)
            else:
                assert_close_rel(torch.tensor(got[key]), torch.tensor(value), 1e-5)


@pytest.mark.parametrize("case", ["deep-mixed", "token-classification"])
def test_packed_predict_equals_padded(case, request, monkeypatch):
    s = packed_session(request, case)
    seen = count_packed(s, monkeypatch)
    if case == "token-classification":
        rows = [
            {"tokens": ["Alice", "visited", "Rome"]},
            {"tokens": ["Bob", "Smith", "flew", "to", "New", "York"]},
            {"tokens": ["Paris"]},
        ]
    else:
        rows = [
            {"task": "support", "text": "My card was charged twice this month"},
            {"task": "rte", "premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting."},
            {"task": "support", "text": "The app crashes when I log in"},
        ]
    packed = predict_rows(s, rows, "test")
    assert seen and all(seen)
    plain = predict_rows(
        dataclasses.replace(s, cfg=dataclasses.replace(s.cfg, data=dataclasses.replace(s.cfg.data, packing=False))),
        rows,
        "test",
    )
    assert len(packed) == len(plain) == len(rows)
    for got, want in zip(packed, plain):
        assert got.keys() == want.keys()
        for key in ("task", "label", "tags"):
            assert got.get(key) == want.get(key)
        for label, p in want.get("scores", {}).items():
            assert abs(got["scores"][label] - p) < 1e-5


def test_every_rank_runs_as_many_packed_eval_batches_and_covers_its_share():
    examples = [
        Example(input_ids=list(range(n)), task_id=0, labels=0, answer_pos=n - 1)
        for n in (5, 30, 7, 1, 31, 12, 3, 9, 20, 2, 16)
    ]
    seen = []
    counts = []
    for rank in range(3):
        batches = list(packed_eval_batches(examples, 2, 0, 32, rank, 3))
        counts.append(len(batches))
        for b in batches:
            assert b["input_ids"].shape[1] == 32
            if not b.get("skip"):
                seen += [(rank, int(n)) for n in b["seq_len"]]
    assert len(set(counts)) == 1
    want = [(r, len(ex.input_ids)) for r in range(3) for ex in examples[r::3]]
    assert sorted(seen) == sorted(want)  # each rank's share, every example once
    assert any(len(list(packed_eval_batches(examples, 2, 0, 32, r, 3))) > 0 for r in range(3))
