"""bench/attention.py's CUDA table code (gpu_main) on the CPU: --tiny, one small bf16 cell.

scripts/gpu-check.sh runs gpu_main on a GPU under a stage limit; the table must name every implementation of
each cell (the peers, ours, flex, which the CPU check does not run), and be on disk after every line, so that
a stage stopped in the middle keeps the lines measured before it. Nothing is timed here.
"""

import json

import pytest

from conftest import bench_modules, markdown_rows


@pytest.fixture(scope="module")
def attention():
    return bench_modules("attention")[0]


def test_tiny_writes_every_implementation_of_the_cell(attention, tmp_path):
    out, raw = tmp_path / "att.md", tmp_path / "att.json"
    assert attention.main(["--tiny", "--impls", "sdpa", "--out", str(out), "--json", str(raw)]) == 0
    table = markdown_rows(out.read_text())
    assert [r[4] for r in table] == ["fa2", "sdpa-mask", "sdpa", "flex"]
    for r in table[:3]:
        assert r[:4] == ["tiny", "2", "32", "8"] and float(r[5]) > 0 and r[10] == "sdpa-mask"
        assert float(r[11]) < 1e-2  # every output against sdpa-mask's
    assert table[1][7] == "1.00" and table[3][5].startswith("failed: RuntimeError: not run by the CPU check")
    measured = json.loads(raw.read_text())["rows"]
    assert [r["impl"] for r in measured] == ["fa2", "sdpa-mask", "sdpa", "flex"] and "error" in measured[3]


def test_a_run_stopped_in_a_cell_keeps_the_lines_before(attention, tmp_path, monkeypatch):
    """SIGINT (KeyboardInterrupt) while our kernel is measured: the peers' lines are already in the file."""
    measure, calls = attention.gpu_measure, []

    def stopped_at_the_third(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return measure(*args, **kw)

    monkeypatch.setattr(attention, "gpu_measure", stopped_at_the_third)
    out = tmp_path / "att.md"
    with pytest.raises(KeyboardInterrupt):
        attention.main(["--tiny", "--impls", "sdpa", "--out", str(out)])
    assert [r[4] for r in markdown_rows(out.read_text())] == ["fa2", "sdpa-mask"]


def test_a_spent_budget_skips_the_cells_and_says_so(attention, tmp_path):
    out = tmp_path / "att.md"
    attention.main(["--tiny", "--impls", "sdpa", "--seq", "16", "32", "--budget-s", "1e-9", "--out", str(out)])
    assert [r[5] for r in markdown_rows(out.read_text())] == ["skipped: 0 s budget spent"] * 2
