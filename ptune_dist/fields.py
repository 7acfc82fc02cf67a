"""Config field helpers: how a dataclass field declares what it accepts (the run config's sections in
config/schema.py and each method's own Config in methods/ use them; config/validate.py checks them).

- `choice(default, ...)`: only those strings;
- `number(default, ge=/gt=/le=/lt=, most=)` (or `numbers(factory, ...)` for a list): the number's domain
  (`Domain`); a float is also refused as NaN or +-inf; `most=` one of the limits below, with why;
- `text(...)`: free text taken exactly as written (`literal=True` metadata: no `${...}` interpolation).

A bottom module: it imports nothing of ptune_dist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def choice(default: str, *choices: str):
    return field(default=default, metadata={"choices": (default, *[c for c in choices if c != default])})


@dataclass(frozen=True)
class Domain:
    """Where a number may lie: bounds that are None are open ends. `meaning` says what a special value
    does (e.g. "0: only at the end"), for the error message."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    meaning: str = ""
    most: tuple | None = None  # (limit, why): a practical ceiling, reported on its own as "must be <= limit (why)"

    def problem(self, value) -> str | None:
        """None when `value` is allowed, else what it must be."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, {self}"
        ok = (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )
        if not ok:
            return f"must be {self}"
        if self.most is not None and value > self.most[0]:
            return f"must be <= {self.most[0]} ({self.most[1]})"
        return None

    def __str__(self) -> str:
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        high = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        if low and high:
            text = f"in {low}, {high}"
        elif low:
            text = f">= {self.ge}" if self.ge is not None else f"> {self.gt}"
        elif high:
            text = f"<= {self.le}" if self.le is not None else f"< {self.lt}"
        else:
            text = "any finite number"
        return f"{text} ({self.meaning})" if self.meaning else text


# Upper limits for counts that have no natural one: beyond them a value is a typo that would fail deep
# inside torch, Python or Slurm with a raw error (torch.set_num_threads takes a C int, timedelta overflows).
INT32 = (2**31 - 1, "2**31-1, the int32 range: counts, sizes and indices end up in torch tensors and arrays")
THREADS = (65536, "more threads than any machine has cores")
NODE_PROCS = (1024, "processes on one node: more than any node has GPUs or cores")
GPUS = (1024, "GPUs on one node: more than any node has")
NODES = (100000, "nodes in one job: more than any cluster has")
TIMEOUT = (30 * 24 * 3600, "30 days: a collective waiting longer is a hung run")
RESTARTS = (1000, "restarts of one run: a run that failed this often keeps failing; find out why")


def number(default, *, ge=None, gt=None, le=None, lt=None, meaning: str = "", most: tuple | None = None):
    """A numeric field with its domain (None as a default: an Optional field, None always allowed);
    `most`: (limit, why) for a count whose end is practical (INT32, THREADS...), not part of its meaning."""
    return field(default=default, metadata={"domain": Domain(ge, gt, le, lt, meaning, most)})


def numbers(factory, *, ge=None, gt=None, le=None, lt=None, meaning: str = ""):
    """A list of numbers, each in the domain."""
    return field(default_factory=factory, metadata={"domain": Domain(ge, gt, le, lt, meaning)})


def text(default: str = "", factory=None):
    """Free text (or a list/map of it): taken literally, `${...}` included."""
    if factory is not None:
        return field(default_factory=factory, metadata={"literal": True})
    return field(default=default, metadata={"literal": True})
