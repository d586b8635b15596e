#!/usr/bin/env bash
# Set up everything, lint, and run the whole test suite (with the doctests) against a
# real local Kafka.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Lint first: a violation fails the run before any test starts.
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
