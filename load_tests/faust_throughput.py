"""The Faust integration's throughput against the service and the bare River loop.

One command, one run, on a live broker (the local one unless STREAM_LEARNER_BOOTSTRAP):

    .venv/bin/python load_tests/faust_throughput.py [--events 20000] [--rounds 2]

For each model (StandardScaler | LogisticRegression, and a Hoeffding tree) and round, on
the same SEA events (one key, labelled, pre-produced to fresh topics for each runtime, so
neither restores the other's checkpoints):

  - bare River: predict_one + learn_one + Accuracy.update over the events in memory, right
    before and right after the two runtimes (the limit is their mean);
  - the service, in-process (``service_throughput.service_run``): first to last batch;
  - ``examples/faust_app.py`` as its own process (Faust's aiokafka driver), the same config:
    from the first learned event to the last, read from its ``/metrics`` (the events
    counter, ``runtime="faust"``) every 250 ms (a scrape costs the app CPU).

Both runtimes run as deployed: signed checkpoints on the default cadence, retrains in the
worker (none fires on this stationary stream). Rounds are interleaved, so the ratios are
measured under the same load; absolute figures on a shared machine are not comparable
across runs. Prints each figure and writes load_tests/results/faust_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from confluent_kafka.admin import AdminClient  # noqa: E402
from service_throughput import (  # noqa: E402
    MODELS,
    _toml,
    bare,
    config,
    events,
    make_topics,
    produce,
    service_run,
)

from stream_learner.core.models import ModelSpec  # noqa: E402
from stream_learner.kafka.client import client_config, resolve_bootstrap  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "faust_throughput.json"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _learned(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("stream_learner_events_total{") and 'outcome="learned"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def faust_run(bootstrap: str, prefix: str, pipeline: list, n: int, workdir: Path) -> dict:
    """examples/faust_app.py over ``n`` pre-produced events; events/s from its metrics."""
    path = workdir / f"{prefix}toml"
    path.write_text(_toml(config(bootstrap, prefix, pipeline)))
    port, log = _free_port(), workdir / f"{prefix}log"
    env = {**os.environ, "STREAM_LEARNER_CONFIG": str(path), "FAUST_WEB_PORT": str(port)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "faust_app.py"), "worker", "-l", "warn"],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        first = last = None
        at_first = 0.0
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the Faust app exited: {log.read_text()[-3000:]}")
            learned = _learned(port)
            now = time.perf_counter()
            if learned and first is None:
                first, at_first = now, learned
            if learned is not None and learned >= n:
                last = now
                break
            time.sleep(0.25)  # a scrape costs the app CPU: not too often
        if first is None or last is None:
            raise SystemExit(f"the Faust app did not learn {n} events: {log}")
        return {"events": n, "events_per_s": (n - at_first) / (last - first)}
    finally:
        if proc.poll() is None:
            proc.terminate()  # ours, by PID
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("STREAM_LEARNER_BENCH_KEY", secrets.token_hex(32))
    bootstrap = resolve_bootstrap(None)
    admin = AdminClient(client_config(bootstrap))
    data = events(args.events)
    results: dict = {
        "events": args.events,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, pipeline in MODELS.items():
            spec = ModelSpec.from_dict({"task": "binary", "pipeline": pipeline})
            rounds = []
            for r in range(args.rounds):
                before = bare(spec, data)[0]
                prefix = make_topics(admin, bootstrap, 1)
                produce(bootstrap, prefix + "events", data)
                service = service_run(bootstrap, prefix, pipeline, args.events)
                prefix = make_topics(admin, bootstrap, 1)
                produce(bootstrap, prefix + "events", data)
                faust = faust_run(bootstrap, prefix, pipeline, args.events, Path(tmp))
                after = bare(spec, data)[0]
                limit = (before + after) / 2
                row = {
                    "bare_before": before,
                    "bare_after": after,
                    "service": service["events_per_s"],
                    "faust": faust["events_per_s"],
                    "service_over_bare": service["events_per_s"] / limit,
                    "faust_over_bare": faust["events_per_s"] / limit,
                    "faust_over_service": faust["events_per_s"] / service["events_per_s"],
                }
                rounds.append(row)
                print(
                    f"{name:28s} round {r + 1}: bare {limit:9,.0f}/s  service "
                    f"{row['service']:9,.0f}/s ({row['service_over_bare']:.2f}x)  faust "
                    f"{row['faust']:8,.0f}/s ({row['faust_over_bare']:.2f}x bare, "
                    f"{row['faust_over_service']:.2f}x service)",
                    flush=True,
                )
            results["models"][name] = {
                "rounds": rounds,
                **{
                    k: sum(row[k] for row in rounds) / len(rounds)
                    for k in ("service_over_bare", "faust_over_bare", "faust_over_service")
                },
            }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
