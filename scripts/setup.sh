#!/usr/bin/env bash
# Set up everything stream-learner needs on a fresh machine, idempotently:
# a virtualenv with the package and its test tools, and the Kafka broker jars.
# Needs only Python >= 3.11, Java >= 17 and Maven on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }

PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || die "python3 not found: install Python 3.11 or newer"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "Python >= 3.11 needed, found $("$PY" -V 2>&1)"
command -v java >/dev/null || die "java not found: install a Java 17+ runtime (apt-get install openjdk-17-jre-headless)"
command -v mvn >/dev/null || die "mvn not found: install Apache Maven (apt-get install maven)"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# Reinstall only when the dependency list changed.
stamp=.venv/.stream-learner-deps
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing Python dependencies into .venv" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev]'
  echo "$want" > "$stamp"
fi
# Fetch the Kafka jars once (a no-op when cached).
.venv/bin/python -c 'from stream_learner.kafka.local import LocalBroker; LocalBroker().ensure_jars()'
