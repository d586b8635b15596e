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
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,report,faust]'
  echo "$want" > "$stamp"
fi
# Fetch the Kafka jars once (a no-op when cached).
.venv/bin/python -c 'from stream_learner.kafka.local import LocalBroker; LocalBroker().ensure_jars()'
# Debian's prometheus package gives promtool and a Prometheus the observability tests
# run themselves; the package's own daemon must not start (or stay) running.
if [ ! -x /usr/bin/promtool ]; then
  if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
    die "promtool not found: install Prometheus as root (apt-get install prometheus)"
  fi
  echo "setup: installing Debian's prometheus package (promtool)" >&2
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    # Exit code 101 tells invoke-rc.d and deb-systemd-invoke not to start the daemon.
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
  fi
  apt-get update -q >/dev/null || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
    >/dev/null || die "apt-get install prometheus failed"
  if pgrep -u prometheus -x prometheus >/dev/null; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
    if pgrep -u prometheus -x prometheus >/dev/null; then
      die "Debian's prometheus daemon is running: stop it (systemctl disable --now prometheus)"
    fi
  fi
fi
