"""What reading the checkpoint topic holds in memory, with and without ``want``.

Publishes ``--keys`` model keys × ``--versions`` versions of ``--size`` incompressible
bytes each to a :class:`MemoryCheckpointStore` (``keep_versions = --versions``, so every
snapshot stays live; each key's header names one of ``--partitions`` partitions, as the
service's do), then reads it back three ways, ``--rounds`` times interleaved:

* ``full``: ``read()``, what ``checkpoints list`` and the replay CLI do;
* ``partition``: ``read(want=...)`` of one partition's keys, what a restore does;
* ``key``: ``read(want=...)`` of one key, what a rollback command does;
* ``headers``: ``read(want=keep_none)``, the first of a restart's two passes (each key's
  snapshot is chosen from it, its bytes fetched in a second pass).

Each is read from the store's log as it is (``shared``: values allocated before tracing,
not counted) and ``streamed``: a fresh copy of each value, handed over one at a time the
way a broker consumer does. For each it prints the peak of Python heap memory traced
while reading (tracemalloc), the payload bytes the catalog keeps, and the read time
(tracing slows it; compare modes, not absolutes). No assertions: the figures go to
load_tests/results/checkpoint_read_memory.json.

    .venv/bin/python load_tests/checkpoint_read_memory.py [--keys 200] [--versions 3]
        [--size 200000] [--partitions 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import tracemalloc
from pathlib import Path

from stream_learner.core.checkpoints import MemoryCheckpointStore
from stream_learner.core.restore import keep_none
from stream_learner.core.snapshot import SnapshotMeta

RESULTS = Path(__file__).parent / "results" / "checkpoint_read_memory.json"
MB = 1024 * 1024


class StreamedStore(MemoryCheckpointStore):
    """The same log, each value copied as it is read: what reading from a broker allocates."""

    def _scan(self, timeout: float):
        for key, value in list(self.log.items()):
            yield key, bytes(memoryview(value))


def measure(store: MemoryCheckpointStore, want) -> dict[str, float]:
    tracemalloc.start()
    try:
        start = time.perf_counter()
        catalog = store.read(want=want)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    figures = {"peak_mb": peak / MB, "kept_mb": catalog.payload_bytes / MB, "seconds": seconds}
    del catalog
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200)
    parser.add_argument("--versions", type=int, default=3)
    parser.add_argument("--size", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    store = StreamedStore(signing_key=os.urandom(32), keep_versions=args.versions)
    for version in range(1, args.versions + 1):
        for k in range(args.keys):
            meta = SnapshotMeta(
                f"model-{k}",
                "load",
                version,
                "interval",
                extra={"partition": k % args.partitions, "events_topic": "events"},
            )
            store.publish({"blob": os.urandom(args.size)}, meta)
    live_mb = sum(len(value) for value in store.log.values()) / MB
    print(f"topic: {len(store.log)} live records, {live_mb:.1f} MB")

    modes = {
        "full": None,
        "partition": lambda h: (
            h["extra"].get("partition") == 0 and h["extra"].get("events_topic") == "events"
        ),
        "key": lambda h: h["key"] == "model-0",
        "headers": keep_none,
    }
    shared = MemoryCheckpointStore(signing_key=store._signing_key, keep_versions=args.versions)
    shared.log = store.log
    sources = {"shared": shared, "streamed": store}
    runs: dict[str, list[dict[str, float]]] = {
        f"{source} {mode}": [] for source in sources for mode in modes
    }
    for _ in range(args.rounds):
        for source, reader in sources.items():  # interleaved: noise hits every mode alike
            for mode, want in modes.items():
                runs[f"{source} {mode}"].append(measure(reader, want))
    summary = {}
    for mode, figures in runs.items():
        summary[mode] = {
            name: round(statistics.median(f[name] for f in figures), 3)
            for name in ("peak_mb", "kept_mb", "seconds")
        }
        peaks = [round(f["peak_mb"], 1) for f in figures]
        summary[mode]["peak_bytes_per_key"] = round(summary[mode]["peak_mb"] * MB / args.keys)
        print(
            f"{mode:>18}: peak {summary[mode]['peak_mb']:7.1f} MB (runs {peaks}; "
            f"{summary[mode]['peak_bytes_per_key']:,} B a key), "
            f"kept {summary[mode]['kept_mb']:7.1f} MB, read {summary[mode]['seconds']:.2f} s"
        )
    result = {
        "keys": args.keys,
        "versions": args.versions,
        "state_bytes": args.size,
        "partitions": args.partitions,
        "rounds": args.rounds,
        "live_mb": round(live_mb, 1),
        "median": summary,
        "streamed_peak_full_vs_partition": round(
            summary["streamed full"]["peak_mb"] / summary["streamed partition"]["peak_mb"], 1
        ),
        "python": platform.python_version(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
