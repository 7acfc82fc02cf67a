"""bench/packed_step.py's own code on a tiny length mix (both systems in this process, SmolLM2, a few short
examples): the two systems train on the same examples and count the same real tokens, and the report holds
their row. Nothing is timed here; docs/bench_packed_step.md holds the measured table."""

import argparse
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_packed_bench_runs_both_systems_on_the_same_examples():
    sys.path.insert(0, str(BENCH))
    try:
        import packed_step
    finally:
        sys.path.remove(str(BENCH))
    args = argparse.Namespace(
        examples=6,
        median=24,
        sigma=0.9,
        max_len=64,
        virtual=4,
        peft_batch=3,
        rows=2,
        threads=2,
        method="prompt_tuning",
        system="peft",
    )
    rows = [packed_step.child(args)]
    args.system = "ptune"
    rows.append(packed_step.child(args))
    peft, ptune = rows
    real = sum(len(ex) for ex in packed_step.length_mix(args))
    for r in rows:
        assert math.isfinite(r["real_tokens_per_s"]) and r["real_tokens_per_s"] > 0
        assert abs(r["real_tokens_per_s"] * r["seconds"] - real) < 1e-6 * real
    assert ptune["steps"] >= 1 and peft["steps"] == 2
    assert "| prompt_tuning |" in packed_step.report(args, rows)
