"""Lean SwiGLU activations give the same values and gradients; bf16 bases train with fp32 prompts."""

import torch

from conftest import SMOL, assert_close_rel, grads, session
from ptune_dist.config import load_config
from ptune_dist.data.collate import collate
from ptune_dist.model.lean import SwiGLU
from ptune_dist.model.load import load_base

SUPPORT = ["tasks.0.preset=support", "data.max_train_examples=4", "method.num_virtual_tokens=5"]


def test_swiglu_gradcheck():
    g = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SwiGLU.apply, (g, u))
    torch.testing.assert_close(SwiGLU.apply(g, u), torch.nn.functional.silu(g) * u)


def test_lean_and_plain_mlp_give_the_same_prompt_gradients(smol):
    plain = load_base(load_config([], [f"model.name_or_path={SMOL}", "model.lean_activations=false"]).model)
    results = []
    for base in (smol, plain):
        s = session(["method.name=prefix_tuning", *SUPPORT], base=base)
        out = s.model(collate(s.tasks[0].train[:3], s.pad_id, "right"))
        out.loss.backward()
        results.append((out.loss.detach(), grads(s.model)))
    (loss_lean, g_lean), (loss_plain, g_plain) = results
    torch.testing.assert_close(loss_lean, loss_plain, rtol=1e-6, atol=1e-6)
    for name in g_plain:
        assert_close_rel(g_lean[name], g_plain[name], 1e-5)


def test_bfloat16_base_trains_with_fp32_prompt():
    cfg = load_config([], [f"model.name_or_path={SMOL}", "model.dtype=bfloat16"])
    base = load_base(cfg.model)
    assert base[0].dtype == torch.bfloat16
    for method in ("prompt_tuning", "p_tuning_v2"):
        s = session(["model.dtype=bfloat16", f"method.name={method}", *SUPPORT], base=base)
        out = s.model(collate(s.tasks[0].train[:2], s.pad_id, "right"))
        out.loss.backward()
        assert torch.isfinite(out.loss)
        for name, p in s.model.trainable_parameters().items():
            assert p.dtype == torch.float32 and p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


BACKWARD_PEAK = """
import torch
from ptune_dist.model.lean import SwiGLU

def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

torch.set_num_threads(1)
N, I = 2048, 4096  # 32 MiB per fp32 tensor
gate, up = (torch.randn(N, I, requires_grad=True) for _ in range(2))
grad = torch.randn(N, I)
out = SwiGLU.apply(gate, up)
live = kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
out.backward(grad)
print((kib("VmHWM") - live) * 1024 / (N * I * 4))
"""


def test_swiglu_backward_keeps_one_temporary_beside_the_two_gradients():
    """The in-place backward: the gate and up gradients plus one intermediate-sized temporary (the sigmoid),
    and about 1.1 more that this harness shows with any backward: 4.1 measured; the plain expressions
    measured 7.1. The planner's workspace term counts the same 3 (6 before)."""
    import subprocess
    import sys

    from ptune_dist.plan.memory import BACKWARD_WORKSPACE

    env = {"PTUNE_ALLOCATOR": "system", "PATH": "/usr/bin:/bin", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}
    peak = float(
        subprocess.run(
            [sys.executable, "-c", BACKWARD_PEAK], capture_output=True, text=True, check=True, env=env
        ).stdout
    )
    assert 3.0 <= peak <= 4.5, f"backward peak {peak:.2f} intermediate-sized tensors above the live inputs"
    assert BACKWARD_WORKSPACE[True] == 3
