"""Prompts inside real models: grouped-query attention, padding on either side, bidirectional encoders,
and gradient checkpointing (on and off give the same prompt gradients for every method)."""

import contextlib

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from conftest import MINI, assert_close_rel, grads, session
from ptune_dist.config import load_config
from ptune_dist.data.collate import collate
from ptune_dist.methods.placement import NONE
from ptune_dist.model.load import load_base

SUPPORT = [
    "tasks.0.preset=support",
    "data.max_train_examples=4",
    "data.max_eval_examples=4",
    "method.num_virtual_tokens=5",
    "model.dropout=0.0",
]
MINI_HEAD = [f"model.name_or_path={MINI}", "tasks.0.scoring=head", "tasks.0.pooling=mean"]


def run(s, side: str):
    """Scores and trainable gradients of a padded batch of 3 training examples of different lengths."""
    exs = sorted(s.tasks[0].train, key=lambda e: len(e.input_ids))[:3:2] + s.tasks[0].train[:1]
    batch = collate(exs, s.pad_id, side)
    s.model.zero_grad(set_to_none=True)
    out = s.model(batch)
    out.loss.backward()
    return torch.tensor(out.scores), grads(s.model)


@contextlib.contextmanager
def checkpointing(base):
    """Checkpointing on; asserts that the first layer really ran again in the backward pass."""
    layer = next(m for m in base.modules() if isinstance(m, GradientCheckpointingLayer))
    linear = next(m for m in layer.modules() if isinstance(m, torch.nn.Linear))
    calls = []
    hook = linear.register_forward_hook(lambda *a: calls.append(1))
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
        assert len(calls) == 2, f"layer ran {len(calls)} times; checkpointing recomputes it once"
    finally:
        hook.remove()
        base.activation_checkpointing_disable()


CASES = [
    ("prompt_tuning", [], "smol"),
    ("p_tuning", ["method.encoder=mlp"], "smol"),
    ("p_tuning", ["method.encoder=lstm"], "smol"),
    ("prefix_tuning", [], "smol"),
    ("p_tuning_v2", [], "smol"),
    ("p_tuning_v2", MINI_HEAD, "mini"),
    ("prefix_tuning", MINI_HEAD, "mini"),
    ("prompt_tuning", MINI_HEAD, "mini"),
]


@pytest.mark.parametrize("method, extra, which", CASES)
def test_left_and_right_padding_agree(method, extra, which, request):
    s = session([f"method.name={method}", *SUPPORT, *extra], base=request.getfixturevalue(which))
    s.model.eval()
    scores_r, grads_r = run(s, "right")
    scores_l, grads_l = run(s, "left")
    torch.testing.assert_close(scores_l, scores_r, atol=1e-5, rtol=1e-5)
    for name in grads_r:
        assert_close_rel(grads_l[name], grads_r[name], 1e-4)


@pytest.mark.parametrize("method, extra, which", CASES)
def test_gradient_checkpointing_gives_the_same_gradients(method, extra, which, request):
    base = request.getfixturevalue(which)
    s = session([f"method.name={method}", *SUPPORT, *extra], base=base)
    s.model.train()
    scores, plain = run(s, "right")
    with checkpointing(base[0]):
        scores_ckpt, ckpt = run(s, "right")
    assert base[0].is_activation_checkpointing is False
    torch.testing.assert_close(scores_ckpt, scores, atol=1e-6, rtol=1e-6)
    assert plain.keys() == ckpt.keys() and plain
    for name in plain:
        assert_close_rel(ckpt[name], plain[name], 1e-5)


def test_full_finetune_with_and_without_checkpointing():
    cfg = load_config(
        [],
        [f"model.name_or_path={MINI}", "method.name=full_finetune", *SUPPORT[:3], *MINI_HEAD[1:], "model.dropout=0.0"],
    )
    base = load_base(cfg.model, trainable=True)
    s = session([f"model.name_or_path={MINI}", "method.name=full_finetune", *SUPPORT, *MINI_HEAD[1:]], base=base)
    s.model.train()
    _, plain = run(s, "right")
    assert any(name.startswith("base.") for name in plain)
    with checkpointing(base[0]):
        _, ckpt = run(s, "right")
    for name in plain:
        assert_close_rel(ckpt[name], plain[name], 1e-5)


def test_deep_prefix_shapes_follow_grouped_query_attention(smol):
    s = session(["method.name=prefix_tuning", *SUPPORT], base=smol, splits=())
    kv = s.model.prompts["default"]()
    assert tuple(kv.shape) == (30, 2, 3, 5, 64)  # 30 layers, key/value, 3 KV heads (of 9 query heads), P, d


def test_prefix_changes_encoder_outputs_everywhere(mini):
    """Bidirectional: every token sees the prefix, in every layer."""
    s = session(["method.name=p_tuning_v2", *SUPPORT, *MINI_HEAD], base=mini)
    batch = collate(s.tasks[0].train[:2], s.pad_id, "right")
    with torch.no_grad():
        with_prefix = s.model.encode(batch).last_hidden_state
        deep, s.model.placement = s.model.placement, NONE
        without = s.model.encode(batch).last_hidden_state
        s.model.placement = deep
    real = batch["attention_mask"].bool()
    assert (with_prefix - without).norm(dim=-1)[real].min() > 1e-3


def test_reference_and_sdpa_kernels_agree_in_the_model(smol):
    results = {}
    for impl in ("reference", "sdpa"):
        s = session(["method.name=prefix_tuning", *SUPPORT, f"model.attention={impl}"], base=smol)
        s.model.eval()
        results[impl] = run(s, "left")
    (ref_scores, ref_grads), (sdpa_scores, sdpa_grads) = results["reference"], results["sdpa"]
    assert_close_rel(sdpa_scores, ref_scores, 1e-5)
    for name in ref_grads:
        assert_close_rel(sdpa_grads[name], ref_grads[name], 1e-4)
