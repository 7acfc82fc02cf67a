"""Leaner activations for gated-SiLU (SwiGLU) MLPs such as Llama's.

Autograd keeps three [tokens, intermediate] tensors per MLP for `silu(gate) * up` (gate, silu(gate)
and up); this function keeps two and recomputes the sigmoid in the backward pass. Same values, same
gradients, one intermediate-sized tensor less per layer (about 1/5 of a frozen Llama layer's
activation memory).
"""

from __future__ import annotations

import types

import torch
from torch import nn


class SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        ctx.save_for_backward(gate, up)
        return nn.functional.silu(gate) * up

    @staticmethod
    def backward(ctx, grad):
        """d/d up = grad * silu(gate); d/d gate = grad * up * sig * (1 + gate * (1 - sig)). Written in place:
        one [tokens, intermediate] temporary (the sigmoid) besides the two gradients, where the plain
        expressions keep four or five (a GPU's largest transient in a frozen Llama layer's backward)."""
        gate, up = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        grad_up = torch.mul(gate, sig).mul_(grad) if ctx.needs_input_grad[1] else None
        grad_gate = None
        if ctx.needs_input_grad[0]:
            grad_gate = torch.sub(1, sig).mul_(gate).add_(1).mul_(sig).mul_(up).mul_(grad)
        return grad_gate, grad_up


def _lean_forward(self, x):
    return self.down_proj(SwiGLU.apply(self.gate_proj(x), self.up_proj(x)))


def is_swiglu(module: nn.Module) -> bool:
    act = getattr(module, "act_fn", None)
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in ("gate_proj", "up_proj", "down_proj")) and type(
        act
    ).__name__ in ("SiLU", "SiLUActivation")  # torch's, or transformers' (same function)


def apply_lean_mlp(model: nn.Module) -> int:
    """Route every gated-SiLU MLP of `model` through SwiGLU; returns how many were changed."""
    n = 0
    for module in model.modules():
        if is_swiglu(module):
            module.forward = types.MethodType(_lean_forward, module)
            n += 1
    return n
