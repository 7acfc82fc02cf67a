"""bench/packed_step_gpu.py's --tiny mode: its own code on the CPU (a 2-layer Llama of hidden 64, fp32, a few
examples), both systems in this process (--inline).

The GPU bench runs on a GPU machine through scripts/gpu-check.sh, where a mistake costs a lease. Here its
whole path runs: the random-init base saved and loaded by each system's loader, PEFT's padded batches, ptune's
packed rows through PromptModel (and its unpacked and one-per-row fixed batches), the report and the JSON.
Nothing is timed: the test reads the report's rows and ratios, and checks that every system counted exactly
the examples' own tokens (no padding, no virtual tokens) as its real tokens.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import pytest

from conftest import markdown_rows
from test_bench_tiny import finite_ratio

BENCH = Path(__file__).resolve().parent.parent / "bench"


def table(text: str, heading: str) -> list[list[str]]:
    """The rows of the markdown table under `## heading` (header and rule left out)."""
    return markdown_rows(text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0])


def test_packed_step_gpu_tiny_measures_both_workloads_on_the_examples_own_tokens(tmp_path):
    sys.path.insert(0, str(BENCH))
    try:
        import packed_step
        import packed_step_gpu
    finally:
        sys.path.remove(str(BENCH))
    out, raw = tmp_path / "packed.md", tmp_path / "packed.json"
    assert (
        packed_step_gpu.main(
            ["--tiny", "--inline", "--base-dir", str(tmp_path / "bases"), "--out", str(out), "--json", str(raw)]
        )
        == 0
    )
    text = out.read_text()
    methods = ["prompt tuning", "prefix tuning (ptune: P-tuning v2)"]

    mix = table(text, "Length mix")
    assert [r[1] for r in mix] == methods
    for r in mix:
        assert float(r[2]) > 0 and float(r[3]) > 0  # PEFT and ptune real tokens/s
        finite_ratio(r[4])  # throughput
        finite_ratio(r[9])  # peak memory
    fixed = table(text, "Fixed-length batches")
    assert [r[1] for r in fixed] == methods
    for r in fixed:
        assert r[2] == "2 x 32"
        assert all(float(r[i]) > 0 for i in (3, 4, 6))  # PEFT, ptune unpacked, ptune packed tokens/s
        for i in (5, 7, 10, 12):  # both throughput ratios, both memory ratios
            finite_ratio(r[i])
    assert "Not judged" in text  # the CPU check does not claim the goals either way

    measured = json.loads(raw.read_text())["rows"]
    assert sorted((r["system"], r["method"], r["workload"], r["layout"]) for r in measured) == sorted(
        [
            (s, m, w, lay)
            for m in ("prompt_tuning", "prefix_tuning")
            for s, w, lay in (
                ("peft", "mix", "padded"),
                ("peft", "fixed", "full"),
                ("ptune", "mix", "packed"),
                ("ptune", "fixed", "unpacked"),
                ("ptune", "fixed", "packed"),
            )
        ]
    )
    # the mix, rebuilt here from the tiny settings: every system counted exactly its examples' own tokens
    tiny = packed_step_gpu.TINY
    examples = packed_step.length_mix(
        argparse.Namespace(**{k: tiny[k] for k in ("examples", "median", "sigma", "max_len")}), high=1000
    )
    lengths = [len(ex) for ex in examples]
    assert len(set(lengths)) > 3 and max(lengths) <= tiny["max_len"]  # a spread of lengths, cut at max_len
    for r in measured:
        assert "error" not in r, r
        assert math.isfinite(r["loss"]) and r["real_tokens_per_s"] > 0
        if r["workload"] == "mix":
            assert r["real_tokens"] == sum(lengths), r
            assert r["real_tokens_per_s"] * r["timed_s"] == pytest.approx(sum(lengths), rel=1e-9)
            assert r["steps"] == r["batches"]  # one timed pass: every batch once
        else:  # one batch of 2 examples of 32 tokens, whether padded, unpacked or packed one per row
            assert r["real_tokens"] == 2 * 32 and r["batches"] == 1, r
    by = {(r["system"], r["method"], r["workload"], r["layout"]): r for r in measured}
    for m in ("prompt_tuning", "prefix_tuning"):
        peft, ptune = by[("peft", m, "mix", "padded")], by[("ptune", m, "mix", "packed")]
        assert peft["batches"] == math.ceil(len(lengths) / tiny["peft_batch"])
        assert peft["tokens_run"] > sum(lengths)  # padded to the longest of each batch
        assert ptune["tokens_run"] >= sum(lengths)
    # prompt tuning's rows hold the virtual-token slots of every example; P-tuning v2's do not
    assert by[("ptune", "prompt_tuning", "mix", "packed")]["tokens_run"] >= sum(lengths) + 20 * len(lengths)
