from __future__ import annotations

import copy
import doctest
import itertools
import math
import pickle
import random

import pytest
from river import utils
from river.datasets import synth

from stream_learner.core import evaluation
from stream_learner.core.evaluation import PrequentialEvaluator, score
from stream_learner.core.events import Event
from stream_learner.core.models import METRICS, ModelSpec, build_model, make_metric
from stream_learner.errors import ConfigError


def test_cumulative_vs_rolling_accuracy_exact() -> None:
    ev = PrequentialEvaluator("binary", ["accuracy"], window=3)
    outcomes = [True, False, True, True, False, False]  # prediction right?
    losses = [ev.update(True, right) for right in outcomes]  # y_true is always True
    assert losses == [0.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert ev.values() == {"accuracy": 0.5, "accuracy_rolling": 1 / 3}
    assert ev.primary == "accuracy"
    assert ev.primary_value() == 0.5
    assert ev.primary_value(rolling=True) == 1 / 3
    assert ev.n == ev.n_scored == 6


def test_regression_metrics_exact() -> None:
    ev = PrequentialEvaluator("regression", ["mae", "rmse", "r2"], window=2)
    pairs = [(3.0, 2.0), (1.0, 1.0), (2.0, 4.0), (5.0, 5.0)]  # errors 1, 0, 2, 0
    assert [ev.update(y, p) for y, p in pairs] == [1.0, 0.0, 2.0, 0.0]
    values = ev.values()
    assert values["mae"] == 0.75
    assert values["mae_rolling"] == 1.0  # last two: |2-4|, |5-5|
    assert values["rmse"] == math.sqrt(5 / 4)
    assert values["rmse_rolling"] == math.sqrt(2.0)
    # r2 = 1 - SSres/SStot with mean(y) = 2.75: SStot = 8.75, SSres = 5
    assert values["r2"] == pytest.approx(1 - 5 / 8.75, abs=1e-12)
    # rolling over (2, 4), (5, 5): mean(y) = 3.5, SStot = 4.5, SSres = 4
    assert values["r2_rolling"] == pytest.approx(1 - 4 / 4.5, abs=1e-12)
    assert ev.primary_value() == 0.75


def test_logloss_uses_probabilities_only_when_given() -> None:
    ev = PrequentialEvaluator("binary", ["logloss", "accuracy"], window=2)
    ev.update(True, True, {True: 0.8, False: 0.2})
    ev.update(False, False)  # no probability: accuracy only
    ev.update(False, True, {True: 0.6, False: 0.4})
    ev.update(True, True, {False: 0.5, True: 0.5})
    assert (ev.n, ev.n_scored, ev.n_proba) == (4, 4, 3)
    values = ev.values()
    assert values["logloss"] == pytest.approx(-(math.log(0.8) + math.log(0.4) + math.log(0.5)) / 3)
    assert values["logloss_rolling"] == pytest.approx(-(math.log(0.4) + math.log(0.5)) / 2)
    assert values["accuracy"] == 0.75 and values["accuracy_rolling"] == 0.5
    assert ev.primary == "logloss"
    assert list(values) == ["logloss", "logloss_rolling", "accuracy", "accuracy_rolling"]


def test_zero_one_labels_score_like_bools() -> None:
    ev = PrequentialEvaluator("binary", ["accuracy", "logloss", "f1"])
    ev.update(1, True, {False: 0.1, True: 0.9})
    ev.update(0, False, {0: 0.7, 1: 0.3})  # a model trained on 0/1 labels
    assert ev.values()["accuracy"] == 1.0
    assert ev.values()["f1"] == 1.0
    assert ev.values()["logloss"] == pytest.approx(-(math.log(0.9) + math.log(0.7)) / 2)


def test_crossentropy_charges_for_an_unseen_class() -> None:
    ev = PrequentialEvaluator("multiclass", ["crossentropy"])
    ev.update("c", "a", {"a": 0.6, "b": 0.4})
    assert ev.values()["crossentropy"] == pytest.approx(-math.log(1e-15))


def test_missing_prediction_and_nan_probabilities() -> None:
    ev = PrequentialEvaluator("binary", ["accuracy", "logloss"])
    assert all(math.isnan(v) for v in ev.values().values())
    assert math.isnan(ev.primary_value())
    assert ev.update(True, None, {}) == 1.0  # an untrained model: an error, but not scored
    assert ev.update(True, False, {True: math.nan, False: math.nan}) == 1.0
    assert (ev.n, ev.n_scored, ev.n_proba) == (2, 1, 0)
    assert ev.values()["accuracy"] == 0.0
    assert math.isnan(ev.values()["logloss"]) and math.isnan(ev.values()["logloss_rolling"])


def _random_updates(task: str, n: int, rng: random.Random) -> list[tuple]:
    out = []
    for _ in range(n):
        if task == "regression":
            out.append((rng.gauss(0, 3), rng.gauss(0, 3), None))
        elif task == "binary":
            p = rng.random()
            out.append((rng.random() < 0.6, p > 0.5, {True: p, False: 1 - p}))
        else:
            w = [rng.random() + 0.01 for _ in range(3)]
            proba = {c: wi / sum(w) for c, wi in zip("abc", w, strict=True)}
            out.append((rng.choice("abc"), max(proba, key=proba.get), proba))
    return out


@pytest.mark.parametrize("task", list(METRICS))
def test_same_numbers_as_river_metrics(task: str) -> None:
    """The fast trackers must agree with River's metrics and utils.Rolling."""
    names = METRICS[task]
    window = 50
    ev = PrequentialEvaluator(task, names, window=window)
    river_metrics = {name: make_metric(name) for name in names}
    rolling = {name: utils.Rolling(type(make_metric(name)), window_size=window) for name in names}
    for y, y_pred, proba in _random_updates(task, 500, random.Random(3)):
        ev.update(y, y_pred, proba)
        for name in names:
            arg = proba if ev._tracked[name] in ev._on_proba else y_pred
            river_metrics[name].update(y, arg)
            rolling[name].update(y, arg)
    values = ev.values()
    for name in names:
        assert values[name] == pytest.approx(river_metrics[name].get(), rel=1e-9), name
        assert values[f"{name}_rolling"] == pytest.approx(rolling[name].get(), rel=1e-9), name


@pytest.mark.parametrize(("task", "window"), [("binary", 1), ("binary", 37), ("multiclass", 200)])
def test_counted_accuracy_is_exactly_rivers(task: str, window: int) -> None:
    """Accuracy is counted, not averaged: the values must be River's to the last bit."""
    rng = random.Random(window)
    ev = PrequentialEvaluator(task, ["accuracy"], window=window)
    cumulative = make_metric("accuracy")
    rolling = utils.Rolling(type(cumulative), window_size=window)
    for i, (y, y_pred, _) in enumerate(_random_updates(task, 3000, rng)):
        if i == 0 or rng.random() < 0.05:
            y_pred = None  # an untrained model: not scored, as in River's evaluation
        assert ev.update(y, y_pred) == (0.0 if y_pred == y else 1.0)
        if y_pred is not None:
            cumulative.update(y, y_pred)
            rolling.update(y, y_pred)
        if ev.n_scored and (i % 10 == 0 or i > 2990):
            expected = {"accuracy": cumulative.get(), "accuracy_rolling": rolling.get()}
            assert ev.values() == expected
    assert ev.n == 3000 and 0 < ev.n_scored < 3000


def test_an_evaluator_pickled_before_accuracy_was_counted_restores() -> None:
    """Such a snapshot holds accuracy as a mean tracker and ``n_scored`` as a field."""
    updates = _random_updates("binary", 400, random.Random(8))
    ev = PrequentialEvaluator("binary", ["accuracy", "logloss"], window=50)
    for u in updates[:300]:
        ev.update(*u)
    mean = evaluation._MeanTracker("mae", 50)  # rebuilt as the accuracy tracker it was
    mean.name, mean._value = "accuracy", evaluation._accuracy
    for y, y_pred, _ in updates[:300]:
        mean.update(y, y_pred, 0.0 if y_pred == y else 1.0)
    state = dict(vars(ev))
    state["_tracked"] = {**ev._tracked, "accuracy": mean}
    state["_on_label"] = [mean]
    state["n_scored"] = ev.n_scored
    for name in ("_unscored", "_accuracy", "_regression"):
        del state[name]
    old = PrequentialEvaluator.__new__(PrequentialEvaluator)
    old.__setstate__(state)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.values() == ev.values() and restored.n_scored == ev.n_scored == 300
    for u in updates[300:]:
        assert restored.update(*u) == ev.update(*u)
    assert restored.values() == ev.values()


def test_rolling_sum_does_not_drift() -> None:
    rng = random.Random(5)
    ev = PrequentialEvaluator("regression", ["mae"], window=100)
    errors = []
    for _ in range(20_000):
        y, p = rng.uniform(-1e6, 1e6), rng.uniform(-1e-3, 1e-3)
        ev.update(y, p)
        errors.append(abs(y - p))
    assert ev.values()["mae_rolling"] == pytest.approx(math.fsum(errors[-100:]) / 100, rel=1e-12)


def test_picklable_mid_stream() -> None:
    updates = _random_updates("binary", 300, random.Random(7))
    ev = PrequentialEvaluator("binary", ["accuracy", "f1", "logloss"], window=40)
    for u in updates[:200]:
        ev.update(*u)
    clones = [pickle.loads(pickle.dumps(ev)), copy.deepcopy(ev)]
    for u in updates[200:]:
        ev.update(*u)
    for clone in clones:
        for u in updates[200:]:
            clone.update(*u)
        assert clone.values() == ev.values() and clone.n == ev.n == 300


def test_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="'mae' is not a metric for task 'binary'; choose one"):
        PrequentialEvaluator("binary", ["mae"])
    with pytest.raises(ConfigError, match="unknown task 'ranking'"):
        PrequentialEvaluator("ranking", ["accuracy"])
    with pytest.raises(ConfigError, match="at least one metric"):
        PrequentialEvaluator("binary", [])
    with pytest.raises(ConfigError, match="window"):
        PrequentialEvaluator("binary", ["accuracy"], window=0)


# -- score ---------------------------------------------------------------------------------


def _trained_model(n: int = 1000):
    spec = ModelSpec.from_dict(
        {
            "task": "binary",
            "pipeline": [
                {"estimator": "preprocessing.StandardScaler"},
                {"estimator": "linear_model.LogisticRegression"},
            ],
        }
    )
    model = build_model(spec)
    rows = [({f"f{k}": v for k, v in x.items()}, y) for x, y in synth.SEA(seed=2).take(n + 300)]
    for x, y in rows[:n]:
        model.learn_one(x, y)
    return model, rows[n:]


@pytest.mark.parametrize("metric", ["accuracy", "f1", "logloss"])
def test_score_matches_the_evaluator_and_does_not_train(metric: str) -> None:
    model, held_out = _trained_model()
    before = pickle.dumps(model)
    value = score(model, held_out, metric)
    assert pickle.dumps(model) == before
    ev = PrequentialEvaluator("binary", [metric])
    for x, y in held_out:
        ev.update(y, model.predict_one(x), model.predict_proba_one(x))
    assert value == ev.primary_value()
    assert 0.0 < value < 1.0


def test_score_accepts_events_and_skips_unlabelled() -> None:
    model, held_out = _trained_model()
    events = [Event(f"e{i}", "default", x, y) for i, (x, y) in enumerate(held_out)]
    unlabelled = [Event(f"u{i}", "default", x) for i, (x, _) in enumerate(held_out)]
    expected = score(model, held_out, "accuracy")
    assert score(model, itertools.chain(unlabelled, events), "accuracy") == expected
    assert math.isnan(score(model, unlabelled, "accuracy"))
    assert math.isnan(score(model, [], "logloss"))


def test_score_regression_and_unknown_metric() -> None:
    class Constant:
        def predict_one(self, x: dict) -> float:
            return 1.0

    assert score(Constant(), [({}, 3.0), ({}, 0.0)], "mae") == 1.5
    assert score(Constant(), [({}, 3.0), ({}, 1.0)], "rmse") == math.sqrt(2.0)
    with pytest.raises(ConfigError, match="unknown metric 'auc'"):
        score(Constant(), [], "auc")


def test_doctests() -> None:
    result = doctest.testmod(evaluation, raise_on_error=False)
    assert result.attempted >= 5 and result.failed == 0


def test_rolling_rings_pickled_as_deques_restore_and_go_on_identically():
    """Snapshots written when the rolling rings were deques of Python objects still load."""
    from collections import deque

    from stream_learner.core.evaluation import _Accuracy, _MeanTracker

    rng = random.Random(5)
    stream = [(rng.random() < 0.5, rng.random()) for _ in range(40)]

    def feed(trackers, items):
        for y, p in items:
            proba = {False: 1 - p, True: p}
            loss = 0.0 if (p >= 0.5) == y else 1.0
            for t in trackers:
                t.update(y, proba, loss)

    acc, mean = _Accuracy("accuracy", 7), _MeanTracker("logloss", 7)
    feed([acc, mean], stream[:17])
    oldest_first = acc.ring[acc.pos :] + acc.ring[: acc.pos]
    acc_old = _Accuracy.__new__(_Accuracy)
    acc_old.__setstate__(
        (None, {"name": "accuracy", "wrong": acc.wrong, "recent": acc.recent,
                "ring": deque(map(bool, oldest_first), maxlen=7)})
    )  # fmt: skip
    values = list(mean._ring[mean._pos :]) + list(mean._ring[: mean._pos])
    _, state = mean.__getstate__()
    state = {k: v for k, v in state.items() if k not in ("_pos", "_size")}
    mean_old = _MeanTracker.__new__(_MeanTracker)  # a dict, as pickled before the slots
    mean_old.__setstate__({**state, "_ring": deque(values, maxlen=7), "_since_resum": 3})
    feed([acc, mean, acc_old, mean_old], stream[17:])
    for rolling in (True, False):
        assert acc_old.get(rolling, 40) == acc.get(rolling, 40)
        assert mean_old.get(rolling) == mean.get(rolling)
