"""scripts/gpu-check.sh, read and partly run here: it must pass on a GPU machine the first time, in one call.

The budget: the stage limits (its B_* line) add up to at most the deadline (TOTAL), TOTAL is at most 540 s, and
the same limits are the ones the script's header and docs/device.md's budget table give. The tests stage
stops pytest with SIGINT and starts the gpu-marked tests at once, beside the rest. And the mechanism the tests stage
rests on, run
here: pytest processes started as background jobs of a shell (which start with SIGINT ignored, as a job started
with & does) get the process group's SIGINT while a test is running, and write their junit XML.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
TEXT = SCRIPT.read_text()
STAGES = {
    "setup": "B_SETUP",
    "deepspeed": "B_DS_WAIT",
    "tests": "B_TESTS",
    "attention": "B_ATTENTION",
    "train_step": "B_TRAIN",
    "packed": "B_PACKED",
    "consumer": "B_CONSUMER",
    "plan": "B_PLAN",
    "summary": "B_SUMMARY",
}


def limits() -> dict[str, int]:
    line = next(ln for ln in TEXT.splitlines() if ln.startswith("B_SETUP="))
    return {k: int(v) for k, v in re.findall(r"(B_\w+)=(\d+)", line)}


def total() -> int:
    return int(re.search(r"^TOTAL=\$\{GPU_CHECK_TOTAL_S:-(\d+)\}$", TEXT, re.M).group(1))


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_the_stage_limits_add_up_to_at_most_the_total_of_at_most_9_minutes():
    b = limits()
    assert set(b) == set(STAGES.values()), sorted(b)
    assert total() <= 540
    assert sum(b.values()) <= total(), f"the stage limits add up to {sum(b.values())} s, over TOTAL {total()} s"
    # every stage runs under its own limit, in this order, and the deadline leaves the summary its time
    runs = re.findall(r"^run_stage (\w+) \"\$(B_\w+)\" stage_(\w+)$", TEXT, re.M)
    assert [(name, var) for name, var, _ in runs] == [
        (n, STAGES[n]) for n in ("setup", "tests", "attention", "train_step", "packed", "consumer", "plan")
    ]
    assert "DEADLINE - B_SUMMARY - KILL_S" in TEXT


def test_the_header_and_docs_give_the_scripts_limits():
    b = limits()
    header = dict(re.findall(r"^#   (\w+)\s.*?\s(\d+)$", TEXT, re.M))
    assert {name: int(header[name]) for name in STAGES} == {name: b[var] for name, var in STAGES.items()}
    assert f"add up to {sum(b.values())} s, {total() - sum(b.values())} s under TOTAL" in TEXT
    docs = (ROOT / "docs" / "device.md").read_text()
    table = docs.split("## The budget of one call", 1)[1]
    rows = {
        r[0].strip("` "): r
        for r in (
            [c.strip() for c in ln.strip().strip("|").split("|")] for ln in table.splitlines() if ln.startswith("| `")
        )
    }
    assert {name: int(rows[name][-1]) for name in STAGES} == {name: b[var] for name, var in STAGES.items()}
    assert "| **total** |" in table and f"**{sum(b.values())}**" in table


def test_the_tests_stage_stops_pytest_with_sigint_and_starts_the_gpu_tests_at_once():
    assert re.search(r'timeout -s INT -k "\$KILL_S" "\$limit" bash -c "\$fn"', TEXT)
    body = TEXT.split("stage_tests() {", 1)[1].split("\n}\n", 1)[0]
    assert "trap '' INT" in body and "pytest_int" in body
    parts = re.findall(r"^  run_part ([\w-]+) (.*) &$", body, re.M)
    assert parts == [
        ("kernels-gpu", '-m gpu "${kernels[@]}"'),
        ("gpu", 'tests/test_gpu.py -k "not $MODEL_KERNELS"'),
        ("gpu-kernels", 'tests/test_gpu.py -k "$MODEL_KERNELS"'),
        ("kernels-rest", '-m "not gpu" "${kernels[@]}"'),
    ]
    # the test it names is tests/test_gpu.py's (renamed, the -k split would run it with the training, not lose it)
    name = re.search(r"local MODEL_KERNELS=(\w+)", body).group(1)
    assert f"def {name}(" in (ROOT / "tests" / "test_gpu.py").read_text()
    assert "kernels=(tests/test_kernels_triton.py tests/test_kernels_triton_packed.py)" in body
    assert '--junitxml "$RAW/pytest-$name.xml"' in body
    assert "signal.signal(signal.SIGINT, signal.default_int_handler)" in TEXT


def pytest_int_definition() -> str:
    return re.search(r"^pytest_int\(\) \{.*?^\}$", TEXT, re.M | re.S).group(0)


@pytest.mark.skipif(sys.platform != "linux", reason="process groups and signals as on the GPU machine (Linux)")
def test_sigint_to_the_group_leaves_both_pytests_junit_reports(tmp_path):
    (tmp_path / "test_waits.py").write_text(
        "import os, time\n"
        "def test_quick():\n    pass\n"
        "def test_waits():\n"
        "    open(os.environ['STARTED'] + os.environ['WHICH'], 'w').close()\n"
        "    time.sleep(60)\n"
    )
    shell = (
        pytest_int_definition()
        + """
trap '' INT
WHICH=a pytest_int test_waits.py -p no:cacheprovider -q --junitxml a.xml >a.log 2>&1 &
WHICH=b pytest_int test_waits.py -p no:cacheprovider -q --junitxml b.xml >b.log 2>&1 &
wait
"""
    )
    env = {**os.environ, "PY": sys.executable, "STARTED": str(tmp_path / "started-")}
    proc = subprocess.Popen(["bash", "-c", shell], cwd=tmp_path, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"started-{w}").exists() for w in "ab"):
            assert time.monotonic() < deadline and proc.poll() is None, "the tests did not start"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what `timeout -s INT` sends: to the whole process group
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for which in "ab":
        report = (tmp_path / f"{which}.xml").read_text()
        assert 'name="test_quick"' in report, (which, (tmp_path / f"{which}.log").read_text()[-2000:])
        assert "KeyboardInterrupt" in (tmp_path / f"{which}.log").read_text()  # interrupted, not killed
