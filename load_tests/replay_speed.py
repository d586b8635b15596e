"""Replay speed against the bare River loop, on the same events and the same model.

The replay (``stream-learner replay``'s engine, :func:`stream_learner.replay.replay`) runs the
whole learning core per event: prequential evaluation, the error and feature drift
detectors, the trigger policy, the recent window, the retrain bookkeeping, and the report's
time series. The bare loop is what no continual learner can beat: ``predict_proba_one``,
``Accuracy.update``, ``learn_one``. Both run over the same decoded history (a drifting SEA
stream, every event labelled), with the model of ``examples/config.toml``; they alternate for
``--rounds`` rounds so both see the same load from the rest of the machine, and the best
round of each is kept.

    .venv/bin/python load_tests/replay_speed.py [--events 30000] [--rounds 3]

Prints events/s and the ratio replay/bare for the ``never`` policy (no retrain: the replay's
own overhead), once with the config's metrics and once with accuracy alone (what the bare
loop scores), and for ``performance`` (retrains run inline, so their time counts too). The
learning core alone (``Learner.learn`` per event, policy ``never``: the work the replay must
do) is timed in the same rounds, and the replay is given against it too: what the replay
adds on top of learning. Then the same with the config's model replaced by a Hoeffding
tree (``--models`` picks); writes load_tests/results/replay_speed.json. Every loop runs
with the garbage collector's thresholds the replay sets for itself (``core/collector.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import orjson
from river import metrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_learner.config import load_config  # noqa: E402
from stream_learner.core.collector import learning_thresholds  # noqa: E402
from stream_learner.core.events import Event, decode  # noqa: E402
from stream_learner.core.learner import Learner, LearnerConfig  # noqa: E402
from stream_learner.core.models import ModelSpec, build_model  # noqa: E402
from stream_learner.core.retrain import RetrainConfig  # noqa: E402
from stream_learner.replay import replay, resolve_policy  # noqa: E402
from stream_learner.synth import demo_messages  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "replay_speed.json"


def bare_loop(spec: ModelSpec, events: list[Event]) -> float:
    """Seconds for predict, score, learn over ``events`` with a fresh model."""
    model, accuracy = build_model(spec), metrics.Accuracy()
    predict, learn, update = model.predict_proba_one, model.learn_one, accuracy.update
    start = time.perf_counter()
    for e in events:
        proba = predict(e.x)
        update(e.y, max(proba, key=proba.get) if proba else None)
        learn(e.x, e.y)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"))
    parser.add_argument(
        "--models", nargs="+", choices=("config", "tree"), default=["config", "tree"]
    )
    args = parser.parse_args()

    base = load_config(args.config)
    history = [
        decode(orjson.dumps(m.value))
        for m in demo_messages(args.events, change_at=args.events // 2, t0=1_700_000_000.0)
    ]
    results = {}
    for which in args.models:
        config = base
        if which == "tree":
            model = {**base.model, "pipeline": [{"estimator": "tree.HoeffdingTreeClassifier"}]}
            config = dataclasses.replace(base, model=model)
        with learning_thresholds():  # the replay's own; the floors get them too
            results[which] = measure(config, history, args.rounds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


def core_loop(config, history: list[Event]) -> float:
    """Seconds for the learning core alone over ``history``: ``Learner.learn`` per event
    with the config's learner settings and policy ``never``, the work a replay must do."""
    spec = ModelSpec.from_dict(config.model, where="model")
    settings = LearnerConfig.from_dict(config.learner)
    policy = resolve_policy("never").policy
    learners: dict[str, Learner] = {}
    start = time.perf_counter()
    for e in history:
        learner = learners.get(e.key)
        if learner is None:
            learner = learners[e.key] = Learner(e.key, spec, config=settings, policy=policy)
        learner.learn(e)
    return time.perf_counter() - start


def measure(config, history: list, rounds: int) -> dict:
    """Replay against the bare loop for ``config``'s model; prints and returns the figures."""
    spec = ModelSpec.from_dict(config.model, where="model")
    retrain = RetrainConfig.from_dict(config.retrain)
    # Like for like: the bare loop scores one metric, so does this replay; the config's own
    # metric list (accuracy and log loss in the example) is measured too.
    one_metric = dataclasses.replace(config, model={**config.model, "metrics": ["accuracy"]})
    runs = {
        "never": (config, "never"),
        "never, accuracy only": (one_metric, "never"),
        "performance": (config, "performance"),
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        timings = {
            "bare": bare_loop(spec, history),
            "core": core_loop(config, history),
            "core, accuracy only": core_loop(one_metric, history),
        }
        for name, (cfg, policy) in runs.items():
            (report,) = replay(history, cfg, [resolve_policy(policy, retrain)])
            timings[name] = report.inputs / report.events_per_s
        for name, seconds in timings.items():
            best[name] = min(best.get(name, float("inf")), seconds)
    rates = {name: len(history) / seconds for name, seconds in best.items()}
    ratios = {name: round(rates[name] / rates["bare"], 3) for name in runs}
    # What the replay adds on top of the learning core it runs (same metrics, policy never).
    cores = {"never": "core", "never, accuracy only": "core, accuracy only"}
    over_core = {name: round(rates[name] / rates[core], 3) for name, core in cores.items()}
    result = {
        "events": len(history),
        "rounds": rounds,
        "model": [step["estimator"] for step in config.model["pipeline"]],
        "metrics": config.model.get("metrics"),
        "events_per_s": {k: round(v) for k, v in rates.items()},
        "replay_over_bare": ratios,
        "core_over_bare": {
            name: round(rates[name] / rates["bare"], 3) for name in ("core", "core, accuracy only")
        },
        "replay_over_core": over_core,
        "python": platform.python_version(),
    }
    print(" | ".join(step["estimator"] for step in config.model["pipeline"]))
    print(f"  {'bare River loop':<30} {rates['bare']:>10,.0f} events/s")
    for name in ("core", "core, accuracy only"):
        ratio = rates[name] / rates["bare"]
        print(f"  {'learning ' + name:<30} {rates[name]:>10,.0f} events/s  {ratio:.3f}x")
    for name in runs:
        note = " (retrains inline)" if name == "performance" else ""
        if name in over_core:
            note = f"  ({over_core[name]:.3f}x the core alone)"
        print(
            f"  {'replay, ' + name:<30} {rates[name]:>10,.0f} events/s  {ratios[name]:.3f}x{note}"
        )
    return result


if __name__ == "__main__":
    main()
