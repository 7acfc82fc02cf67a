#!/usr/bin/env bash
# Prepare, on this machine (it reaches PyPI), what a fresh GPU machine needs for scripts/gpu-check.sh:
#
#   scripts/gpu-wheels.sh        # idempotent; a second run only checks and prints the sizes
#
#   .whl/              wheels (manylinux x86_64, CPython 3.12) of the packages the GPU machine lacks, one
#                      version each (see /work/.library/device/KINDS.md for what it has), and deepspeed's
#                      sdist (built there with DS_BUILD_OPS=0). bitsandbytes is slimmed to its CPU and CUDA 13.0
#                      libraries (the machine's torch is cu130): the full wheel is 43 MB, mostly CUDA 11/12 builds.
#   .gpu/ptune_home/   an embedded-model home with all-MiniLM-L6-v2 in fp16 (same tensors, names and config,
#                      READY marker): PTUNE_HOME=.gpu/ptune_home makes `embedded:all-minilm-l6-v2` resolve there.
#
# Both folders are git-ignored; the device tool takes them along with carry [".whl", ".gpu"] (64 MiB in all,
# the rest of the working tree included: the script prints the total and fails above 60 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHL=.whl
HOME_GPU=.gpu/ptune_home
MINI=all-minilm-l6-v2

# name==version, with why the GPU machine needs it
WHEELS=(
  omegaconf==2.4.0            # ptune's configs (2.4 vendors its antlr4 runtime: no antlr4-python3-runtime)
  datasets==5.2.0             # data sources; pyarrow, xxhash, fsspec, pandas, huggingface-hub are there
  dill==0.4.1                 # datasets (<0.4.2)
  multiprocess==0.70.19       # datasets (<0.70.20); a py312 wheel
  hjson==3.1.0                # deepspeed
  pydantic==2.14.4            # deepspeed (>=2)
  pydantic-core==2.50.5       # pydantic 2.14.4 pins it; cp312 manylinux
  annotated-types==0.8.0      # pydantic
  typing-inspection==0.4.5    # pydantic
  typing-extensions==4.16.0   # pydantic 2.14 needs >=4.16; the machine's version is not known, a newer one is additive
  bitsandbytes==0.50.2        # nf4/int8 bases (constraints.txt's pin; its one Linux wheel carries the CUDA builds)
)
SDISTS=(deepspeed==0.19.8)    # installed there: DS_BUILD_OPS=0 pip install --no-build-isolation --no-deps
BNB_KEEP='libbitsandbytes_(cpu|cuda130)\.so$'  # shared libraries kept in the slimmed bitsandbytes wheel
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p "$WHL"
quiet() { grep -v -e "gemm_4bit_forward" -e "is ignored: it is neither" || true; }  # drop known noise, keep the status
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

have() {  # the file in .whl for name==version, if any (wheel names use _ for - and keep the case of the project)
  local name=${1%%==*} version=${1##*==}
  local norm=${name//-/_}
  compgen -G "$WHL/${norm}-${version}[-.]*" | head -1 || true
}

for spec in "${WHEELS[@]}"; do
  [ -n "$(have "$spec")" ] && continue
  echo "downloading $spec"
  plat=(); for p in "${PLATFORMS[@]}"; do plat+=(--platform "$p"); done
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d "$stage" "$spec" 2>&1 | quiet
  file=$(ls "$stage"/*.whl 2>/dev/null | head -1)
  [ -n "$file" ] || { echo "no wheel for $spec" >&2; exit 1; }
  if [[ $spec == bitsandbytes==* ]]; then
    "$PY" - "$file" "$WHL/$(basename "$file")" "$BNB_KEEP" <<'EOF'
import base64, hashlib, re, sys, zipfile
src, dst, keep = sys.argv[1], sys.argv[2], re.compile(sys.argv[3])
dropped = 0
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst + ".tmp", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    kept_records = []
    for info in zin.infolist():
        name = info.filename
        if name.endswith(".so") and not keep.search(name):
            dropped += 1
            continue
        if name == record_name:
            continue
        data = zin.read(name)
        zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        kept_records.append(f"{name},sha256={digest},{len(data)}")
    zout.writestr(record_name, "\n".join(kept_records + [f"{record_name},,"]) + "\n")
from ptune_dist.nofollow import publish
publish(dst + ".tmp", dst)
print(f"bitsandbytes slimmed: {dropped} shared libraries dropped (kept {keep.pattern})")
EOF
  else
    mv "$file" "$WHL/"
  fi
  rm -f "$stage"/*
done

for spec in "${SDISTS[@]}"; do
  [ -n "$(have "$spec")" ] && continue
  echo "downloading $spec (sdist; pip runs its setup.py here for the metadata)"
  DS_BUILD_OPS=0 "$PY" -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$stage" "$spec" \
    2>&1 | quiet
  mv "$stage"/*.tar.gz "$WHL/"
done

# exactly the pinned files: another version of a package next to the pinned one stops the whole install there
"$PY" - "$WHL" "${WHEELS[@]}" "${SDISTS[@]}" <<'EOF'
import re, sys
from pathlib import Path
folder, specs = Path(sys.argv[1]), sys.argv[2:]
want = {re.sub(r"[-_.]+", "_", s.split("==")[0]).lower(): s.split("==")[1] for s in specs}
for f in sorted(folder.iterdir()):
    m = re.match(r"(.+?)-(\d[^-]*?)(?:\.tar\.gz|-.*\.whl)$", f.name)
    key = re.sub(r"[-_.]+", "_", m.group(1)).lower() if m else None
    if not m or want.get(key) != m.group(2):
        print(f"removing {f.name}: not one of the pinned files")
        f.unlink()
missing = set(want) - {re.sub(r"[-_.]+", "_", re.match(r"(.+?)-\d", f.name).group(1)).lower() for f in folder.iterdir()}
if missing:
    sys.exit(f"missing from {folder}: {sorted(missing)}")
EOF

# the embedded MiniLM in fp16, laid out as ptune's embedded home expects (models/<name>/ ... READY)
if [ ! -f "$HOME_GPU/models/$MINI/READY" ]; then
  .venv/bin/ptune fetch-models "$MINI"
  src=$("$PY" -c "from ptune_dist import embedded; print(embedded.model_dir('$MINI'))" 2>/dev/null)
  echo "converting $src to fp16 into $HOME_GPU"
  "$PY" - "$src" "$HOME_GPU/models/$MINI" <<'EOF' 2>&1 | quiet
import os, shutil, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
from ptune_dist.nofollow import publish
tmp = dst.with_name(f".{dst.name}.tmp")
shutil.rmtree(tmp, ignore_errors=True)
shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "READY"))
tensors = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, tmp / "model.safetensors",
          metadata={"format": "pt"})
(tmp / "READY").write_text((src / "READY").read_text().strip() + "; fp16 copy for the GPU machine\n")
shutil.rmtree(dst, ignore_errors=True)
dst.parent.mkdir(parents=True, exist_ok=True)
publish(tmp, dst)
EOF
fi

# check: the fp16 copy resolves through ptune's embedded home and computes what the fp32 original computes
"$PY" - "$HOME_GPU" "$MINI" <<'EOF' 2>&1 | quiet
import os, sys
home, name = os.path.abspath(sys.argv[1]), sys.argv[2]
import torch
from ptune_dist import embedded
from ptune_dist.config import load_config
from ptune_dist.model.load import load_base, load_tokenizer
out = {}
for where in ("original", "fp16 copy"):
    if where == "fp16 copy":
        os.environ["PTUNE_HOME"] = home
    assert embedded.is_fetched(name), (where, embedded.model_dir(name))
    model, _ = load_base(load_config([], [f"model.name_or_path=embedded:{name}", "model.dtype=float32"]).model)
    tok = load_tokenizer(f"embedded:{name}")
    batch = tok(["Where is my parcel? It was due on Monday."], return_tensors="pt")
    with torch.no_grad():
        out[where] = model(**batch).last_hidden_state
    dtypes = {str(p.dtype) for p in model.parameters()}
err = ((out["fp16 copy"] - out["original"]).norm() / out["original"].norm()).item()
print(f"{name} fp16 copy: resolves under PTUNE_HOME={sys.argv[1]}, loads as {dtypes}, relative error {err:.1e}")
assert err < 1e-2, err
EOF

# sizes: what travels with the device tool (tracked + untracked-not-ignored files, and the carried folders)
"$PY" - "$WHL" .gpu <<'EOF'
import subprocess, sys
from pathlib import Path
MiB = 2**20
rows = []
for folder in sys.argv[1:]:
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            rows.append((str(f), f.stat().st_size))
tree = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
tree_bytes = sum(Path(p).stat().st_size for p in tree.decode().split("\0") if p and Path(p).is_file())
width = max(len(n) for n, _ in rows)
for name, size in rows:
    if size > 100_000 or name.startswith(sys.argv[1]):
        print(f"  {name:{width}s} {size / MiB:7.2f} MiB")
carried = sum(s for _, s in rows)
whl = sum(s for n, s in rows if n.startswith(sys.argv[1]))
total = carried + tree_bytes
print(f"  .whl {whl / MiB:.1f} MiB + .gpu {(carried - whl) / MiB:.1f} MiB + working tree {tree_bytes / MiB:.1f} MiB"
      f" = {total / MiB:.1f} MiB of the 64 MiB a call may carry")
if total > 60 * MiB:
    sys.exit("too much to carry: above 60 MiB")
EOF
