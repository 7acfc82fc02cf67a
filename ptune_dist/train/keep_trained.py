"""A run never replaces its own trained results with less trained ones.

`ptune train` ends by writing final/ and results.json. Started again in a folder whose final/ holds weights
trained to step S, with train.steps=N < S (N=0, "evaluate only", is the usual case), it would evaluate a
less trained (for N=0: a fresh) prompt and write it over them. That is refused before anything loads,
pointing to what was meant: `ptune eval RUN` evaluates the trained run, train.steps >= S trains on (it
resumes from the run's checkpoints), another output_dir starts afresh. Only final/state.json's step is read
(not the weights); a final/ without a readable step is not compared (it holds no result to keep).
"""

from __future__ import annotations

import json
from pathlib import Path

from ptune_dist.errors import ConfigError


def final_step(out) -> int | None:
    """The step final/ was saved at, or None (no final/, or no readable whole number there)."""
    try:
        state = json.loads((Path(out) / "final" / "state.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    step = state.get("step") if isinstance(state, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def refuse_less_trained(out, steps: int) -> None:
    """Raise when final/ in `out` was trained further than `steps` (the step this run's final/ would have)."""
    saved = final_step(out)
    if saved is not None and steps < saved:
        raise ConfigError(
            f"train.steps={steps}: output_dir={str(out)!r} holds a run trained to step {saved} "
            f"(final/, results.json), which this run would replace with a less trained one. To "
            f"evaluate it: `ptune eval {out}`; to train it further: train.steps >= {saved} (it "
            "resumes from its checkpoints); to start afresh: another output_dir (nothing was written)"
        )
