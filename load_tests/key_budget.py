"""Many keys under a key budget: throughput, memory, evictions and reloads.

Two workloads, each run through the core's :class:`~stream_learner.core.processor.Processor`
with the replay's store of evicted keys (``replay._evicted_keys``: the cache, then a spill
file) and the model and learner settings of ``examples/config.toml``; every event is
labelled (test-then-train). The events are generated as they are fed (a history of
millions of events held in a list would dominate the memory figure).

- **long tail**: ``--keys`` keys × 3 events each, in three passes over the keys (each in
  its own shuffled order), so a key's events are a whole pass apart and, under the budget,
  every key is evicted after each event and reloaded for the next one. Compared with the
  same number of events over 1,000 hot keys (no budget). Target: ≥ 0.2×.
  Beside it, the floors of such a stream (``--kind floor``): the least a budget that
  evicts every key after each of its events can cost, per event the key's state unpickled
  (a new key's from a pickled fresh one), the event learned, the state pickled back into a
  dict, and nothing else (no recency order, no cache bound, no spill file). Once with the
  bare River model and an accuracy metric (standard pickles): what River's own pickling
  allows, whatever a service does; once with the learning core the service runs (its
  ``Learner``, through the service's codec): what the core's state per key allows. The
  long tail is judged against the second, as a service against the least Kafka loop.
- **skewed**: ``--skew-keys`` keys, 1 % of them receive 90 % of ``--skew-events`` events
  (the rest spread evenly over the other 99 %), under a budget holding 5 % of the keys vs
  no budget. Target: ≥ 0.8×.

Each run is a child process (so its peak resident memory is its own), with the garbage
collector's thresholds of the service's loop (``service/runtime.py``); the runs of a
workload alternate for ``--rounds`` rounds and the median ratio is reported (the machine
is shared: ratios of interleaved runs, not absolute figures, are what to compare), beside
the same ratio per CPU second of each run (``time.process_time``: less moved by other
processes on the machine than the wall clock, which is the target's).

    .venv/bin/python load_tests/key_budget.py [--keys 1000000] [--max-keys 60000] \\
        [--skew-keys 10000] [--skew-events 200000] [--rounds 3]

Writes load_tests/results/key_budget.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import write  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "key_budget.json"
#: The long tail's ratios: the target's, then against its floors, then the floors'.
TAIL_RATIOS = (
    ("tail", "hot"),
    ("tail", "floor_core"),
    ("floor_core", "floor_bare"),
    ("floor_bare", "hot"),
    ("floor_core", "hot"),
)


def _events(kind: str, keys: int, n: int, seed: int = 7):
    """(key, x, y) in stream order; SEA-like features with a threshold concept."""
    rng = random.Random(seed)

    def one(key: str):
        x = {"x0": rng.random() * 10, "x1": rng.random() * 10, "x2": rng.random() * 10}
        return key, x, x["x0"] + x["x1"] <= 8.0

    if kind == "tail":  # three passes over the keys, each shuffled
        order = list(range(keys))
        for _ in range(3):
            rng.shuffle(order)
            for k in order:
                yield one(f"k{k}")
    elif kind == "hot":  # the same number of events over `keys` hot keys
        for i in range(n):
            yield one(f"h{i % keys}")
    elif kind == "skew":  # 1 % of the keys get 90 % of the events
        hot = max(1, keys // 100)
        for _ in range(n):
            if rng.random() < 0.9:
                yield one(f"s{rng.randrange(hot)}")
            else:
                yield one(f"s{hot + rng.randrange(keys - hot)}")
    else:
        raise ValueError(kind)


def floor(args: argparse.Namespace) -> dict:
    """The long tail's events through the least evicting loop (see the module docstring);
    ``args.floor``: ``bare`` (River's model) or ``core`` (the service's learner)."""
    import pickle

    from river import metrics

    from stream_learner.cli.service_cmd import core_factory
    from stream_learner.config import load_config
    from stream_learner.core.codec import KeyCodec
    from stream_learner.core.events import Event
    from stream_learner.core.keystate import KeyState
    from stream_learner.core.models import ModelSpec, build_model

    config = load_config(args.config)
    if args.floor == "bare":
        spec = ModelSpec.from_dict(config.model, where="model")
        fresh = pickle.dumps(build_model(spec), protocol=5)
        accuracy = metrics.Accuracy()  # one for all keys: the least a score costs
        update = accuracy.update

        def make(key: str):
            return pickle.loads(fresh)

        def step(model, n: int, key: str, x: dict, y: bool) -> None:
            update(y, model.predict_one(x))
            model.learn_one(x, y)

        dumps, loads = (lambda m: pickle.dumps(m, protocol=5)), pickle.loads
    else:
        codec = KeyCodec(core_factory(config))

        def make(key: str):
            return KeyState(codec.fresh(key))

        def step(state, n: int, key: str, x: dict, y: bool) -> None:
            state.learner.learn(Event(str(n), key, x, y, ts + n))

        dumps, loads = codec.dumps, codec.loads
    held: dict[str, bytes] = {}
    n = 0
    ts = 1_700_000_000.0
    start, cpu = time.perf_counter(), time.process_time()
    for key, x, y in _events("tail", args.run_keys, args.events):
        n += 1
        data = held.get(key)
        state = make(key) if data is None else loads(data)
        step(state, n, key, x, y)
        held[key] = dumps(state)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return {
        "kind": f"floor-{args.floor}",
        "keys": args.run_keys,
        "events": n,
        "seconds": elapsed,
        "events_per_s": n / elapsed,
        "events_per_cpu_s": n / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "state_bytes": sum(map(len, held.values())),
    }


def child(args: argparse.Namespace) -> None:
    """One run; prints one JSON line. Every run collects garbage as the service's loop
    does (``core/collector.py``): a larger young generation lets each event's garbage die
    unscanned."""
    import gc

    from stream_learner.core.collector import THRESHOLDS

    gc.set_threshold(*THRESHOLDS)
    if args.kind == "floor":
        print(json.dumps(floor(args)))
        return
    from dataclasses import replace

    from stream_learner.cli.service_cmd import core_factory
    from stream_learner.config import load_config
    from stream_learner.core.codec import KeyCodec
    from stream_learner.core.events import Event
    from stream_learner.core.processor import InlineRunner, Processor
    from stream_learner.replay import _evicted_keys

    config = load_config(args.config)
    service = replace(config.service, max_keys=args.budget, evicted_cache_mb=args.cache_mb)
    factory = core_factory(config)
    # As the service does: new keys from the codec's prototype (with a budget or not; a
    # replay without a budget uses the factory), and under a budget the codec's pickles.
    codec = KeyCodec(factory)
    store = _evicted_keys(service, codec) if args.budget else None
    proc = Processor(
        codec.fresh,
        InlineRunner(service.retrain_apply_after),
        max_unseen_keys=service.label_max_unseen_keys,
        max_keys=args.budget,
        store=store,
    )
    effects = proc.effects
    n = 0
    ts = 1_700_000_000.0
    start, cpu = time.perf_counter(), time.process_time()
    for key, x, y in _events(args.kind, args.run_keys, args.events):
        n += 1
        proc.event(Event(str(n), key, x, y, ts + n))
        if effects:
            effects.clear()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    out = {
        "kind": args.kind,
        "keys": args.run_keys,
        "budget": args.budget,
        "events": n,
        "seconds": elapsed,
        "events_per_s": n / elapsed,
        "events_per_cpu_s": n / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "resident_keys": len(proc.learners),
        "evicted_keys": len(proc.evicted),
        "evictions": proc.evictions,
        "reloads": proc.reloads,
    }
    if store is not None:
        out.update(
            reloads_by_source=store.reloads,
            snapshot_bytes_encoded=store.evicted_bytes,
            snapshot_bytes_spilled=store.written_bytes,
            cache_bytes=store.bytes,
            spill_file_bytes=store.tier.size,
        )
        store.tier.close()
    print(json.dumps(out))


def _run(
    args: argparse.Namespace, kind: str, keys: int, events: int, budget: int, floor: str = ""
) -> dict:
    cmd = [
        sys.executable, __file__, "--child", "--kind", kind, "--run-keys", str(keys),
        "--events", str(events), "--budget", str(budget), "--cache-mb", str(args.cache_mb),
        "--config", args.config, *(("--floor", floor) if floor else ()),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shown = {k: v for k, v in result.items() if k not in ("kind",)}
    print(f"  {result['kind']:10} {json.dumps(shown)}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="long-tail keys")
    parser.add_argument("--max-keys", type=int, default=60_000, help="long-tail key budget")
    parser.add_argument("--hot-keys", type=int, default=1_000)
    parser.add_argument("--skew-keys", type=int, default=10_000)
    parser.add_argument("--skew-events", type=int, default=200_000)
    parser.add_argument("--cache-mb", type=float, default=256.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("tail", "skew"), default=None)
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"))
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--run-keys", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--floor", choices=("bare", "core"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    results: dict = {
        "machine": platform.platform(),
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "kind", "run_keys")},
    }
    if args.only in (None, "tail"):
        n = 3 * args.keys
        print(f"long tail: {args.keys:,} keys x 3 events, budget {args.max_keys:,} keys, "
              f"vs {n:,} events over {args.hot_keys:,} hot keys")  # fmt: skip
        rounds = []
        for r in range(args.rounds):
            print(f" round {r + 1}", flush=True)
            tail = _run(args, "tail", args.keys, n, args.max_keys)
            hot = _run(args, "hot", args.hot_keys, n, 0)
            bare = _run(args, "floor", args.keys, n, 0, "bare")
            core = _run(args, "floor", args.keys, n, 0, "core")
            runs = {"tail": tail, "hot": hot, "floor_bare": bare, "floor_core": core}
            round_ = dict(runs)
            for a, b in TAIL_RATIOS:
                round_[f"{a}_over_{b}"] = runs[a]["events_per_s"] / runs[b]["events_per_s"]
                round_[f"{a}_over_{b}_cpu"] = (
                    runs[a]["events_per_cpu_s"] / runs[b]["events_per_cpu_s"]
                )
            rounds.append(round_)
        last = rounds[-1]["tail"]
        medians = {
            f"{a}_over_{b}{q}": statistics.median(r[f"{a}_over_{b}{q}"] for r in rounds)
            for a, b in TAIL_RATIOS
            for q in ("", "_cpu")
        }
        ratio, cpu_ratio = medians["tail_over_hot"], medians["tail_over_hot_cpu"]
        print(
            f"long tail / hot keys throughput: {ratio:.3f} (median of {len(rounds)}; "
            f"target >= 0.2; per CPU second {cpu_ratio:.3f})\n"
            + "".join(
                f"  {a.replace('_', ' ')} / {b.replace('_', ' ')}: "
                f"{medians[f'{a}_over_{b}']:.3f} (per CPU second "
                f"{medians[f'{a}_over_{b}_cpu']:.3f})\n"
                for a, b in TAIL_RATIOS[1:]
            )
            + f"  state per key after 3 events: {bare['state_bytes'] / args.keys:,.0f} bytes "
            f"(bare River), {core['state_bytes'] / args.keys:,.0f} (the learning core)\n"
            f"  peak resident memory {last['peak_rss_mb']:.0f} MB (hot: "
            f"{rounds[-1]['hot']['peak_rss_mb']:.0f} MB), evictions {last['evictions']:,}, "
            f"reloads {last['reloads']:,} {last.get('reloads_by_source')}, snapshot bytes "
            f"encoded {last['snapshot_bytes_encoded'] / 1e6:,.0f} MB, spilled to disk "
            f"{last['snapshot_bytes_spilled'] / 1e6:,.0f} MB"
        )  # fmt: skip
        results["long_tail"] = {
            "rounds": rounds, "median_ratio": ratio, "median_cpu_ratio": cpu_ratio,
            "medians": medians,
        }  # fmt: skip
    if args.only in (None, "skew"):
        budget = max(1, args.skew_keys // 20)
        print(f"skewed: {args.skew_keys:,} keys, 1 % get 90 % of {args.skew_events:,} events; "
              f"budget {budget:,} keys (5 %) vs none")  # fmt: skip
        rounds = []
        for r in range(args.rounds):
            print(f" round {r + 1}", flush=True)
            limited = _run(args, "skew", args.skew_keys, args.skew_events, budget)
            free = _run(args, "skew", args.skew_keys, args.skew_events, 0)
            rounds.append({
                "budget": limited, "none": free,
                "ratio": limited["events_per_s"] / free["events_per_s"],
                "cpu_ratio": limited["events_per_cpu_s"] / free["events_per_cpu_s"],
            })  # fmt: skip
        ratio = statistics.median(r["ratio"] for r in rounds)
        cpu_ratio = statistics.median(r["cpu_ratio"] for r in rounds)
        last = rounds[-1]
        print(
            f"skewed, budget 5 % / no budget throughput: {ratio:.3f} (median of {len(rounds)}; "
            f"target >= 0.8; per CPU second {cpu_ratio:.3f})\n"
            f"  peak resident memory {last['budget']['peak_rss_mb']:.0f} MB vs "
            f"{last['none']['peak_rss_mb']:.0f} MB; evictions {last['budget']['evictions']:,}, "
            f"reloads {last['budget']['reloads']:,}"
        )  # fmt: skip
        results["skewed"] = {
            "rounds": rounds, "median_ratio": ratio, "median_cpu_ratio": cpu_ratio
        }  # fmt: skip
    write(RESULTS, results)


if __name__ == "__main__":
    main()
