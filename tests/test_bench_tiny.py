"""The GPU benchmarks' --tiny mode: their own code on the CPU (a 2-layer Llama of hidden 64, fp32, one step).

bench/train_step_gpu.py and bench/consumer_gpu.py measure on a GPU machine, through scripts/gpu-check.sh, where
a mistake costs a whole lease. Here their full path runs in this process (--inline): the random-init base saved
and loaded by each system's own loader, ptune's build path and PEFT's, nf4 with gradient checkpointing, the
`ptune plan` prediction and the report. Nothing is timed: the test reads the report's rows, not its numbers,
except that every ratio is a finite positive number.
"""

import json
import math
import re

import pytest

from conftest import bench_modules, markdown_rows


@pytest.fixture(scope="module")
def benches():
    return bench_modules("train_step_gpu", "consumer_gpu")


table = markdown_rows  # the rows of the report's markdown table (header and rule left out)


def finite_ratio(cell: str) -> float:
    m = re.fullmatch(r"(\d+\.\d+)x", cell)
    assert m, f"not a ratio: {cell!r}"
    value = float(m.group(1))
    assert math.isfinite(value) and value > 0, cell
    return value


def test_train_step_gpu_tiny_runs_both_systems_and_both_methods(benches, tmp_path):
    train_step_gpu, _ = benches
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    assert (
        train_step_gpu.main(
            ["--tiny", "--inline", "--base-dir", str(tmp_path / "bases"), "--out", str(out), "--json", str(raw)]
        )
        == 0
    )
    rows = table(out.read_text())
    assert [r[1] for r in rows] == ["prompt tuning", "prefix tuning (ptune: P-tuning v2)"]
    for r in rows:
        assert r[2] == "2 x 32"
        assert float(r[3]) > 0 and float(r[4]) > 0  # PEFT and ptune tokens/s
        finite_ratio(r[5])  # throughput
        finite_ratio(r[8])  # peak memory
    measured = json.loads(raw.read_text())["rows"]
    assert sorted((r["system"], r["method"]) for r in measured) == [
        ("peft", "prefix_tuning"),
        ("peft", "prompt_tuning"),
        ("ptune", "prefix_tuning"),
        ("ptune", "prompt_tuning"),
    ]
    assert all(math.isfinite(r["loss"]) for r in measured)


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")  # PEFT's recipe
def test_consumer_gpu_tiny_runs_nf4_with_checkpointing_and_the_plan(benches, tmp_path):
    pytest.importorskip("bitsandbytes", reason="the consumer bench quantises the base with bitsandbytes")
    _, consumer_gpu = benches
    out, raw = tmp_path / "consumer.md", tmp_path / "consumer.json"
    assert (
        consumer_gpu.main(
            ["--tiny", "--inline", "--base-dir", str(tmp_path / "bases"), "--out", str(out), "--json", str(raw)]
        )
        == 0
    )
    text = out.read_text()
    rows = table(text)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("ptune", "prompt_tuning", "2 x 32"),
        ("ptune", "p_tuning_v2", "2 x 32"),
        ("peft", "prompt_tuning", "1 x 32"),
        ("peft", "prompt_tuning", "2 x 32"),
    ]
    assert all(float(r[3]) > 0 for r in rows)  # tokens/s
    assert all(float(r[7]) > 0 for r in rows[:2])  # the plan's prediction for ptune's rows
    ratios = re.findall(r"^- ptune (\S+) at batch 2: (\S+) tokens/s, (\S+) peak memory", text, re.M)
    assert [m[0] for m in ratios] == ["prompt_tuning", "p_tuning_v2"]
    for _, speed, memory in ratios:
        finite_ratio(speed)
        finite_ratio(memory)
    measured = json.loads(raw.read_text())["rows"]
    assert all(math.isfinite(r["loss"]) for r in measured)
    assert all(r["plan_command"].startswith("ptune plan model=") for r in measured if r["system"] == "ptune")


@pytest.mark.parametrize("name", ["train_step_gpu", "packed_step_gpu", "consumer_gpu"])
def test_a_run_stopped_after_its_first_child_keeps_that_childs_rows(name, tmp_path, monkeypatch):
    """scripts/gpu-check.sh stops a bench with SIGINT at its stage limit: the report and the JSON are on disk
    after every child, so the rows measured before the stop survive it (the children here are canned)."""
    (module,) = bench_modules(name)
    ran = []

    def child(script, spec, budget, min_s=15.0, children=None):
        if spec["kind"] == "prepare":
            return {"machine": {}, "made_s": {"tiny": 0.0}, "child_s": 0.0}
        if ran:
            raise KeyboardInterrupt  # the stage's SIGINT, during the second child
        ran.append(spec["kind"])
        return {"error": f"canned answer of the {spec['kind']} child"}

    monkeypatch.setattr(module, "run_child", child)
    out, raw = tmp_path / "bench.md", tmp_path / "bench.json"
    with pytest.raises(KeyboardInterrupt):
        module.main(["--tiny", "--base-dir", str(tmp_path / "bases"), "--out", str(out), "--json", str(raw)])
    assert ran == ["ptune"]
    assert "canned answer of the ptune child" in out.read_text()
    rows = json.loads(raw.read_text())["rows"]
    assert rows and {r["system"] for r in rows} == {"ptune"}
