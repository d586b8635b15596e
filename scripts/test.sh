#!/usr/bin/env bash
# Set up everything and run the whole test suite against a real local Kafka.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
