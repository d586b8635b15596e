"""Memory per model key: many keys, each holding a full retrain window.

Runs the learning core (the :class:`~stream_learner.core.processor.Processor` that the
service and the replay drive; no Kafka) with the configuration of ``examples/config.toml``
(StandardScaler | LogisticRegression, the default windows) over ``--keys`` keys that each
receive ``--events`` labelled SEA events, decoded from JSON bytes as the service decodes
them (so every event is the object graph a real input is). Keys come one after another;
at the end every key holds its ``--events`` examples in its retrain window (default window
5,000), which is what a long-running instance holds.

It prints, and writes to load_tests/results/key_memory.json (``--out`` for another path):

- resident memory: the process's peak RSS, and RSS at the end minus RSS before the first
  key, per key;
- bytes per held event: what one labelled example in a key's retrain window costs (the
  allocations of one key's learner, rebuilt from its pickle, with its window full minus
  the same with its window emptied, per example; tracemalloc);
- bytes per pending prediction: the same for a prediction parked in the label joiner,
  waiting for its delayed label;
- bytes per idle key: a key's learner with an empty window and joiner (model, evaluator,
  detectors, policy, decision log).

    .venv/bin/python load_tests/key_memory.py [--keys 10000] [--events 1000] [--tag after]

Run it on two checkouts (before and after a change) for a comparison: ``--tag`` names the
run in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import pickle
import platform
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import orjson
from river.datasets import synth

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_learner.cli.service_cmd import core_factory  # noqa: E402
from stream_learner.config import load_config  # noqa: E402
from stream_learner.core.events import decode  # noqa: E402
from stream_learner.core.processor import InlineRunner, Processor  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "key_memory.json"
PAGE = resource.getpagesize()


def rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss() -> int:
    """The most resident bytes this process has had (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def messages(key: str, n: int, seed: int, *, labelled: bool = True):
    """``n`` SEA events of ``key`` as JSON bytes, as they come from Kafka."""
    for i, (x, y) in enumerate(synth.SEA(variant=seed % 4, seed=seed).take(n)):
        body = {
            "id": f"{key}-e{i}",
            "key": key,
            "ts": 1.7e9 + i,
            "x": {f"x{j}": v for j, v in x.items()},
        }
        if labelled:
            body["y"] = bool(y)
        yield orjson.dumps(body)


def held(obj: object) -> int:
    """Bytes that ``obj`` rebuilt from its pickle keeps allocated."""
    data = pickle.dumps(obj)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copy_ = pickle.loads(data)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del copy_
    return after - before


def per_item(factory, events: int) -> dict:
    """Bytes per held example, per pending prediction and per idle key, from one key."""
    learner = factory("k")
    for raw in messages("k", events, 7):
        learner.learn(decode(raw))
    full = held(learner)
    idle = copy.deepcopy(learner)
    window = idle.window
    (window.items if hasattr(window, "items") else window).clear()  # before: a deque
    empty = held(idle)
    waiting = copy.deepcopy(idle)
    for raw in messages("p", events, 8, labelled=False):
        waiting.predict(decode(raw))
    parked = held(waiting)
    return {
        "bytes_per_held_event": (full - empty) / events,
        "bytes_per_pending_prediction": (parked - empty) / events,
        "bytes_per_idle_key": empty,
        "bytes_per_key_with_window": full,
        "pickle_bytes_per_key": len(pickle.dumps(learner)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1000, help="labelled events per key")
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"))
    parser.add_argument("--tag", default="", help="a name for this run in the JSON")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.keys < 1 or args.events < 1:
        parser.error("--keys and --events must be at least 1")

    config = load_config(args.config)
    factory = core_factory(config)
    unit = per_item(factory, args.events)

    processor = Processor(factory, InlineRunner(config.service.retrain_apply_after))
    start_rss = rss()
    started = time.perf_counter()
    for k in range(args.keys):
        key = f"key-{k}"
        for raw in messages(key, args.events, k):
            processor.event(decode(raw))
        processor.effects.clear()
        if (k + 1) % max(1, args.keys // 10) == 0:
            print(
                f"  {k + 1} keys  rss {rss() / 2**20:8.1f} MiB  "
                f"{(k + 1) * args.events / (time.perf_counter() - started):8.0f} events/s",
                flush=True,
            )
    elapsed = time.perf_counter() - started
    end_rss = rss()
    held_events = sum(len(lr.window) for lr in processor.learners.values())
    result = {
        "tag": args.tag,
        "keys": args.keys,
        "events_per_key": args.events,
        "held_events": held_events,
        "peak_rss_bytes": peak_rss(),
        "rss_start_bytes": start_rss,
        "rss_end_bytes": end_rss,
        "rss_bytes_per_key": (end_rss - start_rss) / args.keys,
        "events_per_s": args.keys * args.events / elapsed,
        **unit,
        "python": platform.python_version(),
    }
    print(
        f"{args.tag or 'run'}: {args.keys} keys x {args.events} labelled events "
        f"({held_events} held in retrain windows)\n"
        f"  peak RSS               {result['peak_rss_bytes'] / 2**20:10.1f} MiB\n"
        f"  resident per key       {result['rss_bytes_per_key'] / 1024:10.1f} KiB\n"
        f"  bytes per held event   {unit['bytes_per_held_event']:10.1f}\n"
        f"  bytes per pending pred {unit['bytes_per_pending_prediction']:10.1f}\n"
        f"  bytes per idle key     {unit['bytes_per_idle_key']:10.0f}\n"
        f"  pickle bytes per key   {unit['pickle_bytes_per_key']:10.0f}\n"
        f"  events/s               {result['events_per_s']:10.0f}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.tag or "run"] = result
    out.write_text(json.dumps(runs, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
