"""bench/memory_plan_gpu.py --tiny: the GPU planner check's own code on the CPU (a 2-layer Llama of hidden 64).

scripts/gpu-check.sh runs the real grid on a GPU, where a mistake costs the lease. Here the same path runs in
this process: the random-init base and its tokenizer saved and loaded by ptune's load_base (fp32 and nf4),
the shared base handed to build_session, checkpointing switched on for the later cells, `loop.train` per cell,
the planner's prediction from the same config, the report and its JSON, and the budget's skipping. Nothing is
measured on a CPU (the measured column says so); the test reads the report's rows and what each run saw.
"""

import json
import math

import pytest

from conftest import bench_modules, markdown_rows

CELLS = ["fp32-pt-b2-ckpt0", "fp32-v2-b2-ckpt1", "fp32-pt-b2-ckpt1-cls", "nf4-v2-b2-ckpt0", "nf4-pt-b2-ckpt1"]


@pytest.fixture(scope="module")
def bench():
    return bench_modules("memory_plan_gpu")[0]


def test_tiny_grid_runs_every_kind_of_cell_through_ptunes_path(bench, tmp_path):
    pytest.importorskip("bitsandbytes", reason="the nf4 cells need bitsandbytes")
    out = tmp_path / "plan_measured_gpu.md"
    assert (
        bench.main(["--tiny", "--cells", ",".join(CELLS), "--base-dir", str(tmp_path / "bases"), "--out", str(out)])
        == 0
    )
    rows = markdown_rows(out.read_text())
    assert [r[0] for r in rows] == CELLS
    for r in rows:
        name, base, ckpt, method, task, shape, predicted, measured = r[:8]
        assert base == name.split("-")[0] and ckpt == ("on" if "ckpt1" in name else "off")
        assert method == ("p_tuning_v2" if "-v2-" in name else "prompt_tuning")
        assert task == ("classification" if name.endswith("-cls") else "generation")
        assert shape == "2 x 32" and float(predicted) > 0 and measured == "n/a (CPU)"
    state = json.loads(out.with_suffix(".json").read_text())
    assert state["skipped"] == [] and set(state["loads"]) == {"fp32", "nf4"}
    for r in state["rows"]:
        assert "error" not in r, r["error"]
        deep = r["method"] == "p_tuning_v2"
        assert r["lengths"] == [24 if deep else 32]  # cut to data.max_length (the deep prefix takes 8 positions)
        assert r["labelled"] == ([8] if r["task"] == "generation" else [0])  # max_length / 4 label tokens
        assert r["checkpointing"] == r["ckpt"] and r["ran_on"] == "cpu" and r["kernels"] == ["sdpa"]
        assert len(r["losses"]) == 2 and all(math.isfinite(x) for x in r["losses"])
        p = r["pred"]
        assert p["trainable_params"] == (8 * 2 * 2 * 2 * 16 if deep else 8 * 64)  # P x L x 2 x Hkv x d | P x H
        assert p["logits"] == 3 * 2 * (8 if r["task"] == "generation" else 1) * 1000 * 4
        assert p["runtime"] == 0 and p["tensors"] > 0
    # the nf4 base is the smaller one, as loaded and as planned
    by = {r["name"]: r for r in state["rows"]}
    assert by["nf4-v2-b2-ckpt0"]["pred"]["frozen_weights"] < by["fp32-v2-b2-ckpt1"]["pred"]["frozen_weights"]


def test_a_spent_budget_skips_every_cell_and_says_so(bench, tmp_path):
    out = tmp_path / "plan.md"
    assert (
        bench.main(
            [
                "--tiny",
                "--cells",
                "fp32-pt-b2-ckpt0,fp32-pt-b2-ckpt1",
                "--budget-s",
                "0",
                "--base-dir",
                str(tmp_path / "bases"),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    text = out.read_text()
    assert markdown_rows(text) == []
    assert "Skipped (budget): ['fp32-pt-b2-ckpt0', 'fp32-pt-b2-ckpt1']" in text
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--cells", "no-such-cell", "--out", str(out)])
