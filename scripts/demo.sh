#!/usr/bin/env bash
# Set up everything and run the demo: a local Kafka, the service, a drifting stream.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/stream-learner demo "$@"
