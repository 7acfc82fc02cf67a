"""Counting a model's parameters: the bytes each rank holds (ZeRO-3 holds a partition), and the base's size and
what trains, as a study's tables of scale report them."""

from __future__ import annotations

import math


def param_bytes(model) -> tuple[int, int]:
    """(bytes of parameters this rank holds, bytes of the whole model): ZeRO-3 holds a partition each."""
    held = sum((p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() * p.element_size() for p in model.parameters())
    total = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters())
    return held, total


def count(p) -> int:
    """Elements of a parameter as the model defines it: whole under ZeRO-3 (ds_numel), unpacked for 4-bit
    weights (their quant_state keeps the shape; the stored tensor packs two values a byte)."""
    state = getattr(p, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:
        return math.prod(state.shape)
    return getattr(p, "ds_numel", p.numel())


def param_counts(model, steps: int) -> dict:
    """{"base": the frozen base's parameters (its size, as in "a 1B model"), "trained": what the run trains
    (nothing when it takes no step: prompt design is scored as it is)}."""
    trained = sum(count(p) for p in model.trainable_parameters().values()) if steps else 0
    return {"base": sum(count(p) for p in model.base.parameters()), "trained": trained}
