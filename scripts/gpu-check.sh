#!/usr/bin/env bash
# Everything a fresh GPU machine should run for ptune, as one command of under 8.5 minutes (an H200):
#
#   bash scripts/gpu-check.sh        # from the repository root; results under $OUT (default /tmp/ptune-gpu-out)
#
# Needs what scripts/gpu-wheels.sh prepared on a machine with PyPI: .whl/ (the packages the GPU machine lacks,
# deepspeed's sdist) and .gpu/ptune_home (the embedded MiniLM in fp16); the device tool takes them along with
# carry [".whl", ".gpu"]. Nothing is fetched here. Everything runs outside the repository root (with the root on
# sys.path our top-level kernels/ would shadow Hugging Face's `kernels` package): ptune is installed into
# /tmp/ptune, the wheels into /tmp/site, deepspeed into /tmp/site-ds, and tests/, bench/, configs/ are copied to
# /tmp/ptune-gpu-work with a pytest.ini made from pyproject.toml.
#
# Stages, each under its own time limit (seconds; all capped by a deadline of TOTAL after the start); a stage
# that fails or runs out of time does not stop the next:
#   setup        nvidia-smi, versions, wheels + ptune installed, bitsandbytes' CUDA kernel tried       35
#   deepspeed    its sdist built (DS_BUILD_OPS=0) in the background during setup (waited for up to)    20
#   tests        pytest on the files with gpu tests: training on cuda, compiled Triton kernels        190
#   attention    bench/attention.py: prefix attention kernels against FlashAttention/FlexAttention     35
#   train_step   bench/train_step_gpu.py: ptune vs PEFT, bf16, TinyLlama-1.1B and Llama-3-8B shapes    80
#   packed       bench/packed_step_gpu.py: packed ptune vs padded PEFT, 1.1B shape, length mix + fixed  60
#   consumer     bench/consumer_gpu.py: 8B nf4 + checkpointing at 16 x 2048, PEFT peer, ptune plan     55
#   plan         bench/memory_plan_gpu.py: ptune plan against CUDA peaks on a 1B grid                  35
#   summary      the stages and the main numbers, printed last (and in summary.md)
# Files back under $OUT (the device tool returns at most 8, and these are 8): logs.txt (everything printed),
# summary.md, docs/bench_attention_gpu.md, docs/bench_train_step_gpu.md, docs/bench_packed_step_gpu.md,
# docs/bench_consumer_gpu.md, docs/plan_measured_gpu.md, raw.tar.gz (the JSON results and pytest's junit XML).
# The stage limits add up to TOTAL + 5 s (the deepspeed wait overlaps the background build): a run where every
# stage uses all of its limit has plan cut short by the deadline, not the script past 8.5 minutes.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
export OUT=${OUT:-/tmp/ptune-gpu-out}
mkdir -p "$OUT/docs" "$OUT/raw"
export LOG=$OUT/logs.txt
: >"$LOG"
export ROOT WORK=/tmp/ptune-gpu-work SITE=/tmp/site SITE_DS=/tmp/site-ds PTUNE=/tmp/ptune BASES=/tmp/ptune-bench-bases
export PY=${PY:-python3}
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL_S:-505}
DEADLINE=$((START + TOTAL))
B_SETUP=35 B_DS_WAIT=20 B_TESTS=190 B_ATTENTION=35 B_TRAIN=80 B_PACKED=60 B_CONSUMER=55 B_PLAN=35

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PTUNE_HOME=$ROOT/.gpu/ptune_home
export PYTHONPATH=$SITE:$PTUNE
export PATH=$PTUNE/bin:$SITE/bin:$PATH

STAGES=()  # name|result|seconds|limit
log() { echo "$*" | tee -a "$LOG"; }

run_stage() {  # NAME BUDGET FUNCTION: the exported function under `timeout`, output to the console and the log
  local name=$1 budget=$2 fn=$3
  local left=$((DEADLINE - $(date +%s)))
  local limit=$((budget < left ? budget : left))
  if ((left < 10)); then
    STAGES+=("$name|skipped: ${left} s left of ${TOTAL}|0|$budget")
    log "== $name: skipped, ${left} s left"
    return 1
  fi
  log "== $name (limit ${limit} s) at $(date -u +%H:%M:%S), $(($(date +%s) - START)) s in"
  local t0 rc dt result
  t0=$(date +%s)
  STAGE_LIMIT=$limit timeout -k 10 "$limit" bash -c "$fn" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dt=$(($(date +%s) - t0))
  case $rc in
    0) result=ok ;;
    124 | 137) result="timed out" ;;
    *) result="failed (exit $rc)" ;;
  esac
  STAGES+=("$name|$result|$dt|$limit")
  log "== $name: $result after ${dt} s"
  return "$rc"
}

stage_setup() {
  set -o pipefail
  local rc=0
  rm -rf "$WORK" && mkdir -p "$WORK" && cp -r tests bench configs "$WORK/" || rc=1
  $PY - "$ROOT/pyproject.toml" "$WORK/pytest.ini" <<'PYEOF' || rc=1
import sys, tomllib
opts = tomllib.load(open(sys.argv[1], "rb"))["tool"]["pytest"]["ini_options"]
lines = ["[pytest]"]
for key, value in opts.items():
    lines.append(f"{key} =" + "".join(f"\n    {v}" for v in value) if isinstance(value, list) else f"{key} = {value}")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PYEOF
  nvidia-smi -L || rc=1
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv || true
  (cd /tmp && $PY -c "import sys, torch, triton, transformers, peft, accelerate
print('python', sys.version.split()[0], '| torch', torch.__version__, 'CUDA', torch.version.cuda, '| triton',
      triton.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__,
      '| accelerate', accelerate.__version__)
print('GPU:', torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
      round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1), 'GiB')") || rc=1
  # the wheels (one version each), then ptune itself, each into its own folder on PYTHONPATH
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || rc=1
  $PY -m pip install -q --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$PTUNE" . || rc=1
  (cd /tmp && $PY - <<'PYEOF') || rc=1
import importlib.metadata as md
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
print("installed:", ", ".join(f"{n} {version(n)}" for n in (
    "ptune-dist", "omegaconf", "datasets", "dill", "multiprocess", "pydantic", "typing_extensions", "bitsandbytes",
    "pyarrow", "fsspec", "huggingface-hub", "xxhash", "pandas", "safetensors", "tokenizers", "pytest",
    "pytest-timeout", "hypothesis", "setuptools")))
import ptune_dist, ptune_dist.kernels, datasets, omegaconf  # noqa: F401
print("ptune_dist from", ptune_dist.__file__)
from ptune_dist import embedded
print("embedded MiniLM:", embedded.is_fetched("all-minilm-l6-v2"), embedded.model_dir("all-minilm-l6-v2"))
import torch
import bitsandbytes.functional as F
x = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
q, state = F.quantize_4bit(x, quant_type="nf4")
err = ((F.dequantize_4bit(q, state) - x).float().norm() / x.float().norm()).item()
print(f"bitsandbytes nf4 on cuda: relative error {err:.3f}")
assert err < 0.15, err
PYEOF
  return $rc
}

stage_train_step() {
  cd "$WORK" && $PY bench/train_step_gpu.py --base-dir "$BASES" --budget-s $((STAGE_LIMIT - 8)) \
    --out "$OUT/docs/bench_train_step_gpu.md" --json "$OUT/raw/train_step_gpu.json"
}

stage_packed() {
  # the 1.1B shape only (the 8B's would need ~3 minutes); its base is train_step's, made here if missing
  cd "$WORK" && $PY bench/packed_step_gpu.py --shapes 1b --base-dir "$BASES" --budget-s $((STAGE_LIMIT - 5)) \
    --out "$OUT/docs/bench_packed_step_gpu.md" --json "$OUT/raw/packed_step_gpu.json"
}

stage_attention() {
  cd "$WORK" && $PY bench/attention.py --device cuda --dtype bfloat16 --seq 1024 4096 --prefix 128 --reps 10 \
    --out "$OUT/docs/bench_attention_gpu.md"
}

stage_plan() {
  cd "$WORK" && $PY bench/memory_plan_gpu.py --base-dir "$BASES" --budget-s $((STAGE_LIMIT - 6)) \
    --out "$OUT/docs/plan_measured_gpu.md" --json "$OUT/raw/plan_measured_gpu.json"
}

stage_consumer() {
  cd "$WORK" && $PY bench/consumer_gpu.py --base-dir "$BASES" --budget-s $((STAGE_LIMIT - 8)) \
    --out "$OUT/docs/bench_consumer_gpu.md" --json "$OUT/raw/consumer_gpu.json"
}

stage_tests() {
  # every file with a test marked gpu, whole (the Triton file's property and corner-case tests run compiled
  # on the GPU too), and nothing else: the rest of the suite needs SmolLM2, which does not travel
  local extra=() files
  $PY -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout=100)
  cd "$WORK" || return 1
  mapfile -t files < <(grep -l "pytest.mark.gpu" tests/test_*.py)
  echo "test files: ${files[*]}"
  PYTHONPATH=$SITE_DS:$PYTHONPATH $PY -m pytest "${files[@]}" -c "$WORK/pytest.ini" --rootdir "$WORK" \
    -p no:cacheprovider --continue-on-collection-errors -v -rfEs --durations=15 \
    --junitxml "$OUT/raw/pytest.xml" "${extra[@]}"
}
export -f stage_setup stage_tests stage_attention stage_train_step stage_packed stage_consumer stage_plan

# -- run ----------------------------------------------------------------------------------------------------
# The tests come first: they are what the issue's "done when" rests on; the benches take what time is left.
log "gpu-check: $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${TOTAL} s, OUT=$OUT"
DS_LOG=/tmp/ptune-ds-install.log
ds_t0=$(date +%s)
(  # deepspeed's sdist builds (no ops) while the rest is set up
  DS_BUILD_OPS=0 timeout $((DEADLINE - ds_t0)) $PY -m pip install -q --no-index --no-deps --no-build-isolation \
    --no-compile --no-cache-dir --target "$SITE_DS" .whl/deepspeed-*.tar.gz >"$DS_LOG" 2>&1
  echo "exit $?" >>"$DS_LOG"
) &
run_stage setup "$B_SETUP" stage_setup

# deepspeed: wait (bounded) for the background build, then try it
waited=0
while ! grep -q '^exit ' "$DS_LOG" 2>/dev/null && ((waited < B_DS_WAIT && $(date +%s) < DEADLINE)); do
  sleep 1
  waited=$((waited + 1))
done
{
  echo "== deepspeed install (background, DS_BUILD_OPS=0), waited ${waited} s:"
  cat "$DS_LOG" 2>/dev/null
} | tee -a "$LOG"
ds_status=$(grep '^exit ' "$DS_LOG" 2>/dev/null | tail -1)
if [ "$ds_status" = "exit 0" ] && (cd /tmp && PYTHONPATH=$SITE_DS:$PYTHONPATH $PY -c \
  "import deepspeed; from deepspeed.accelerator import get_accelerator as g; print('deepspeed', deepspeed.__version__, g()._name)" \
  2>&1 | tail -2 | tee -a "$LOG"); then
  STAGES+=("deepspeed|ok|$(stat -c %Y "$DS_LOG" | awk -v t="$ds_t0" '{print $1 - t}')|background")
else
  STAGES+=("deepspeed|${ds_status:-still building}|-|background")
fi

run_stage tests "$B_TESTS" stage_tests
run_stage attention "$B_ATTENTION" stage_attention
run_stage train_step "$B_TRAIN" stage_train_step
run_stage packed "$B_PACKED" stage_packed
run_stage consumer "$B_CONSUMER" stage_consumer
run_stage plan "$B_PLAN" stage_plan
# -- summary (printed last) -----------------------------------------------------------------------------------
log "== summary after $(($(date +%s) - START)) s"
$PY - "$OUT" "${STAGES[@]}" <<'EOF' 2>&1 | tee "$OUT/summary.md" | tee -a "$LOG" >/dev/null
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path
out, stages = Path(sys.argv[1]), [s.split("|") for s in sys.argv[2:]]
G = 2**30
lines = ["# gpu-check summary", "", "| stage | result | seconds | limit |", "|---|---|---|---|"]
lines += [f"| {n} | {r} | {s} | {l} |" for n, r, s, l in stages]
try:
    root = ET.parse(out / "raw" / "pytest.xml").getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    lines += ["", f"tests (GPU files): {n - f - e - s} passed, {f} failed, {e} errors, {s} skipped"]
    for case in suite.iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            lines.append(f"- FAILED {case.get('classname')}::{case.get('name')}: {(bad.get('message') or '')[:150]}")
except Exception as exc:  # noqa: BLE001
    lines += ["", f"tests: no junit report ({type(exc).__name__})"]
try:
    rows = json.loads((out / "raw" / "train_step_gpu.json").read_text())["rows"]
    by = {(r["shape"], r["system"], r["method"]): r for r in rows}
    lines += ["", "| train step | PEFT tok/s | ptune tok/s | ratio | PEFT peak GiB | ptune peak GiB |", "|---|---|---|---|---|---|"]
    for shape, method in dict.fromkeys((r["shape"], r["method"]) for r in rows):
        a, b = by.get((shape, "peft", method), {}), by.get((shape, "ptune", method), {})
        tp = lambda r: f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else r.get("error", "-")[:40]
        pk = lambda r: f"{r['peak_bytes'] / G:.2f}" if "tokens_per_s" in r else "-"
        ratio = f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x" if "tokens_per_s" in a and "tokens_per_s" in b else "-"
        lines.append(f"| {shape} {method} | {tp(a)} | {tp(b)} | {ratio} | {pk(a)} | {pk(b)} |")
except Exception as exc:  # noqa: BLE001
    lines += ["", f"train step: no results ({type(exc).__name__})"]
try:
    rows = json.loads((out / "raw" / "packed_step_gpu.json").read_text())["rows"]
    by = {(r["shape"], r["system"], r["method"], r.get("workload"), r.get("layout")): r for r in rows}
    lines += ["", "| packed (real tok/s) | PEFT tok/s | ptune tok/s | ratio | PEFT peak GiB | ptune peak GiB | mem ratio |",
              "|---|---|---|---|---|---|---|"]
    ok = lambda r: "real_tokens_per_s" in r
    tp = lambda r: f"{r['real_tokens_per_s']:.0f}" if ok(r) else r.get("error", "-")[:40]
    pk = lambda r: f"{r['peak_bytes'] / G:.2f}" if ok(r) else "-"
    for shape, method in dict.fromkeys((r["shape"], r["method"]) for r in rows):
        for workload, peft_layout, layout in (("mix", "padded", "packed"), ("fixed", "full", "unpacked"),
                                              ("fixed", "full", "packed")):
            a = by.get((shape, "peft", method, workload, peft_layout), {})
            b = by.get((shape, "ptune", method, workload, layout), {})
            both = ok(a) and ok(b)
            speed = f"{b['real_tokens_per_s'] / a['real_tokens_per_s']:.2f}x" if both else "-"
            memory = f"{b['peak_bytes'] / a['peak_bytes']:.2f}x" if both else "-"
            lines.append(f"| {shape} {method} {workload} {layout} | {tp(a)} | {tp(b)} | {speed} | {pk(a)} | {pk(b)} "
                         f"| {memory} |")
except Exception as exc:  # noqa: BLE001
    lines += ["", f"packed: no results ({type(exc).__name__})"]
try:
    rows = json.loads((out / "raw" / "consumer_gpu.json").read_text())["rows"]
    lines += ["", "| consumer 8B nf4 | tok/s | allocated GiB | device peak GiB | plan GiB |", "|---|---|---|---|---|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['system']} {r['method']} B{r.get('batch', '?')} | {r.get('error', '-')[:60]} | | | |")
            continue
        dev = r.get("peak_reserved_bytes", 0) + r.get("outside_allocator_bytes", 0)
        plan = r.get("plan_total_bytes")
        plan = f"{plan / G:.2f}" + (f" ({plan / dev - 1:+.0%})" if dev else "") if plan else "-"
        lines.append(f"| {r['system']} {r['method']} B{r['batch']} | {r['tokens_per_s']:.0f} | "
                     f"{r['peak_bytes'] / G:.2f} | {dev / G:.2f} | {plan} |")
except Exception as exc:  # noqa: BLE001
    lines += ["", f"consumer: no results ({type(exc).__name__})"]
print("\n".join(lines))
EOF
# the machine-readable results in one file (the device tool brings back at most 8)
tar -czf "$OUT/raw.tar.gz" -C "$OUT" raw && rm -rf "$OUT/raw"
cat "$OUT/summary.md"
bad=0
for s in "${STAGES[@]}"; do [[ $s == *"|ok|"* ]] || bad=1; done
exit $bad
