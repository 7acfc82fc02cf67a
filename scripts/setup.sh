#!/usr/bin/env bash
# Set-up, idempotent and fast when done: .venv with torch pinned to the CPU build, the project
# installed editable with its test tools, and the embedded models fetched into $PTUNE_HOME.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ptune-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing ptune-dist and its pinned dependencies into .venv"
  # constraints.txt pins torch==2.13.0 (CPU): an unpinned resolve would pull a multi-GB CUDA build
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$want" > "$stamp"
fi
# Optional: tcmalloc makes CPU training faster and leaner (ptune preloads it when present; see
# ptune_dist/runtime.py). Installed where apt-get can (root); everything works without it.
if ! ls /usr/lib/*/libtcmalloc_minimal.so.4 >/dev/null 2>&1 && command -v apt-get >/dev/null \
    && [ "$(id -u)" = 0 ]; then
  echo "setup: installing libtcmalloc-minimal4 (optional)"
  { apt-get install -y -q libtcmalloc-minimal4 || { apt-get update -q && apt-get install -y -q libtcmalloc-minimal4; }; } \
    >/dev/null 2>&1 || echo "setup: libtcmalloc-minimal4 not installed; using the system allocator"
fi
.venv/bin/ptune fetch-models
