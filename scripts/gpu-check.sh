#!/usr/bin/env bash
# Everything a fresh GPU machine should run for ptune, as one call of at most 9 minutes (TOTAL = 540 s from the
# script's start; the machine's own start-up comes on top), so that a second call still fits a task's 15 device
# minutes:
#
#   bash scripts/gpu-check.sh        # from the repository root; results under $OUT (default /tmp/ptune-gpu-out)
#
# Needs what scripts/gpu-wheels.sh prepared on a machine with PyPI: .whl/ (the packages the GPU machine lacks,
# deepspeed's sdist) and .gpu/ptune_home (the embedded MiniLM in fp16); the device tool takes them along with
# carry [".whl", ".gpu"]. Nothing is fetched here. The wheels go into /tmp/site and deepspeed into /tmp/site-ds;
# ptune itself runs from the repository root (PYTHONPATH=/tmp/site:ROOT, pytest and the benches started in the
# root): the root's kernels/, launcher/ and slurm/ are namespace portions, so they hide no other package (Hugging
# Face's `kernels` among the wheels wins `import kernels`), and ptune_dist reaches them through its symlinks.
#
# Stages, in this order, each under its own limit in seconds (the B_* below; docs/device.md's budget table gives
# each one's basis: its Triton compiles, its CPU-side seconds, the GPU estimate). A stage that fails or runs out
# of time does not stop the next; a stage is stopped with SIGINT (`timeout -s INT -k 10`: Python raises
# KeyboardInterrupt, so pytest writes its junit XML and summary and a bench its last rows), and none runs past
# the deadline (TOTAL, less the summary's limit and the 10 s a kill may take):
#   setup       nvidia-smi, versions, the wheels installed, ptune imported, bitsandbytes' CUDA kernel 35
#   deepspeed   its sdist's build, started in the background at 0 s (DS_BUILD_OPS=0), waited for, import  15
#   tests       four pytest processes side by side, each writing its junit XML and summary if stopped    180
#               the gpu-marked Triton tests (bf16, Llama shapes), tests/test_gpu.py (training on cuda), its
#               kernel check inside a model apart, and the rest of tests/test_kernels_triton*.py (bf16/fp16
#               corner cases; their fp32 sweeps skip on CUDA)
#   attention   bench/attention.py: our kernels against FlashAttention-2 (SDPA) and flex_attention        60
#   train_step  bench/train_step_gpu.py: ptune vs PEFT, bf16, TinyLlama-1.1B and Llama-3-8B shapes        80
#   packed      bench/packed_step_gpu.py: packed ptune vs padded PEFT, 1.1B shape, length mix + fixed     45
#   consumer    bench/consumer_gpu.py: 8B nf4 + checkpointing at 16 x 2048, PEFT peer, ptune plan         65
#   plan        bench/memory_plan_gpu.py: ptune plan against CUDA peaks on a 1B grid                      35
#   summary     summary.md and raw.tar.gz, last                                                           10
# The limits add up to 525 s, 15 s under TOTAL for the shell between stages. In the background from the end of
# setup: bench/gpu_bases.py makes the random-init bases the benches load (1.1B, 8B, the planner's 1B: about
# 21 GB of bf16 safetensors, on the GPU) while the tests run, and a bench that gets there first waits for its
# base (a lock) rather than making it again; bench/triton_compiles.py --warm compiles into Triton's on-disk cache
# the kernels the benches will launch (the same launches, on class-faithful small shapes), so the benches' own
# budgets do not pay for those compiles.
#
# Files back under $OUT (the device tool returns at most 8, and these are 8), each written as soon as there is
# something to write, so that whatever stops the call keeps what the stages before it made: logs.txt
# (everything printed, appended as it is printed), summary.md (rewritten after every stage),
# docs/bench_attention_gpu.md, docs/bench_train_step_gpu.md, docs/bench_packed_step_gpu.md,
# docs/bench_consumer_gpu.md, docs/plan_measured_gpu.md (each rewritten by its bench after every cell), and
# raw.tar.gz (the JSON rows, pytest's junit XML and logs, the background logs; archived again after every stage).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 1
export OUT=${OUT:-/tmp/ptune-gpu-out}
export RAW=/tmp/ptune-gpu-raw
rm -rf "$RAW"
mkdir -p "$OUT/docs" "$RAW"
export LOG=$OUT/logs.txt
: >"$LOG"
export ROOT SITE=/tmp/site SITE_DS=/tmp/site-ds BASES=/tmp/ptune-bench-bases
export PY=${PY:-python3}
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL_S:-540}
DEADLINE=$((START + TOTAL))
KILL_S=10  # after a stage's SIGINT, the KILL that follows if it has not ended
B_SETUP=35 B_DS_WAIT=15 B_TESTS=180 B_ATTENTION=60 B_TRAIN=80 B_PACKED=45 B_CONSUMER=65 B_PLAN=35 B_SUMMARY=10
ATTENTION_ARGS=(--seq 1024 4096 --prefix 128 --reps 10)

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PTUNE_HOME=$ROOT/.gpu/ptune_home
export PYTHONPATH=$SITE:$ROOT
export PATH=$SITE/bin:$PATH

STAGES=()  # name|result|seconds|limit
log() { echo "$*" | tee -a "$LOG"; }

save_outputs() {  # summary.md rewritten and raw.tar.gz archived again: after every stage
  write_summary >"$OUT/summary.md.tmp" 2>&1 && mv "$OUT/summary.md.tmp" "$OUT/summary.md"
  tar -czf "$OUT/raw.tar.gz.tmp" -C "$(dirname "$RAW")" "$(basename "$RAW")" 2>/dev/null \
    && mv "$OUT/raw.tar.gz.tmp" "$OUT/raw.tar.gz"
}

run_stage() {  # NAME BUDGET FUNCTION: the exported function under `timeout -s INT`, output to the console and the log
  local name=$1 budget=$2 fn=$3
  local left=$((DEADLINE - B_SUMMARY - KILL_S - $(date +%s)))
  local limit=$((budget < left ? budget : left))
  if ((limit < 10)); then
    STAGES+=("$name|skipped: ${left} s left of ${TOTAL}|0|$budget")
    log "== $name: skipped, ${left} s left"
    save_outputs
    return 1
  fi
  log "== $name (limit ${limit} s) at $(date -u +%H:%M:%S), $(($(date +%s) - START)) s in"
  local t0 rc dt result
  t0=$(date +%s)
  STAGE_LIMIT=$limit timeout -s INT -k "$KILL_S" "$limit" bash -c "$fn" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dt=$(($(date +%s) - t0))
  case $rc in
    0) result=ok ;;
    124 | 137) result="timed out" ;;
    *) result="failed (exit $rc)" ;;
  esac
  STAGES+=("$name|$result|$dt|$limit")
  log "== $name: $result after ${dt} s"
  save_outputs
  return "$rc"
}

pytest_int() {  # pytest with Python's SIGINT handler installed whatever the shell left it as (a job started with &
  # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt): SIGINT ends it with its report written
  $PY -c 'import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)
import pytest; sys.exit(pytest.main(sys.argv[1:]))' "$@"
}

stage_setup() {
  set -o pipefail
  local rc=0
  nvidia-smi -L || rc=1
  nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv || true
  # the wheels (one version each) into their folder on PYTHONPATH; ptune is the root's, on PYTHONPATH too
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || rc=1
  $PY - <<'PYEOF' || rc=1
import importlib.metadata as md
import sys
import accelerate, peft, torch, transformers, triton
print("python", sys.version.split()[0], "| torch", torch.__version__, "CUDA", torch.version.cuda, "| triton",
      triton.__version__, "| transformers", transformers.__version__, "| peft", peft.__version__,
      "| accelerate", accelerate.__version__)
print("GPU:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0),
      round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1), "GiB")
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "absent"
print("installed:", ", ".join(f"{n} {version(n)}" for n in (
    "omegaconf", "datasets", "dill", "multiprocess", "pydantic", "typing_extensions", "bitsandbytes",
    "pyarrow", "fsspec", "huggingface-hub", "xxhash", "pandas", "safetensors", "tokenizers", "pytest",
    "pytest-timeout", "hypothesis", "setuptools")))
import ptune_dist, ptune_dist.kernels.api, datasets, omegaconf  # noqa: F401
print("ptune_dist from", ptune_dist.__file__, "| its kernels from", ptune_dist.kernels.api.__file__)
from ptune_dist import embedded
print("embedded MiniLM:", embedded.is_fetched("all-minilm-l6-v2"), embedded.model_dir("all-minilm-l6-v2"))
import bitsandbytes.functional as F
x = torch.randn(512, 512, device="cuda", dtype=torch.bfloat16)
q, state = F.quantize_4bit(x, quant_type="nf4")
err = ((F.dequantize_4bit(q, state) - x).float().norm() / x.float().norm()).item()
print(f"bitsandbytes nf4 on cuda: relative error {err:.3f}")
assert err < 0.15, err
PYEOF
  return $rc
}

stage_tests() {
  # Four pytest processes side by side, from the start of the stage: the gpu-marked Triton tests (bf16, Llama
  # shapes: compiles, on the CPU), tests/test_gpu.py's training on cuda (the GPU and Python), its kernel check
  # inside a model apart (each kernel that runs there, fp32 Triton compiles included, 10-20 s a key: beside the
  # training, not before its later tests), and the rest of the two Triton files (on CUDA their fp32 tiny-shape
  # sweeps skip: the CPU suite runs them in the interpreter). The rest of the suite needs SmolLM2, which does not
  # travel.
  trap '' INT  # this shell waits for all four; each pytest gets the stage's SIGINT itself (pytest_int)
  local kernels=(tests/test_kernels_triton.py tests/test_kernels_triton_packed.py) extra=() rc=0 pids=() part
  local MODEL_KERNELS=test_kernels_match_the_reference_inside_the_model
  $PY -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout=150)
  cd "$ROOT" || return 1
  run_part() {  # NAME PYTEST-ARGS...: its log and junit XML under $RAW, its own temporary folder
    local name=$1
    shift
    PYTHONPATH=$SITE_DS:$PYTHONPATH pytest_int "$@" -p no:cacheprovider \
      --basetemp "/tmp/ptune-pytest-$name" --continue-on-collection-errors -v -rfEs --durations=10 "${extra[@]}" \
      --junitxml "$RAW/pytest-$name.xml" >"$RAW/pytest-$name.log" 2>&1
  }
  run_part kernels-gpu -m gpu "${kernels[@]}" &
  pids+=($!)
  run_part gpu tests/test_gpu.py -k "not $MODEL_KERNELS" &
  pids+=($!)
  run_part gpu-kernels tests/test_gpu.py -k "$MODEL_KERNELS" &
  pids+=($!)
  run_part kernels-rest -m "not gpu" "${kernels[@]}" &
  pids+=($!)
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  for part in kernels-gpu gpu gpu-kernels kernels-rest; do
    echo "== pytest $part ($RAW/pytest-$part.log):"
    cat "$RAW/pytest-$part.log"
  done
  return $rc
}

stage_attention() {
  # shellcheck disable=SC2086  # ATTENTION_ARGS_TEXT: the words of ATTENTION_ARGS (an array does not export)
  cd "$ROOT" && $PY bench/attention.py --device cuda --dtype bfloat16 $ATTENTION_ARGS_TEXT \
    --budget-s $((STAGE_LIMIT - 15)) --out "$OUT/docs/bench_attention_gpu.md" --json "$RAW/attention_gpu.json"
}

stage_train_step() {
  cd "$ROOT" && $PY bench/train_step_gpu.py --base-dir "$BASES" --budget-s $((STAGE_LIMIT - 3)) \
    --out "$OUT/docs/bench_train_step_gpu.md" --json "$RAW/train_step_gpu.json"
}

stage_packed() {
  # the 1.1B shape only (the 8B's would need ~3 minutes)
  cd "$ROOT" && $PY bench/packed_step_gpu.py --shapes 1b --base-dir "$BASES" --budget-s $((STAGE_LIMIT - 3)) \
    --out "$OUT/docs/bench_packed_step_gpu.md" --json "$RAW/packed_step_gpu.json"
}

stage_consumer() {
  # one timed step after one warm-up per row (a 16 x 2048 step of the 8B in nf4 takes seconds)
  cd "$ROOT" && $PY bench/consumer_gpu.py --base-dir "$BASES" --steps 1 --budget-s $((STAGE_LIMIT - 3)) \
    --out "$OUT/docs/bench_consumer_gpu.md" --json "$RAW/consumer_gpu.json"
}

stage_plan() {
  cd "$ROOT" && $PY bench/memory_plan_gpu.py --base-dir "$BASES" --budget-s $((STAGE_LIMIT - 3)) \
    --out "$OUT/docs/plan_measured_gpu.md" --json "$RAW/plan_measured_gpu.json"
}
export -f stage_setup stage_tests stage_attention stage_train_step stage_packed stage_consumer stage_plan pytest_int
export ATTENTION_ARGS_TEXT="${ATTENTION_ARGS[*]}"

write_summary() {  # the stages and the main numbers, from what $OUT and $RAW hold now
  $PY - "$OUT" "$RAW" "${STAGES[@]}" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path
out, raw, stages = Path(sys.argv[1]), Path(sys.argv[2]), [s.split("|") for s in sys.argv[3:]]
G = 2**30
lines = ["# gpu-check summary", "", "| stage | result | seconds | limit |", "|---|---|---|---|"]
lines += [f"| {n} | {r} | {s} | {l} |" for n, r, s, l in stages]
for what, name in (("the gpu-marked Triton tests", "pytest-kernels-gpu.xml"), ("tests/test_gpu.py", "pytest-gpu.xml"),
                   ("its kernels inside a model", "pytest-gpu-kernels.xml"),
                   ("the rest of the Triton files", "pytest-kernels-rest.xml")):
    try:
        root = ET.parse(raw / name).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        n, f, e, s = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        log = raw / name.replace(".xml", ".log")
        stopped = log.exists() and "KeyboardInterrupt" in log.read_text(errors="replace")
        lines += ["", f"{what} ({name}): {n - f - e - s} passed, {f} failed, {e} errors, {s} skipped"
                  + (" (stopped by the stage's limit: the tests after these did not run)" if stopped else "")]
        for case in suite.iter("testcase"):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                lines.append(f"- FAILED {case.get('classname')}::{case.get('name')}: "
                             f"{(bad.get('message') or '')[:150]}")
    except Exception as exc:  # noqa: BLE001
        lines += ["", f"{what}: no junit report yet ({type(exc).__name__})"]
try:
    rows = json.loads((raw / "attention_gpu.json").read_text())["rows"]
    lines += ["", "| attention | impl | ms | TFLOP/s | peer | err |", "|---|---|---|---|---|---|"]
    for r in rows:
        what = (f"{r['seconds'] * 1e3:.2f} | {r['tflops']:.0f}" if "seconds" in r else
                f"{(r.get('error') or r.get('skipped') or '-')[:60]} |")
        err = f"{r['err']:.1e}" if "err" in r else "-"
        lines.append(f"| {r['model']} B{r['B']} T{r['T']} P{r['P']} | {r.get('impl', '-')} | {what} | "
                     f"{r.get('peer', '-')} | {err} |")
except Exception as exc:  # noqa: BLE001
    lines += ["", f"attention: no results yet ({type(exc).__name__})"]
try:
    rows = json.loads((raw / "train_step_gpu.json").read_text())["rows"]
    by = {(r["shape"], r["system"], r["method"]): r for r in rows}
    lines += ["", "| train step | PEFT tok/s | ptune tok/s | ratio | PEFT peak GiB | ptune peak GiB |", "|---|---|---|---|---|---|"]
    for shape, method in dict.fromkeys((r["shape"], r["method"]) for r in rows):
        a, b = by.get((shape, "peft", method), {}), by.get((shape, "ptune", method), {})
        tp = lambda r: f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else r.get("error", "-")[:40]
        pk = lambda r: f"{r['peak_bytes'] / G:.2f}" if "tokens_per_s" in r else "-"
        ratio = f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}x" if "tokens_per_s" in a and "tokens_per_s" in b else "-"
        lines.append(f"| {shape} {method} | {tp(a)} | {tp(b)} | {ratio} | {pk(a)} | {pk(b)} |")
except Exception as exc:  # noqa: BLE001
    lines += ["", f"train step: no results yet ({type(exc).__name__})"]
try:
    rows = json.loads((raw / "packed_step_gpu.json").read_text())["rows"]
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
    lines += ["", f"packed: no results yet ({type(exc).__name__})"]
try:
    rows = json.loads((raw / "consumer_gpu.json").read_text())["rows"]
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
    lines += ["", f"consumer: no results yet ({type(exc).__name__})"]
for name in ("bases.log", "warm.log"):
    path = raw / name
    if path.exists():
        lines += ["", f"{name}:", *[f"    {line}" for line in path.read_text().splitlines()[-12:]]]
print("\n".join(lines))
EOF
}

# -- run ----------------------------------------------------------------------------------------------------
# The tests come first: they are what the issue's "done when" rests on; the benches take what time is left.
log "gpu-check: $(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${TOTAL} s, OUT=$OUT"
BACKGROUND=()
background() {  # DIR LOGFILE COMMAND...: COMMAND run in DIR in the background until the summary's turn, its
  # output and then its exit status in LOGFILE
  local dir=$1 logfile=$2
  shift 2
  (
    cd "$dir" && timeout $((DEADLINE - B_SUMMARY - KILL_S - $(date +%s))) "$@" >"$logfile" 2>&1
    echo "exit $?" >>"$logfile"
  ) &
  BACKGROUND+=($!)
}
DS_LOG=$RAW/deepspeed-install.log
ds_t0=$(date +%s)
# deepspeed's sdist builds (no ops) while the rest is set up
DS_BUILD_OPS=0 background "$ROOT" "$DS_LOG" $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
  --no-cache-dir --target "$SITE_DS" .whl/deepspeed-*.tar.gz
run_stage setup "$B_SETUP" stage_setup

# in the background from here: the benches' bases (GPU), and their Triton kernels compiled into the cache (CPU)
background "$ROOT" "$RAW/bases.log" $PY bench/gpu_bases.py --base-dir "$BASES"
TRITON_INTERPRET=0 background "$ROOT" "$RAW/warm.log" nice -n 5 $PY bench/triton_compiles.py --warm --jobs 3 \
  --stages attention,train_step,packed,consumer,plan --json "$RAW/warm.json"

# deepspeed: wait for the background build (at most B_DS_WAIT - 10 s), then import it (at most 10 s); if it is
# still building, the tests start anyway (test_zero3 imports it a minute or more into them)
waited=0
while ! grep -q '^exit ' "$DS_LOG" 2>/dev/null && ((waited < B_DS_WAIT - 10)); do
  sleep 1
  waited=$((waited + 1))
done
{
  echo "== deepspeed install (background, DS_BUILD_OPS=0), waited ${waited} s:"
  cat "$DS_LOG" 2>/dev/null
} | tee -a "$LOG"
ds_status=$(grep '^exit ' "$DS_LOG" 2>/dev/null | tail -1)
if [ "$ds_status" = "exit 0" ] && (cd /tmp && PYTHONPATH=$SITE_DS:$PYTHONPATH timeout 10 $PY -c \
  "import deepspeed; from deepspeed.accelerator import get_accelerator as g; print('deepspeed', deepspeed.__version__, g()._name)" \
  2>&1 | tail -2 | tee -a "$LOG"); then
  STAGES+=("deepspeed|ok|$(($(stat -c %Y "$DS_LOG") - ds_t0))|background")
else
  STAGES+=("deepspeed|${ds_status:-still building after ${waited} s}|-|background")
fi
save_outputs

run_stage tests "$B_TESTS" stage_tests
run_stage attention "$B_ATTENTION" stage_attention
run_stage train_step "$B_TRAIN" stage_train_step
run_stage packed "$B_PACKED" stage_packed
run_stage consumer "$B_CONSUMER" stage_consumer
run_stage plan "$B_PLAN" stage_plan
# -- summary (printed last) -----------------------------------------------------------------------------------
for pid in "${BACKGROUND[@]}"; do  # a background job still running (past its own limit): stopped, by id
  if kill -0 "$pid" 2>/dev/null; then
    pkill -TERM -P "$pid"
    log "background job $pid stopped at the end"
  fi
done
log "== summary after $(($(date +%s) - START)) s"
save_outputs
tee -a "$LOG" <"$OUT/summary.md"
bad=0
for s in "${STAGES[@]}"; do [[ $s == *"|ok|"* ]] || bad=1; done
exit $bad
