"""How fast a learner learns once it has been pickled, against one that never was.

CPython 3.11 keeps an object's attributes inline (its fastest attribute access) until
something reads the object's ``__dict__``; from then on the object has a real dict and
attribute access takes a slower path, for good. Pickling reads the ``__dict__`` of every
object it saves, and pickle's default load builds objects through theirs. The core's
pickles (``core/pickling.py``) load plain objects attribute by attribute, which keeps them
inline; a live learner that was pickled (a checkpoint round's snapshot) stays slower until
the service renews it (replaces it by an unpickled copy, after a periodic round).

For each model of ``examples/config.toml`` and a Hoeffding tree, it times
``Learner.learn`` over the same ``--events`` SEA events for a learner

- built by the factory (never pickled),
- made from the codec's prototype (``KeyCodec.fresh``, as the service makes new keys),
- built by the factory and pickled once (a checkpoint round's snapshot of a live key),
- pickled once, then renewed (what the service does after a periodic round),
- pickled and unpickled (a restore, a reload),
- pickled and unpickled with pickle's own reductions (as every load was before),
- built by the factory with the ``__dict__`` of every object of its model read, and
  nothing pickled (the cause alone),

in ``--rounds`` rounds, the variants in a shuffled order each round; CPU seconds
(``time.process_time``), medians.

    .venv/bin/python load_tests/pickled_speed.py [--events 20000] [--rounds 8]

Prints seconds and the ratio to the factory's learner; writes
load_tests/results/pickled_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import itertools
import pickle
import random
import statistics
import sys
import time
from pathlib import Path

from river.datasets import synth

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results_file import write  # noqa: E402

from stream_learner.cli.service_cmd import core_factory  # noqa: E402
from stream_learner.config import load_config  # noqa: E402
from stream_learner.core import pickling  # noqa: E402
from stream_learner.core.codec import KeyCodec, _reachable  # noqa: E402
from stream_learner.core.events import Event  # noqa: E402
from stream_learner.core.keystate import KeyState  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "pickled_speed.json"
TREE = [{"estimator": "tree.HoeffdingTreeClassifier"}]


def _dicts_read(learner):
    for obj in _reachable(learner.model).values():
        if not isinstance(obj, type) and hasattr(obj, "__dict__"):
            obj.__dict__  # noqa: B018 - the read is the point
    return learner


def _dumped(learner):
    pickling.dumps(learner)
    return learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"))
    args = parser.parse_args()
    if args.events < 1 or args.rounds < 1:
        parser.error("--events and --rounds must be at least 1")
    base = load_config(args.config)
    models = {
        "config": base,
        "tree": dataclasses.replace(base, model={**base.model, "pipeline": TREE}),
    }
    stream = itertools.islice(synth.SEA(seed=1, noise=0.1), args.events)
    events = [Event(str(i), "k", {f"x{k}": v for k, v in x.items()}, y, i + 1.0)
              for i, (x, y) in enumerate(stream)]  # fmt: skip
    gc.collect()
    gc.freeze()  # the events stay out of the collector's scans, as a service's would
    results: dict = {"events": args.events, "rounds": args.rounds, "models": {}}
    shuffle = random.Random(1).shuffle
    for name, config in models.items():
        factory = core_factory(config)
        codec = KeyCodec(factory)
        variants = {
            "factory": lambda f=factory: f("k"),
            "prototype": lambda c=codec: c.fresh("k"),
            "pickled once": lambda f=factory: _dumped(f("k")),
            "renewed": lambda f=factory, c=codec: c.copy(KeyState(_dumped(f("k")))).learner,
            "round trip": lambda f=factory: pickle.loads(pickling.dumps(f("k"))),
            "standard round trip": lambda f=factory: pickle.loads(pickle.dumps(f("k"))),
            "model dicts read": lambda f=factory: _dicts_read(f("k")),
        }
        times: dict[str, list[float]] = {v: [] for v in variants}
        for _ in range(args.rounds):
            order = list(variants)
            shuffle(order)
            for variant in order:
                learner = variants[variant]()
                started = time.process_time()
                for event in events:
                    learner.learn(event)
                times[variant].append(time.process_time() - started)
                del learner
                gc.collect()
        medians = {v: statistics.median(t) for v, t in times.items()}
        figures = {
            v: {"seconds": round(s, 4), "over_factory": round(s / medians["factory"], 3)}
            for v, s in medians.items()
        }
        results["models"][name] = figures
        for variant, f in figures.items():
            print(f"{name:6} {variant:19} {f['seconds']:.3f} s  {f['over_factory']:.3f}x")
    write(RESULTS, results)


if __name__ == "__main__":
    main()
