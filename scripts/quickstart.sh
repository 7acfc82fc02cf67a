#!/usr/bin/env bash
# Set up, then tune a soft prompt on SmolLM2-135M with configs/quickstart.yaml (a few CPU minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/ptune train configs/quickstart.yaml "$@"
