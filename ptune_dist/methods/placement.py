"""How a method's prompt enters the model: a Placement answers what the data, the model, the planner and the
study ask about it, so that no module outside methods/ tests a method's name or a depth string.

Three placements ship (a method class names one as its `placement`):

- SHALLOW: the prompt is [P, H] virtual token embeddings that fill P `{soft}` slots of each input;
- DEEP: the prompt is [L, 2, Hkv, P, d] keys/values in front of every attention layer (P positions that
  are not in the row: a packed row holds data.max_length - P tokens; positions start after P);
- NONE: no prompt (the baselines: prompt design, full fine-tuning).

A new family of method (e.g. learned scales on keys and values, no prompt tokens) defines a Placement of
its own, learned but neither soft nor prefix, whose `entered(...)` applies its module's output around the
base's forward (forward hooks, say); nothing outside methods/ changes.
"""

from __future__ import annotations

import contextlib
from typing import Any


class Placement:
    """`name`: for messages and study keys; `rank`: where the family sits in a study's tables (none,
    shallow, deep, ...); `soft`: the prompt fills {soft} slots of the input embeddings; `prefix`: it is
    keys/values in front of every layer; `learned`: a module per task is built and its output used (a
    soft or prefix placement is learned)."""

    def __init__(self, name: str, rank: int, *, soft: bool = False, prefix: bool = False, learned: bool | None = None):
        self.name, self.rank, self.soft, self.prefix = name, rank, soft, prefix
        self.learned = soft or prefix if learned is None else learned

    def __repr__(self) -> str:
        return f"Placement({self.name})"

    # -- the data -----------------------------------------------------------------------------------
    def soft_slots(self, num_virtual_tokens: int) -> int:
        """Virtual token slots each example's input holds."""
        return num_virtual_tokens if self.soft else 0

    def prefix_length(self, num_virtual_tokens: int) -> int:
        """Positions in front of each sequence that are keys only (not tokens of the row)."""
        return num_virtual_tokens if self.prefix else 0

    def prompt_tokens(self, num_virtual_tokens: int) -> int:
        """Virtual tokens the prompt adds to a sequence, as slots or as prefix positions (0: none)."""
        return num_virtual_tokens if (self.soft or self.prefix) else 0

    # -- the model ----------------------------------------------------------------------------------
    def needed(self, first_pass: bool) -> bool:
        """Whether a forward pass computes the prompt: a soft prompt only on the first pass of a decoding
        (it is in the cache after), a prefix or another learned placement every time."""
        return self.learned and (first_pass or not self.soft)

    def entered(self, model: Any, prompt: Any, batch: dict) -> contextlib.AbstractContextManager:
        """A context the backbone runs in with `prompt` (the task's module output, unbatched for one task,
        else one per entry) applied; soft and prefix prompts are placed by the model itself (nothing here)."""
        return contextlib.nullcontext()

    # -- the planner ----------------------------------------------------------------------------------
    def sequence(self, max_length: int, num_virtual_tokens: int) -> tuple[int, int, int]:
        """(tokens per row the model runs on, keys per row, prefix length held as keys)."""
        P = self.prefix_length(num_virtual_tokens)
        return max_length - P, max_length, P


NONE = Placement("none", 0)
SHALLOW = Placement("shallow", 1, soft=True)
DEEP = Placement("deep", 2, prefix=True)
