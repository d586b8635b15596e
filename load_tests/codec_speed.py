"""What an evicted key costs in the codec: pickle, unpickle and bytes per key, and a new key.

For the model of ``examples/config.toml`` (StandardScaler | LogisticRegression) and a
Hoeffding tree, a key is made the way the service makes it (``KeyCodec.fresh``), learns
``--events`` labelled SEA events (a young key, as a long tail's are), and then, per round,
its state is pickled (an eviction), unpickled (a reload), and a new key is made (the
prototype), each ``--ops`` times; times are CPU seconds of this process
(``time.process_time``), the median of ``--rounds`` rounds. ``--against REF`` adds the
codec of ``stream_learner/core/codec.py`` at git revision ``REF``, its rounds interleaved
with today's: a before/after of a codec change measured in one run.

    .venv/bin/python load_tests/codec_speed.py [--events 3] [--rounds 15] [--against REF]

Prints microseconds per operation and bytes per key; writes load_tests/results/codec_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import time
from pathlib import Path

from river.datasets import synth

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "load_tests"))

from results_file import write  # noqa: E402
from revision import module_at  # noqa: E402

from stream_learner.cli.service_cmd import core_factory  # noqa: E402
from stream_learner.config import load_config  # noqa: E402
from stream_learner.core import codec  # noqa: E402
from stream_learner.core.events import Event  # noqa: E402
from stream_learner.core.keystate import KeyState  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "codec_speed.json"
TREE = [{"estimator": "tree.HoeffdingTreeClassifier"}]


def per_op(fn, ops: int) -> float:
    """CPU microseconds per call of ``fn``."""
    started = time.process_time()
    for _ in range(ops):
        fn()
    return (time.process_time() - started) / ops * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3, help="events a key learns first")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=300, help="operations timed per round")
    parser.add_argument("--against", metavar="REF", help="git revision of codec.py to compare")
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"))
    args = parser.parse_args()
    if min(args.events, args.rounds, args.ops) < 1:
        parser.error("--events, --rounds and --ops must be at least 1")
    base = load_config(args.config)
    models = {
        "config": base,
        "tree": dataclasses.replace(base, model={**base.model, "pipeline": TREE}),
    }
    codecs = {"today": codec.KeyCodec}
    if args.against:
        codecs[args.against] = module_at(args.against, "stream_learner/core/codec.py").KeyCodec
    pairs = list(itertools.islice(synth.SEA(seed=1, noise=0.1), args.events))
    results: dict = {"events": args.events, "rounds": args.rounds, "models": {}}
    for name, config in models.items():
        factory = core_factory(config)
        cases = {}
        for which, codec_class in codecs.items():
            keys = codec_class(factory)
            learner = keys.fresh("k")
            for i, (x, y) in enumerate(pairs):
                learner.learn(Event(str(i), "k", {f"x{k}": v for k, v in x.items()}, y, i + 1.0))
            state = KeyState(learner)
            data = keys.dumps(state)
            cases[which] = (keys, state, data, {"dump": [], "load": [], "fresh": []})
        for _ in range(args.rounds):  # the codecs alternate: the same machine load for both
            for keys, state, data, times in cases.values():
                times["dump"].append(per_op(lambda k=keys, s=state: k.dumps(s), args.ops))
                times["load"].append(per_op(lambda k=keys, d=data: k.loads(d), args.ops))
                times["fresh"].append(per_op(lambda k=keys: k.fresh("k2"), args.ops))
        figures = {}
        for which, (_, _, data, times) in cases.items():
            medians = {op: round(statistics.median(t), 1) for op, t in times.items()}
            figures[which] = {"bytes": len(data), "us": medians}
            print(
                f"{name:6} {which:>12}: dump {medians['dump']:7.1f} us, load "
                f"{medians['load']:7.1f} us, new key {medians['fresh']:6.1f} us, "
                f"{len(data):,} bytes per key",
                flush=True,
            )
        results["models"][name] = figures
    write(RESULTS, results)


if __name__ == "__main__":
    main()
