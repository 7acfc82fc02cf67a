"""Every attention implementation available here gives SmolLM2-135M (P-tuning v2, 30 layers, 9 query
heads over 3 KV heads) the same task scores and prompt gradients as `reference`, on a left-padded
batch of training examples.

Tolerances (relative to the largest magnitude): the fused kernels sum in another order than the
reference, and 30 layers amplify fp32 rounding: scores 1e-5 (sdpa, split) and 1e-4 (triton), prompt
gradients 1e-4 (sdpa, split) and 1e-3 (triton). The Triton kernels run in the interpreter on CPU,
so the batch there is 2 short examples (the same batch for every implementation). flash-attn needs
CUDA and fp16/bf16, so on this fp32 CPU model its case is skipped with that reason.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernel module is first imported

from conftest import assert_close_rel, grads, session  # noqa: E402

from ptune_dist.data.collate import collate  # noqa: E402
from ptune_dist.kernels import unavailable  # noqa: E402

SUPPORT = ["tasks.0.preset=support", "data.max_train_examples=4", "data.max_eval_examples=4",
           "method.num_virtual_tokens=5", "model.dropout=0.0"]
TOL = {"sdpa": (1e-5, 1e-4), "split": (1e-5, 1e-4), "triton": (1e-4, 1e-3), "flash": (1e-4, 1e-3)}


def scores_and_grads(smol, impl):
    s = session(["method.name=p_tuning_v2", *SUPPORT, f"model.attention={impl}"], base=smol)
    s.model.eval()
    exs = sorted(s.tasks[0].train, key=lambda e: len(e.input_ids))[:2]
    batch = collate(exs, s.pad_id, "left")
    assert not batch["attention_mask"].bool().all(), "the batch should be padded"
    s.model.zero_grad(set_to_none=True)
    out = s.model(batch)
    out.loss.backward()
    return torch.tensor(out.scores), grads(s.model)


@pytest.fixture(scope="module")
def reference(smol):
    return scores_and_grads(smol, "reference")


def _skip_reason(impl):
    return unavailable(impl, torch.empty(1, dtype=torch.float32))


@pytest.mark.parametrize("impl", ["sdpa", "split", "triton", "flash"])
def test_implementation_matches_reference_in_the_model(smol, reference, impl):
    why = _skip_reason(impl)
    if why:
        pytest.skip(f"{impl} cannot run here: {why}")
    score_tol, grad_tol = TOL[impl]
    ref_scores, ref_grads = reference
    got_scores, got_grads = scores_and_grads(smol, impl)
    assert_close_rel(got_scores, ref_scores, score_tol)
    assert ref_grads and got_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert ref_grads[name].abs().max() > 0, name
        assert_close_rel(got_grads[name], ref_grads[name], grad_tol)
