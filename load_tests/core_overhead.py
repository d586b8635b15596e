"""Per-event cost of the core's Learner against a bare River loop, on the same events.

For each model (StandardScaler | LogisticRegression, HoeffdingTreeClassifier) it runs, on the
same SEA events (noise 10%, stationary), a bare loop (``predict_one``, ``Accuracy.update``,
``learn_one``) and ``Learner.learn`` with the default configuration (prequential evaluation,
ADWIN warning+drift detectors, feature drift monitor, recent window, trigger policy), and
once more with the feature drift monitor off (``feature_drift = false``).

The two loops are interleaved in chunks of events, each on its own model, so that both see
the same load from the rest of the machine; the figures are totals over all chunks, best of
``--rounds`` rounds. Events are built before timing and frozen out of the garbage collector's
reach (``gc.freeze``), as a service would not hold them all in memory.

    .venv/bin/python load_tests/core_overhead.py [--events 50000] [--rounds 3] [--against REF]

``--against REF`` adds, interleaved in the same chunks, the ``Learner`` of ``learner.py`` as it
was at git revision ``REF`` (on today's other core modules): a before/after ratio of a change
to the learner measured in one run, on one machine load.

Prints events/s and the ratio learner/bare, and writes load_tests/results/core_overhead.json.
Then, as a floor under the learner's cost, the per-event time of its parts alone on the
same events (best of the rounds): the recent window's push (the retrain window, compact
rows), the error monitor, the two River ADWIN windows inside it
(warning and drift level; River's Rust code, called through its ``_helper``), and the data
monitor, each also as a share of the learner's time per event.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import math
import platform
import sys
import time
from pathlib import Path

from river import drift, metrics
from river.datasets import synth

from stream_learner.core.drift import ErrorDriftMonitor, FeatureDriftMonitor
from stream_learner.core.events import Event
from stream_learner.core.learner import Learner, LearnerConfig
from stream_learner.core.models import ModelSpec, build_model
from stream_learner.core.retrain import RecentWindow, RetrainConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write  # noqa: E402
from revision import module_at  # noqa: E402

MODELS = {
    "scaler+logistic_regression": [
        {"estimator": "preprocessing.StandardScaler"},
        {"estimator": "linear_model.LogisticRegression"},
    ],
    "hoeffding_tree": [{"estimator": "tree.HoeffdingTreeClassifier"}],
}
CHUNK = 1000
RESULTS = Path(__file__).parent / "results" / "core_overhead.json"


def sea_events(n: int, seed: int = 1) -> list[Event]:
    stream = itertools.islice(synth.SEA(seed=seed, noise=0.1), n)
    return [
        Event(f"e{i}", "default", {f"x{k}": v for k, v in x.items()}, y, float(i))
        for i, (x, y) in enumerate(stream)
    ]


def learner_at(ref: str) -> type:
    """The ``Learner`` class of ``stream_learner/core/learner.py`` at git revision ``ref``."""
    return module_at(ref, "stream_learner/core/learner.py").Learner


def one_round(
    spec: ModelSpec, events: list[Event], before: type | None = None
) -> tuple[float, float, float, float]:
    """Seconds spent by the bare loop, the learner, the learner without feature drift, and
    the learner of the ``--against`` revision (0 without one)."""
    model = build_model(spec)
    accuracy = metrics.Accuracy()
    learner = Learner("default", spec)
    lean = Learner("default", spec, config=LearnerConfig(feature_drift=False))
    old = before("default", spec) if before is not None else None
    bare = core = core_lean = core_before = 0.0
    clock = time.perf_counter
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        t0 = clock()
        for e in chunk:
            y_pred = model.predict_one(e.x)
            accuracy.update(e.y, y_pred)
            model.learn_one(e.x, e.y)
        t1 = clock()
        for e in chunk:
            learner.learn(e)
        t2 = clock()
        for e in chunk:
            lean.learn(e)
        t3 = clock()
        if old is not None:
            for e in chunk:
                old.learn(e)
            core_before += clock() - t3
        bare += t1 - t0
        core += t2 - t1
        core_lean += t3 - t2
    return bare, core, core_lean, core_before


def monitor_parts(spec: ModelSpec, events: list[Event], rounds: int) -> dict[str, float]:
    """Seconds per event of the learner's parts alone (its drift monitors and its recent
    window), fed what the learner feeds them."""
    model = build_model(spec)
    losses, rows = [], []
    for e in events:  # the prequential 0/1 losses the error monitor sees, the window's rows
        proba = model.predict_proba_one(e.x)
        y_pred = max(proba, key=proba.get) if proba else None
        losses.append(0.0 if y_pred == e.y else 1.0)
        rows.append((e.x, e.y, y_pred, proba))
        model.learn_one(e.x, e.y)
    xs = [e.x for e in events]
    clock = time.perf_counter
    best = {
        "error_monitor": math.inf,
        "adwin_x2": math.inf,
        "data_monitor": math.inf,
        "window": math.inf,
    }
    for _ in range(rounds):
        t0 = clock()
        update = ErrorDriftMonitor().update
        for i, loss in enumerate(losses):
            update(loss, i)
        t1 = clock()
        warning, strict = drift.ADWIN(delta=0.01)._helper, drift.ADWIN(delta=0.002)._helper
        for loss in losses:
            warning.update(loss)
            strict.update(loss)
        t2 = clock()
        update = FeatureDriftMonitor().update
        for i, x in enumerate(xs):
            update(x, i)
        t3 = clock()
        push = RecentWindow(RetrainConfig().window, "k").push
        for i, (x, y, y_pred, proba) in enumerate(rows):
            push(i, float(i), x, y, y_pred, proba)
        t4 = clock()
        for _i, _x in enumerate(xs):
            pass
        t5 = clock()
        loop = t5 - t4
        spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        for name, spent in zip(best, spans, strict=True):
            best[name] = min(best[name], (spent - loop) / len(events))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", metavar="REF", help="git revision of learner.py to compare")
    args = parser.parse_args()
    before = learner_at(args.against) if args.against else None

    events = sea_events(args.events)
    gc.collect()
    gc.freeze()
    results = {}
    for name, pipeline in MODELS.items():
        spec = ModelSpec.from_dict({"task": "binary", "pipeline": pipeline})
        rounds = [one_round(spec, events, before) for _ in range(args.rounds)]
        bare, core, lean, old = (min(r[i] for r in rounds) for i in range(4))
        n = len(events)
        results[name] = {
            "bare_events_per_s": round(n / bare),
            "learner_events_per_s": round(n / core),
            "ratio": round(bare / core, 3),
            "overhead_us_per_event": round((core - bare) / n * 1e6, 2),
            "no_feature_drift_events_per_s": round(n / lean),
            "no_feature_drift_ratio": round(bare / lean, 3),
        }
        r = results[name]
        if before is not None:
            r["against"] = args.against
            r["before_events_per_s"] = round(n / old)
            r["before_over_now"] = round(old / core, 3)  # > 1: now is faster
            print(
                f"{name:28s} learner at {args.against}: {r['before_events_per_s']:>7}/s; "
                f"now takes {core / old:.3f}x its time per event"
            )
        print(
            f"{name:28s} bare {r['bare_events_per_s']:>7}/s  learner "
            f"{r['learner_events_per_s']:>7}/s  ratio {r['ratio']:.3f} "
            f"(+{r['overhead_us_per_event']:.2f} us/event)  without feature drift "
            f"{r['no_feature_drift_events_per_s']:>7}/s  ratio {r['no_feature_drift_ratio']:.3f}"
        )
        per_event = core / n
        for part, spent in monitor_parts(spec, events, args.rounds).items():
            r[f"{part}_us_per_event"] = round(spent * 1e6, 3)
            r[f"{part}_share"] = round(spent / per_event, 3)
        print(
            f"{'':28s} alone: error monitor {r['error_monitor_us_per_event']:.2f} us/event "
            f"({r['error_monitor_share']:.1%} of the learner's), of which River ADWIN x2 "
            f"{r['adwin_x2_us_per_event']:.2f} ({r['adwin_x2_share']:.1%}); data monitor "
            f"{r['data_monitor_us_per_event']:.2f} ({r['data_monitor_share']:.1%}); the "
            f"recent window's push {r['window_us_per_event']:.2f} ({r['window_share']:.1%})"
        )
    report = {
        "events": args.events,
        "rounds": args.rounds,
        "chunk": CHUNK,
        "stream": "SEA(noise=0.1, seed=1), stationary",
        "machine": platform.machine(),
        "results": results,
    }
    write(RESULTS, report)


if __name__ == "__main__":
    main()
