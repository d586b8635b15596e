"""Memory per key with the race alive: a candidate racing and a pool of retired models.

Runs one learner per model (StandardScaler | LogisticRegression, HoeffdingTreeClassifier) with
the default configuration on a stream whose concept changes every ``--segment`` events (a
10-feature Hyperplane, another plane each time), until the key's pool
holds ``retrain.pool`` (3) retired models and a race is on with a candidate that has raced
``--raced`` events. Then it measures the key's state three ways: the learner's pickle (what
a snapshot holds, before compression), the same compressed as a snapshot is, and the memory
the live learner holds (tracemalloc: the allocations a learner unpickled from that state
keeps). The pickles are the core's (``core/pickling.py``, what snapshots hold); a standard
``pickle.dumps`` of the same learner (unseeded generators included) is given beside them.
For comparison, the same learner with the race off (``retrain.shadow = false``) at the same
input.

    .venv/bin/python load_tests/race_memory.py [--segment 5000] [--raced 500]

Prints the figures and writes load_tests/results/race_memory.json.
"""

from __future__ import annotations

import argparse
import itertools
import pickle
import tracemalloc
import zlib
from pathlib import Path

from results_file import write
from river.datasets import synth

from stream_learner.core import pickling
from stream_learner.core.events import Event
from stream_learner.core.learner import Learner
from stream_learner.core.models import ModelSpec
from stream_learner.core.retrain import RetrainConfig
from stream_learner.core.snapshot import ZLIB_LEVEL

MODELS = {
    "scaler+logistic_regression": [
        {"estimator": "preprocessing.StandardScaler"},
        {"estimator": "linear_model.LogisticRegression"},
    ],
    "hoeffding_tree": [{"estimator": "tree.HoeffdingTreeClassifier"}],
}
RESULTS = Path(__file__).parent / "results" / "race_memory.json"


def stream(segment: int, seed: int = 1):
    """A new concept every ``segment`` events: a 10-feature Hyperplane of another seed."""
    for k in itertools.count():
        source = synth.Hyperplane(seed=seed + 1000 * k, n_features=10)
        for x, y in itertools.islice(source, segment):
            yield {f"x{j}": v for j, v in x.items()}, y


def held(learner: Learner, dumps=pickling.dumps) -> int:
    """Bytes a learner rebuilt from its pickle keeps allocated."""
    data = dumps(learner)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    copy = pickle.loads(data)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del copy
    return after - before


def measure(name: str, pipeline: list, segment: int, raced: int, limit: int) -> dict:
    spec = ModelSpec.from_dict({"task": "binary", "pipeline": pipeline})
    learner = Learner("k", spec)
    plain = Learner("k", spec, retrain=RetrainConfig(shadow=False))
    for i, (x, y) in enumerate(itertools.islice(stream(segment), limit)):
        event = Event(f"e{i}", "k", x, y, float(i))
        for lr in (learner, plain):
            out = lr.learn(event)
            if out.job is not None:
                lr.apply(out.job.run())
        race = learner._race
        if (
            len(learner.pool) == learner.pool.maxlen
            and race is not None
            and max(c.n for c in race.candidates) >= raced
        ):
            break
    else:
        raise SystemExit(f"{name}: no race with a full pool within {limit} events")
    race = learner._race
    standard = pickle.dumps(learner)  # before pickling.dumps shares the live generators
    standard_held = held(learner, pickle.dumps)
    state = pickling.dumps(learner)
    plain_state = pickling.dumps(plain)
    return {
        "input": learner.index,
        "standard_pickle_bytes": len(standard),
        "standard_compressed_bytes": len(zlib.compress(standard, ZLIB_LEVEL)),
        "standard_held_bytes": standard_held,
        "candidates": sorted(c.source for c in race.candidates),
        "pool": len(learner.pool),
        "pickle_bytes": len(state),
        "compressed_bytes": len(zlib.compress(state, ZLIB_LEVEL)),
        "held_bytes": held(learner),
        "no_race_pickle_bytes": len(plain_state),
        "no_race_compressed_bytes": len(zlib.compress(plain_state, ZLIB_LEVEL)),
        "no_race_held_bytes": held(plain),
        "models_pickle_bytes": [
            len(pickling.dumps(m))
            for m in (
                learner.model,
                *(m for _, m in learner.pool),
                *(c.model for c in race.candidates),
            )
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--segment", type=int, default=5000)
    parser.add_argument("--raced", type=int, default=500)
    parser.add_argument("--limit", type=int, default=200_000)
    args = parser.parse_args()
    results = {}
    for name, pipeline in MODELS.items():
        r = results[name] = measure(name, pipeline, args.segment, args.raced, args.limit)
        print(
            f"{name:28s} at input {r['input']:,}: candidates {', '.join(r['candidates'])}, "
            f"pool {r['pool']}; pickle {r['pickle_bytes'] / 1024:,.0f} KiB "
            f"(compressed {r['compressed_bytes'] / 1024:,.0f} KiB), held "
            f"{r['held_bytes'] / 1024:,.0f} KiB; race off: pickle "
            f"{r['no_race_pickle_bytes'] / 1024:,.0f} KiB (compressed "
            f"{r['no_race_compressed_bytes'] / 1024:,.0f} KiB), held "
            f"{r['no_race_held_bytes'] / 1024:,.0f} KiB; a standard pickle: "
            f"{r['standard_pickle_bytes'] / 1024:,.0f} KiB (compressed "
            f"{r['standard_compressed_bytes'] / 1024:,.0f} KiB), held "
            f"{r['standard_held_bytes'] / 1024:,.0f} KiB"
        )
    report = {
        "segment": args.segment,
        "raced": args.raced,
        "results": results,
    }
    write(RESULTS, report)


if __name__ == "__main__":
    main()
