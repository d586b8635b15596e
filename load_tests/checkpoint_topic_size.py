"""How big the checkpoints topic stays: 1,000 snapshots written, what compaction leaves.

Writes ``--snapshots`` snapshots (``--keys`` model keys in turn, a new version each time,
``--size`` incompressible bytes of state each) through :class:`CheckpointStore` with
``keep_versions=--keep`` to a fresh compacted topic whose cleaner settings are aggressive
(segments roll after 1 s, dirty ratio 0.01, max compaction lag 1 s, tombstones kept 1 s).
Then it waits (at most ``--wait`` seconds) for the log cleaner, nudging a segment roll with
a tiny record every couple of seconds because the active segment is never cleaned, and
measures what is left:

* records and bytes (keys + values) read back from the topic, tombstones counted apart;
* bytes on disk of the partition directory, when the broker is the local one (its data
  directory is readable; confluent-kafka 2.16 has no ``describe_log_dirs``);
* how long ``CheckpointStore.read()`` takes before and after compaction.

    .venv/bin/python load_tests/checkpoint_topic_size.py [--snapshots 1000] [--keys 10]
        [--size 100000] [--keep 3] [--wait 180] [--bootstrap HOST:PORT]

Prints the figures and writes load_tests/results/checkpoint_topic_size.json. The local
broker's ``log.cleaner.backoff.ms`` is 5 s, so the cleaner looks at most every 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from stream_learner.core.snapshot import SnapshotMeta
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.client import client_config, resolve_bootstrap

RESULTS = Path(__file__).parent / "results" / "checkpoint_topic_size.json"
NUDGE = "__load__\x1fnudge"
NUDGE_KEY = "\x1e" + NUDGE  # as the store keys service records
TOPIC_CONFIG = {
    "cleanup.policy": "compact",
    "max.message.bytes": "8388608",
    "segment.ms": "1000",
    "min.cleanable.dirty.ratio": "0.01",
    "max.compaction.lag.ms": "1000",
    "min.compaction.lag.ms": "0",
    "delete.retention.ms": "1000",
    "file.delete.delay.ms": "1000",
}


class CountingStore(CheckpointStore):
    """Counts what the store sends to the broker: records, tombstones, key + value bytes."""

    records = tombstones = bytes_sent = 0

    def _write(self, records):
        for key, value in records:
            self.records += 1
            self.tombstones += value is None
            self.bytes_sent += len(key.encode()) + len(value or b"")
        super()._write(records)


def topic_contents(store: CheckpointStore) -> dict[str, int]:
    """Read the topic to its end, as the store does, and count what is there."""
    records = tombstones = size = nudges = 0
    for key, value in store._scan(timeout=120):
        if key == NUDGE_KEY:  # the segment-roll nudges, not part of the figures
            nudges += 1
            continue
        records += 1
        tombstones += value is None
        size += len(key.encode()) + len(value or b"")
    return {"records": records, "tombstones": tombstones, "bytes": size, "nudges": nudges}


def disk_usage(topic: str, bootstrap: str) -> dict[str, int] | None:
    """Bytes of the partition directory on the local broker, or None if it is elsewhere."""
    from stream_learner.kafka.local import LocalBroker

    broker = LocalBroker()
    if broker.bootstrap != bootstrap:
        return None
    directory = broker.data / f"{topic}-0"
    if not directory.is_dir():
        return None
    files = [p for p in directory.iterdir() if p.is_file()]
    return {
        "log_bytes": sum(p.stat().st_size for p in files if p.suffix == ".log"),
        "all_bytes": sum(p.stat().st_size for p in files),
        "segments": sum(p.suffix == ".log" for p in files),
    }


def timed_read(store: CheckpointStore) -> tuple[float, object]:
    start = time.perf_counter()
    catalog = store.read(timeout=120)
    return time.perf_counter() - start, catalog


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--snapshots", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=10)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--wait", type=float, default=180.0)
    parser.add_argument("--bootstrap")
    args = parser.parse_args()

    bootstrap = resolve_bootstrap(args.bootstrap)
    admin = AdminClient(client_config(bootstrap))
    topic = f"load.checkpoint-size-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1, config=TOPIC_CONFIG)])[topic].result(timeout=30)
    store = CountingStore(bootstrap, topic, signing_key=os.urandom(32), keep_versions=args.keep)
    try:
        keys = [f"model-{k}" for k in range(args.keys)]
        start = time.perf_counter()
        for n in range(args.snapshots):
            key, version = keys[n % len(keys)], n // len(keys)
            meta = SnapshotMeta(key, "load", version, "interval", offsets={"events": {0: n}})
            store.publish({"n": n, "blob": os.urandom(args.size)}, meta)
        publish_seconds = time.perf_counter() - start
        written = {
            "records": store.records,
            "tombstones": store.tombstones,
            "bytes": store.bytes_sent,
        }
        read_before, _ = timed_read(store)
        before = topic_contents(store)
        print(f"wrote {args.snapshots} snapshots in {publish_seconds:.1f}s: {written}")
        print(f"topic right after writing: {before}, disk {disk_usage(topic, bootstrap)}")

        # Expected once compacted: per key, keep versions × (chunks + manifest), no tombstones.
        live = len(keys) * args.keep * 2  # one chunk each at this size, plus its manifest
        deadline = time.monotonic() + args.wait
        waited_from = time.monotonic()
        after = before
        nudges = 0
        while time.monotonic() < deadline:
            time.sleep(2.0)
            nudges += 1
            store.publish_record(NUDGE, {"n": nudges})  # rolls the segment
            after = topic_contents(store)
            if after["records"] <= live:
                break
        waited = time.monotonic() - waited_from
        read_after, catalog = timed_read(store)
        disk = disk_usage(topic, bootstrap)
        restorable = {
            key: [v.model_version for v in catalog.versions(key) if v.valid] for key in keys
        }
        expected_versions = {
            key: sorted(
                {n // len(keys) for n in range(args.snapshots) if keys[n % len(keys)] == key}
            )[-args.keep :]
            for key in keys
        }
        result = {
            "snapshots": args.snapshots,
            "keys": args.keys,
            "state_bytes": args.size,
            "keep_versions": args.keep,
            "topic_config": TOPIC_CONFIG,
            "written": written,
            "written_bytes_per_snapshot": round(written["bytes"] / args.snapshots),
            "publish_seconds": round(publish_seconds, 2),
            "snapshots_per_second": round(args.snapshots / publish_seconds, 1),
            "topic_after_writing": before,
            "topic_after_compaction": after,
            "expected_live_records": live,
            "compacted": after["records"] <= live,
            "seconds_waited_for_cleaner": round(waited, 1),
            "disk_after_compaction": disk,
            "bytes_on_topic_vs_written": round(after["bytes"] / written["bytes"], 4),
            "read_seconds_before_compaction": round(read_before, 3),
            "read_seconds_after_compaction": round(read_after, 3),
            "restorable_versions_match_keep": restorable == expected_versions,
            "rejections": len(catalog.rejections),
            "python": platform.python_version(),
        }
        print(json.dumps(result, indent=2))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    finally:
        store.close()
        admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)


if __name__ == "__main__":
    main()
