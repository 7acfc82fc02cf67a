"""Mixed-task batches: one frozen base, a table of named prompts, every row its own task, in training
and in prediction; each row gives what a batch of its task alone gives."""

import pytest
import torch

from conftest import FIXTURES, assert_close_rel, grads, session
from ptune_dist.data.collate import collate
from ptune_dist.inference import predict_rows

TASKS = (
    "tasks=[{name: support, preset: support}, "
    f"{{name: rte, preset: rte, train: '{FIXTURES}/superglue/rte.jsonl', eval: '{FIXTURES}/superglue/rte.jsonl'}}]"
)


def scores_and_grads(s, examples):
    s.model.zero_grad(set_to_none=True)
    out = s.model(collate(examples, s.pad_id, "right"))
    (out.loss * len(examples)).backward()  # summed over rows, so the parts add up
    return out.scores, grads(s.model)


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning", "prefix_tuning", "p_tuning_v2"])
def test_mixed_rows_equal_single_task_runs(method, smol):
    s = session([TASKS, f"method.name={method}", "method.num_virtual_tokens=4", "data.max_train_examples=4"], base=smol)
    s.model.eval()
    a, b = s.tasks[0].train[:2], s.tasks[1].train[:2]
    assert s.model.prompts["support"]().ne(s.model.prompts["rte"]()).any()  # two different prompts
    mixed_scores, mixed_grads = scores_and_grads(s, [a[0], b[0], a[1], b[1]])
    a_scores, a_grads = scores_and_grads(s, a)
    b_scores, b_grads = scores_and_grads(s, b)
    for got, want in zip(mixed_scores, [a_scores[0], b_scores[0], a_scores[1], b_scores[1]]):
        assert_close_rel(torch.tensor(got), torch.tensor(want), 1e-5)
    assert len(mixed_scores[0]) == 4 and len(mixed_scores[1]) == 2  # each row scored on its own labels
    for name, g in mixed_grads.items():
        task_grad = a_grads.get(name) if ".support." in name else b_grads.get(name)
        assert_close_rel(g, task_grad, 1e-4)
    assert all((".support." in n) != (".rte." in n) for n in mixed_grads)


def test_mixed_task_prediction(smol):
    s = session([TASKS, "method.name=prefix_tuning", "method.num_virtual_tokens=4"], base=smol, splits=())
    s.model.eval()
    rows = [
        {"task": "support", "text": "My parcel is lost."},
        {"task": "rte", "premise": "It rained all day.", "hypothesis": "The ground was dry."},
        {"task": "support", "text": "I cannot log in."},
    ]
    mixed = predict_rows(s, rows, "rows")
    alone = [predict_rows(s, [r], "row")[0] for r in rows]
    assert [m["task"] for m in mixed] == ["support", "rte", "support"]
    for m, a in zip(mixed, alone):
        assert m["label"] == a["label"]
        for k in a["scores"]:
            assert abs(m["scores"][k] - a["scores"][k]) < 1e-5
    with pytest.raises(Exception, match="task 'nope' is not one of"):
        predict_rows(s, [{"task": "nope", "text": "x"}], "rows")


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning_v2"])
def test_training_step_touches_every_task(method, smol):
    """In training every task's prompt takes part in every step (zero gradient when absent), so ranks whose
    rows hold different tasks run the same ZeRO collectives; the present task's gradient is unchanged."""
    s = session([TASKS, f"method.name={method}", "method.num_virtual_tokens=4", "data.max_train_examples=4"], base=smol)
    a = s.tasks[0].train[:2]
    s.model.eval()
    _, eval_grads = scores_and_grads(s, a)
    s.model.train()
    _, train_grads = scores_and_grads(s, a)
    assert set(train_grads) == set(s.model.trainable_parameters())  # rte's prompt too
    for name, g in train_grads.items():
        if ".rte." in name:
            assert not g.any(), name
        else:
            assert_close_rel(g, eval_grads[name], 1e-5)
    assert set(eval_grads) < set(train_grads)
