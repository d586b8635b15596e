"""The contract every model the factory can build, and every drift detector, must honour
(like River's estimator checks).

Checkpoints pickle the learner and retrain jobs deepcopy or ship models to a worker, so for
every allow-listed estimator: a pickle or deepcopy round-trip must continue exactly where the
original is, two builds from one spec must make bit-identical predictions, and predicting must
not change a trained model (champion/challenger scores live models in place).
"""

from __future__ import annotations

import copy
import itertools
import pickle
import random

import pytest
from river import base
from river.datasets import synth

from stream_learner.core import drift as drift_module
from stream_learner.core.drift import DETECTORS, ErrorDriftMonitor, FeatureDriftMonitor
from stream_learner.core.models import ESTIMATORS, ModelSpec, build_model

N_LEARN = 300
N_AFTER = 100
COLORS = ("red", "green", "blue")


def _stream(task: str) -> list[tuple[dict, object]]:
    """Synthetic rows with string feature names, as decoded JSON events always have."""
    n = N_LEARN + N_AFTER
    if task == "binary":
        gen = synth.SEA(seed=1)
    elif task == "multiclass":
        gen = synth.RandomRBF(seed_model=1, seed_sample=1, n_classes=3, n_features=4)
    else:
        gen = synth.Friedman(seed=1)
    rows = [({f"f{k}": v for k, v in x.items()}, y) for x, y in itertools.islice(gen, n)]
    if task == "binary":
        # A string and a bool feature, so mixed-type pipelines are exercised too.
        for i, (x, _) in enumerate(rows):
            x["color"] = COLORS[i % 3]
            x["flag"] = i % 2 == 0
    return rows


def _last_step_cases() -> list[tuple[str, str]]:
    cases = []
    for name, cls in ESTIMATORS.items():
        if issubclass(cls, base.Regressor):
            cases.append((name, "regression"))
        elif issubclass(cls, base.Classifier):
            cases.append((name, "binary"))
            if cls()._multiclass:
                cases.append((name, "multiclass"))
    return cases


def _spec_for(name: str, task: str) -> ModelSpec:
    # Numbers only reach the scalers; strings reach the one-hot encoder (binary stream only).
    pipeline = [{"estimator": "preprocessing.StandardScaler", "only": "numbers"}]
    if task == "binary":
        pipeline.append({"estimator": "preprocessing.OneHotEncoder", "only": "strings"})
    pipeline.append({"estimator": name})
    return ModelSpec.from_dict({"task": task, "pipeline": pipeline, "seed": 7})


def _transformer_specs() -> list[tuple[str, ModelSpec]]:
    specs = []
    for name, cls in ESTIMATORS.items():
        if not issubclass(cls, base.Classifier | base.Regressor):
            scaler = "preprocessing.StandardScaler" if "OneHot" in name else name
            pipeline = [
                {"estimator": scaler, "only": "numbers"},
                {"estimator": "preprocessing.OneHotEncoder", "only": "strings"},
                {"estimator": "linear_model.LogisticRegression"},
            ]
            specs.append((name, ModelSpec.from_dict({"task": "binary", "pipeline": pipeline})))
    return specs


def _run(model, rows, task: str) -> list:
    """Prequential pass: predict (and predict_proba) each row, then learn it."""
    out = []
    for x, y in rows:
        out.append(model.predict_one(x))
        if task != "regression":
            out.append(model.predict_proba_one(x))
        model.learn_one(x, y)
    return out


def _same(a: list, b: list) -> bool:
    """Bit-identical outputs: float reprs round-trip exactly, and NaN (an untrained
    MinMaxScaler divides by -inf) must match NaN."""
    return repr(a) == repr(b)


def _check_contract(spec: ModelSpec) -> None:
    rows = _stream(spec.task)
    head, tail = rows[:N_LEARN], rows[N_LEARN:]

    model = build_model(spec)
    first = _run(model, head, spec.task)
    assert any(p is not None for p in first), "the model never predicted anything"

    twin = build_model(spec)
    assert _same(_run(twin, head, spec.task), first), "two builds from one spec diverged"

    # score() (champion/challenger) relies on predicting leaving a trained model untouched.
    state = pickle.dumps(model)
    for x, _ in tail:
        model.predict_one(x)
        if spec.task != "regression":
            model.predict_proba_one(x)
    assert pickle.dumps(model) == state, "predicting changed the model's state"

    pickled = pickle.loads(state)
    copied = copy.deepcopy(model)
    expected = _run(model, tail, spec.task)
    assert _same(_run(pickled, tail, spec.task), expected), "pickle round-trip changed predictions"
    assert _same(_run(copied, tail, spec.task), expected), "deepcopy changed predictions"

    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec and again.lineage == spec.lineage


@pytest.mark.parametrize(("name", "task"), _last_step_cases())
def test_last_step_contract(name: str, task: str) -> None:
    _check_contract(_spec_for(name, task))


@pytest.mark.parametrize(
    ("name", "spec"), _transformer_specs(), ids=[n for n, _ in _transformer_specs()]
)
def test_transformer_contract(name: str, spec: ModelSpec) -> None:
    _check_contract(spec)


def test_every_estimator_is_covered() -> None:
    covered = {name for name, _ in _last_step_cases()} | {name for name, _ in _transformer_specs()}
    assert covered == set(ESTIMATORS)


# --------------------------------------------------------------------------- drift detectors
# Every learner carries its monitors into its snapshots and retrain jobs, so they honour the
# same contract: a pickle or deepcopy taken mid-stream goes on exactly like the original.


def _losses(n: int, seed: int) -> list[float]:
    """A 0/1 loss stream whose error rate rises halfway: warnings and drifts happen."""
    rng = random.Random(seed)
    return [float(rng.random() < (0.1 if i < n // 2 else 0.35)) for i in range(n)]


def _features(n: int, seed: int) -> list[dict]:
    """Numeric features whose mean shifts halfway, plus a categorical one that is dropped."""
    rng = random.Random(seed)
    return [
        {"a": rng.gauss(0.0 if i < n // 2 else 1.0, 1.0), "b": rng.random(), "c": "x"}
        for i in range(n)
    ]


def _detector_cases() -> list[tuple[str, object, list, object]]:
    """(name, build, inputs, feed) for every detector the project offers."""
    cases = []
    for detector in DETECTORS:
        cases.append(
            (
                f"error-{detector}",
                lambda d=detector: ErrorDriftMonitor(d),
                _losses(6000, 3),
                lambda m, v, i: m.update(v, i),
            )
        )
    cases.append(
        (
            "feature",
            lambda: FeatureDriftMonitor(block=50, reference=500),
            _features(6000, 4),
            lambda m, v, i: m.update(v, i),
        )
    )
    return cases


def _feed(monitor, feed, inputs, start: int) -> list:
    return [repr(feed(monitor, value, start + i)) for i, value in enumerate(inputs)]


@pytest.mark.parametrize(
    ("name", "build", "inputs", "feed"), _detector_cases(), ids=[c[0] for c in _detector_cases()]
)
def test_detector_contract(name, build, inputs, feed) -> None:
    cut = len(inputs) // 2 + 37  # mid-change and, for the feature monitor, mid-block
    head, tail = inputs[:cut], inputs[cut:]
    monitor = build()
    seen = _feed(monitor, feed, head, 0)
    assert _feed(build(), feed, head, 0) == seen, "two builds diverged"
    state = pickle.dumps(monitor)
    assert pickle.dumps(pickle.loads(state)) == state, "a round-trip changed the state"
    pickled, copied = pickle.loads(state), copy.deepcopy(monitor)
    expected = _feed(monitor, feed, tail, cut)
    assert any(s != "None" and s != "()" for s in seen + expected), "the stream never drifted"
    assert _feed(pickled, feed, tail, cut) == expected, "pickle round-trip changed the signals"
    assert _feed(copied, feed, tail, cut) == expected, "deepcopy changed the signals"


def test_every_detector_is_covered() -> None:
    names = {name for name, *_ in _detector_cases()}
    assert names == {f"error-{d}" for d in DETECTORS} | {"feature"}
    monitors = {
        name
        for name, obj in vars(drift_module).items()
        if isinstance(obj, type) and name.endswith("Monitor") and not name.startswith("_")
    }
    assert monitors == {"ErrorDriftMonitor", "FeatureDriftMonitor"}, "a new monitor: add it"
