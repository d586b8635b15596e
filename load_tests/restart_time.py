"""Restart-to-ready time against the length of the stream's history.

For each history length (default 100,000 and 2,000,000 events over 4 keys), on fresh topics
of the live broker: produce the history, run `stream-learner run` until it is ready (every
partition read to its end), stop it with SIGTERM (a checkpoint round), then start it again and
time start -> /readyz answering 200. A restart restores the snapshots and re-reads only what
came after them, so the two times should be close whatever the history.

    .venv/bin/python load_tests/restart_time.py [--histories 100000 2000000]

Prints the figures and writes load_tests/results/restart_time.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_learner.kafka.client import client_config, resolve_bootstrap  # noqa: E402
from stream_learner.kafka.sink import KafkaSink  # noqa: E402
from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan  # noqa: E402
from tests.service.helpers import ServiceProcess, write_config  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "restart_time.json"
KEYS = ("a", "b", "c", "d")


def produce_history(bootstrap: str, topic: str, n: int) -> float:
    started = time.perf_counter()
    sink = KafkaSink(bootstrap, {"linger.ms": 50, "batch.size": 1_000_000})
    t0 = time.time() - n / 1000
    for i in range(n):
        key = KEYS[i % 4]
        x = {"x0": (i * 7.3) % 10, "x1": (i * 3.1) % 10, "x2": (i * 1.7) % 10}
        body = {"id": f"e{i}", "key": key, "x": x, "y": x["x0"] + x["x1"] > 8}
        sink.produce(topic, orjson.dumps(body), key=key, timestamp_ms=int((t0 + i / 1000) * 1000))
    assert sink.close(120) == 0
    return time.perf_counter() - started


def one(bootstrap: str, admin, n: int) -> dict:
    prefix = f"restart-{uuid.uuid4().hex[:8]}."
    apply(admin, plan(load_topics(default_topics_file(), prefix=prefix), admin))
    tmp = Path(tempfile.mkdtemp())
    config = write_config(tmp, bootstrap, prefix, batch_size=1000, every_events=100_000)
    produce_s = produce_history(bootstrap, prefix + "events", n)
    first = ServiceProcess(config, tmp / "first.log")
    started = time.monotonic()
    try:
        while not first.ready():
            if time.monotonic() - started > 1800:
                raise SystemExit("the first run did not catch up within 30 minutes")
            time.sleep(0.5)
        learn_s = time.monotonic() - started
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait(120) == 0
    finally:
        first.kill()
    started = time.monotonic()
    second = ServiceProcess(config, tmp / "second.log")
    try:
        while not second.ready():
            time.sleep(0.05)
        ready_s = time.monotonic() - started
        restored = second.sample("stream_learner_checkpoints_total", result="restored")
        second.proc.send_signal(signal.SIGTERM)
        second.wait(120)
    finally:
        second.kill()
    admin.delete_topics([t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)])
    return {
        "history_events": n,
        "produce_s": round(produce_s, 1),
        "first_run_to_ready_s": round(learn_s, 1),
        "restart_to_ready_s": round(ready_s, 2),
        "keys_restored": int(restored),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[100_000, 2_000_000])
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    bootstrap = resolve_bootstrap(args.bootstrap)
    admin = AdminClient(client_config(bootstrap))
    runs = []
    for n in args.histories:
        runs.append(one(bootstrap, admin, n))
        print(runs[-1], flush=True)
    times = [r["restart_to_ready_s"] for r in runs]
    result = {"runs": runs, "longest_over_shortest": round(max(times) / min(times), 3)}
    print(f"restart-to-ready, longest history / shortest: {result['longest_over_shortest']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
