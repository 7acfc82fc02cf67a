"""bench/harness.py, the one home of the benches' time budget and machine description."""

import time

from conftest import bench_modules


def test_a_budget_counts_down_from_its_seconds_less_the_reserve_and_none_is_no_limit():
    (harness,) = bench_modules("harness")
    unlimited = harness.Budget(None)
    assert unlimited.left() is None and unlimited.fits(1e9)
    assert not harness.Budget(0, reserve=0).fits(0.01)  # 0 s is spent, not unlimited
    budget = harness.Budget(10.0, reserve=4.0)
    assert 5.0 < budget.left() <= 6.0 and budget.fits(5.0) and not budget.fits(6.5)
    time.sleep(0.05)
    assert budget.elapsed() >= 0.05 and budget.left() <= 6.0 - 0.05


def test_the_machine_is_described_with_the_libraries_versions():
    (harness,) = bench_modules("harness")
    info = harness.machine_info("cpu")
    assert info["gpu"] is None and info["cpus"] >= 1 and info["cpu"]
    assert set(harness.LIBRARIES) <= set(info) and info["torch"] and info["date"].endswith("UTC")
    assert harness.version("no-such-distribution-here") == "absent"
    assert harness.cpu_isa() in ("avx512_bf16", "avx512f", "avx2", "no avx2", "?")
