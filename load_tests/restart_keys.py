"""A restart of an instance that holds many keys under a key budget: its peak resident
memory and its restore time, beside the run that learned the keys.

On fresh topics of the live broker: ``--keys`` keys × ``--events`` labelled events each
(one pass over the keys per event, so under the budget nearly every key is evicted), one
``stream-learner run`` with ``service.max_keys = --max-keys`` to ready, stopped with SIGTERM
(a checkpoint round: every key, resident or evicted, on the checkpoint topic). Then
``--restarts`` restarts to ready, each stopped the same way. A restart restores every
key's snapshot and evicts what the budget does not hold, so its peak should stay near the
learning run's, not grow with the keys. Peak resident memory is the service process's own
(``VmHWM``; the retrain worker is a process of its own).

    .venv/bin/python load_tests/restart_keys.py [--keys 20000] [--events 2] \\
        [--max-keys 1000] [--cache-mb 16] [--restarts 2]

Prints the figures and writes load_tests/results/restart_keys.json.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import write  # noqa: E402

from stream_learner.kafka.client import client_config, resolve_bootstrap  # noqa: E402
from stream_learner.kafka.sink import KafkaSink  # noqa: E402
from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan  # noqa: E402
from tests.service.helpers import ServiceProcess, wait_until, write_config  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "restart_keys.json"


def produce(bootstrap: str, topic: str, keys: int, events: int) -> None:
    sink = KafkaSink(bootstrap, {"linger.ms": 50, "batch.size": 1_000_000})
    n, t0 = keys * events, time.time() - keys * events / 1000
    for i in range(n):
        key = f"k{i % keys}"
        x = {"x0": (i * 7.3) % 10, "x1": (i * 3.1) % 10, "x2": (i * 1.7) % 10}
        body = {"id": f"e{i}", "key": key, "x": x, "y": x["x0"] + x["x1"] > 8}
        sink.produce(topic, orjson.dumps(body), key=key, timestamp_ms=int((t0 + i / 1000) * 1000))
    assert sink.close(300) == 0


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def run_to_ready(config: Path, log: Path, expect_restored: int | None) -> dict:
    """Start, wait for ready, read the figures, stop with SIGTERM."""
    started = time.monotonic()
    service = ServiceProcess(config, log, max_seconds=3600)  # a million keys take long
    try:
        wait_until(
            lambda: service.ready() or service.proc.poll() is not None,
            3000,
            f"ready (see {log})",
            interval=0.1,
        )
        if service.proc.poll() is not None:
            raise SystemExit(f"the service stopped before it was ready: see {log}")
        ready_s = time.monotonic() - started
        peak = peak_mb(service.proc.pid)
        restored = service.sample("stream_learner_checkpoints_total", result="restored")
        resident = service.sample("stream_learner_keys_resident")
        service.proc.send_signal(signal.SIGTERM)
        if service.wait(600) != 0:
            raise SystemExit(f"the service did not stop cleanly: see {log}")
    finally:
        service.kill()
    if expect_restored is not None and int(restored) != expect_restored:
        raise SystemExit(f"restored {restored} keys, expected {expect_restored}: see {log}")
    stamps = {}
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            rec = orjson.loads(line)
            if rec.get("event") in ("assigned", "caught_up"):
                stamps.setdefault(rec["event"], rec["ts"])
    return {
        "to_ready_s": round(ready_s, 2),
        "peak_rss_mb": round(peak, 1),
        "restored": int(restored) if restored == restored else 0,
        "resident": int(resident),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=2, help="labelled events per key")
    parser.add_argument("--max-keys", type=int, default=1000, help="service.max_keys")
    parser.add_argument("--cache-mb", type=float, default=16.0, help="service.evicted_cache_mb")
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    if min(args.keys, args.events, args.max_keys, args.restarts) < 1 or args.cache_mb < 0:
        parser.error("--keys, --events, --max-keys and --restarts must be at least 1")
    bootstrap = resolve_bootstrap(args.bootstrap)
    admin = AdminClient(client_config(bootstrap))
    prefix = f"restart-keys-{uuid.uuid4().hex[:8]}."
    apply(admin, plan(load_topics(default_topics_file(), prefix=prefix), admin))
    tmp = Path(tempfile.mkdtemp())
    os.environ["STREAM_LEARNER__SERVICE__MAX_KEYS"] = str(args.max_keys)
    os.environ["STREAM_LEARNER__SERVICE__EVICTED_CACHE_MB"] = str(args.cache_mb)
    config = write_config(tmp, bootstrap, prefix, batch_size=1000, every_events=10**9)
    try:
        produce(bootstrap, prefix + "events", args.keys, args.events)
        first = run_to_ready(config, tmp / "first.log", None)
        print(
            f"learning run: {args.keys:,} keys x {args.events} events under a budget of "
            f"{args.max_keys:,} keys: ready in {first['to_ready_s']} s, peak resident memory "
            f"{first['peak_rss_mb']:,.0f} MB",
            flush=True,
        )
        restarts = []
        for i in range(args.restarts):
            row = run_to_ready(config, tmp / f"restart-{i}.log", args.keys)
            restarts.append(row)
            print(
                f"restart {i + 1}: {row['restored']:,} keys restored, {row['resident']:,} "
                f"resident; ready in {row['to_ready_s']} s, peak resident memory "
                f"{row['peak_rss_mb']:,.0f} MB",
                flush=True,
            )
    finally:
        mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
        if mine:
            admin.delete_topics(mine)
    peak = statistics.median(r["peak_rss_mb"] for r in restarts)
    result = {
        "keys": args.keys,
        "events_per_key": args.events,
        "max_keys": args.max_keys,
        "cache_mb": args.cache_mb,
        "learning_run": first,
        "restarts": restarts,
        "restart_peak_over_learning_peak": round(peak / first["peak_rss_mb"], 3),
    }
    print(
        f"restart peak / learning run peak: {result['restart_peak_over_learning_peak']}x "
        f"(median of {len(restarts)})"
    )
    write(RESULTS, result)


if __name__ == "__main__":
    main()
