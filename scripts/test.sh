#!/usr/bin/env bash
# Set up, then run the test suite (pass pytest options through, e.g. -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
