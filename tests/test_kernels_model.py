"""Every attention implementation available here gives SmolLM2-135M (P-tuning v2, 30 layers, 9 query
heads over 3 KV heads) the same task scores and prompt gradients as `reference`, on a left-padded
batch of training examples.

Tolerances (relative to the largest magnitude): the fused kernels sum in another order than the
reference, and 30 layers amplify fp32 rounding: scores 1e-5 (sdpa, split) and 1e-4 (triton), prompt
gradients 1e-4 (sdpa, split) and 1e-3 (triton). The Triton kernels run in the interpreter on CPU,
so the batch there is 2 short examples (the same batch for every implementation). With CUDA the model
runs on the GPU (the compiled Triton kernels take CUDA tensors; `split` is CPU-only there and skips).
flash-attn needs CUDA and fp16/bf16, so on this fp32 model its case is skipped with that reason.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernel module is first imported

from conftest import SMOL, assert_close_rel, grads, session  # noqa: E402
from ptune_dist.data.collate import collate  # noqa: E402
from ptune_dist.kernels.api import unavailable  # noqa: E402

SUPPORT = [
    "tasks.0.preset=support",
    "data.max_train_examples=4",
    "data.max_eval_examples=4",
    "method.num_virtual_tokens=5",
    "model.dropout=0.0",
]
TOL = {"sdpa": (1e-5, 1e-4), "split": (1e-5, 1e-4), "triton": (1e-4, 1e-3), "flash": (1e-4, 1e-3)}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def base(smol):
    """The frozen SmolLM2 on DEVICE: the session's CPU copy, or one loaded onto the GPU for this module."""
    if DEVICE == "cpu":
        return smol
    from ptune_dist.config import load_config
    from ptune_dist.model.load import load_base

    return load_base(load_config([], [f"model.name_or_path={SMOL}"]).model, device=torch.device(DEVICE))


def scores_and_grads(base, impl):
    s = session(["method.name=p_tuning_v2", *SUPPORT, f"model.attention={impl}", f"train.device={DEVICE}"], base=base)
    s.model.eval()
    exs = sorted(s.tasks[0].train, key=lambda e: len(e.input_ids))[:2]
    batch = collate(exs, s.pad_id, "left")
    assert not batch["attention_mask"].bool().all(), "the batch should be padded"
    batch = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in batch.items()}
    s.model.zero_grad(set_to_none=True)
    out = s.model(batch)
    out.loss.backward()
    return torch.tensor(out.scores), {n: g.cpu() for n, g in grads(s.model).items()}


@pytest.fixture(scope="module")
def reference(base):
    return scores_and_grads(base, "reference")


def _skip_reason(impl):
    return unavailable(impl, torch.empty(1, dtype=torch.float32, device=DEVICE))


@pytest.mark.parametrize("impl", ["sdpa", "split", "triton", "flash"])
def test_implementation_matches_reference_in_the_model(base, reference, impl):
    why = _skip_reason(impl)
    if why:
        pytest.skip(f"{impl} cannot run here: {why}")
    score_tol, grad_tol = TOL[impl]
    ref_scores, ref_grads = reference
    got_scores, got_grads = scores_and_grads(base, impl)
    assert_close_rel(got_scores, ref_scores, score_tol)
    assert ref_grads and got_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert ref_grads[name].abs().max() > 0, name
        assert_close_rel(got_grads[name], ref_grads[name], grad_tol)
