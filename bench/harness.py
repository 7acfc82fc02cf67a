"""What every bench shares: the time budget it runs under and the machine it measured on (bench/ scripts import
it by its bare name: bench/ is on sys.path when one runs).

    Budget(seconds, reserve)  --budget-s: the wall time of the whole script from its creation (None: no limit; a
                              bench whose --budget-s 0 means none passes `args.budget_s or None`), less `reserve`
                              seconds kept for the report; left() -> seconds left (None: no limit), elapsed(),
                              fits(seconds) -> whether that much more work fits
    machine_info(device)      a dict for the report and the JSON rows: date, Python, torch and the libraries'
                              versions ("absent" when not installed), CPU name and count, and on CUDA the GPU's
                              name, memory, capability, SM count and CUDA version
    cpu_name(), cpu_isa()     the CPU model (/proc/cpuinfo) and its widest vector ISA that matters to torch
"""

from __future__ import annotations

import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

LIBRARIES = ("transformers", "peft", "triton", "bitsandbytes", "deepspeed")


class Budget:
    """Seconds left of --budget-s (None: no limit), keeping `reserve` for the report."""

    def __init__(self, seconds: float | None, reserve: float = 8.0):
        self.seconds, self.reserve, self.t0 = seconds, reserve, time.monotonic()
        self.end = None if seconds is None else self.t0 + seconds - reserve

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def fits(self, seconds: float) -> bool:
        left = self.left()
        return left is None or seconds <= left


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_isa() -> str:
    """avx512_bf16, avx512f, avx2, "no avx2", or "?" where /proc/cpuinfo cannot be read."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "?"
    return next((isa for isa in ("avx512_bf16", "avx512f", "avx2") if isa in flags), "no avx2")


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_info(device) -> dict:
    """`device`: "cpu", "cuda", "cuda:1" or a torch.device."""
    import torch

    device = torch.device(device)
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        **{name: version(name) for name in LIBRARIES},
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device.index or 0)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            sms=props.multi_processor_count,
        )
    else:
        info.update(gpu=None)
    return info
