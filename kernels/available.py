"""Which implementations of `prefix_attention` can run a call here, and why not (kernels/auto.py picks among
them, kernels/dispatch.py refuses a named one that cannot run).

    NAMES / CHOICES                the implementations (CHOICES adds "auto")
    unavailable(name, q, dropout_p) -> None when `name` can run on tensors like q, else the reason
    available(q, dropout_p)        -> the names that can, in NAMES order
"""

from __future__ import annotations

import importlib.util

import torch

from . import split

NAMES = ("reference", "sdpa", "split", "triton", "flash")
CHOICES = ("auto", *NAMES)


class ImplUnavailable(RuntimeError):
    """The requested implementation cannot run this call here (the message says why)."""


def triton_module():
    # Imported on first use: importing triton is slow, and whether its kernels run compiled or in the
    # interpreter is decided (by TRITON_INTERPRET) when the kernel module is imported.
    from . import triton_impl

    return triton_impl


def unavailable(name: str, q: torch.Tensor, dropout_p: float = 0.0) -> str | None:
    """Why implementation `name` cannot run on tensors like `q` (None when it can)."""
    if name not in NAMES:
        raise ValueError(f"attention impl {name!r} is not one of {list(CHOICES)}")
    if name in ("reference", "sdpa"):
        return None
    if name == "split":
        return split.unavailable(q, dropout_p)
    if name == "flash":
        from . import flash

        return flash.unavailable(q, dropout_p)
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; Linux only)"
    return triton_module().unavailable(q, dropout_p)


def available(q: torch.Tensor, dropout_p: float = 0.0) -> list[str]:
    """The implementations that can run on tensors like `q`, in NAMES order."""
    return [n for n in NAMES if unavailable(n, q, dropout_p) is None]
