"""Prequential (test-then-train) evaluation, and scoring a model on held-out events.

Each labelled event is predicted before the model learns from it; :class:`PrequentialEvaluator`
scores that prediction with River metrics, both since the start (cumulative) and over the
last ``window`` events (rolling). The cumulative figure says how good a model has been; the
rolling one says how good it is now, which is what drift and champion/challenger look at.

As in River's ``evaluate.progressive_val_score``, a missing prediction (an untrained
classifier returns ``None``) updates no metric, while the per-event loss counts it as an
error. Probability metrics (logloss, crossentropy) are updated only when a probability is given.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from river import utils

from stream_learner.core import pickling
from stream_learner.core.events import Event
from stream_learner.core.models import METRICS, loss_fn, make_metric, metric_needs_proba
from stream_learner.errors import ConfigError

__all__ = ["PrequentialEvaluator", "score"]

_EPS = 1e-15  # River's clamp for probabilities
_ONE = 1.0 - _EPS
_log = math.log


def _accuracy(y_true: Any, y: Any, loss: float) -> float:
    return 1.0 - loss


def _abs_error(y_true: Any, y: Any, loss: float) -> float:
    return loss


def _squared_error(y_true: Any, y: Any, loss: float) -> float:
    return loss * loss


def _logloss(y_true: Any, proba: dict, loss: float) -> float:
    # River's clamp, without min() and max() calls: this runs per event with the logloss.
    p = proba.get(True, 0.0)
    if p < _EPS:
        p = _EPS
    elif p > _ONE:
        p = _ONE
    return -_log(p) if y_true else -_log(1.0 - p)


def _crossentropy(y_true: Any, proba: dict, loss: float) -> float:
    # Unlike River's CrossEntropy, a class the model gives no probability costs -log(eps),
    # not 0: a model must not look better for never having seen a class.
    return -math.log(min(max(proba.get(y_true, 0.0), _EPS), 1.0 - _EPS))


# Metrics that are means of a per-event value (rmse: the root of one) are computed here in
# O(1) per event; River's own metric plus utils.Rolling costs several times more, and this is
# the hot path. The tests check both give the same numbers. Accuracy is counted instead
# (:class:`_Accuracy`); ``_accuracy`` stays because snapshots taken before that refer to it.
_MEANS = {
    "mae": _abs_error,
    "rmse": _squared_error,
    "logloss": _logloss,
    "crossentropy": _crossentropy,
}


class _MeanTracker:
    """Mean of a per-event value since the start and over the last ``window`` events.

    The last ``window`` values are a ring of float64 (8 bytes each, not a float object and
    a pointer): a key keeps one per metric. Slots, not a ``__dict__``: an object whose dict
    a pickle has read keeps a slower attribute access for good (``load_tests/pickled_speed.py``),
    and this is updated per event."""

    __slots__ = ("name", "_value", "_root", "_total", "_n", "_ring", "_pos", "_size", "_ring_sum")

    def __init__(self, name: str, window: int) -> None:
        self.name = name
        self._value = _MEANS[name]
        self._root = name == "rmse"
        self._total = 0.0
        self._n = 0
        self._ring = array("d")  # the last `window` values; once full, _pos is the oldest
        self._pos = 0
        self._size = window
        self._ring_sum = 0.0

    def __getstate__(self) -> tuple[None, dict]:
        return None, {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: tuple[None, dict] | dict) -> None:
        # A dict: pickled before the slots, with a count of updates since the last exact sum.
        slots = dict(state[1] if isinstance(state, tuple) else state)
        slots.pop("_since_resum", None)
        ring = slots["_ring"]
        if isinstance(ring, deque):  # pickled when the ring was a deque, oldest first
            slots.update(_ring=array("d", ring), _pos=0, _size=ring.maxlen)
        pickling.set_attributes(self, slots)

    def update(self, y_true: Any, y: Any, loss: float) -> None:
        v = self._value(y_true, y, loss)
        self._total += v
        self._n = n = self._n + 1
        ring = self._ring
        if len(ring) == self._size:
            pos = self._pos
            self._ring_sum = self._ring_sum - ring[pos] + v
            ring[pos] = v
            self._pos = pos + 1 if pos + 1 < self._size else 0
            if n % self._size == 0:  # once a window, rounding errors go (fsum is exact)
                self._ring_sum = math.fsum(ring)
        else:
            ring.append(v)
            self._ring_sum += v

    def get(self, rolling: bool, n: int = 0) -> float:
        mean = self._ring_sum / len(self._ring) if rolling else self._total / self._n
        return math.sqrt(max(mean, 0.0)) if self._root else mean


class _Accuracy:
    """Accuracy from counts of wrong predictions, since the start and over the last ``window``.

    ``(n - wrong) / n`` is the same float as the mean of 1.0/0.0 values (a float sums ones
    exactly, and equal integer quotients are equal floats). Right predictions are the common
    case, so counting the wrong ones leaves most events with no arithmetic at all (an int
    past 256 is a new object per increment). The evaluator updates it inline and passes its
    count of scored predictions to :meth:`get`. The last ``window`` outcomes are a ring of
    bytes (1 if wrong), one byte each."""

    __slots__ = ("name", "wrong", "ring", "recent", "pos", "size")

    def __init__(self, name: str, window: int) -> None:
        self.name = name
        self.wrong = 0  # wrong predictions since the start
        self.ring = bytearray()  # the last `window`; once full, `pos` is the oldest
        self.pos = 0
        self.size = window
        self.recent = 0  # wrong predictions in the ring

    def __getstate__(self) -> tuple[None, dict]:
        return None, {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: tuple[None, dict]) -> None:
        slots = state[1]
        ring = slots["ring"]
        if isinstance(ring, deque):  # pickled when the ring was a deque of bools, oldest first
            slots.update(ring=bytearray(ring), pos=0, size=ring.maxlen)
        pickling.set_attributes(self, slots)

    def update(self, y_true: Any, y: Any, loss: float) -> None:
        wrong = loss != 0.0
        ring = self.ring
        if len(ring) == self.size:
            pos = self.pos
            if ring[pos]:
                self.recent -= 1
            ring[pos] = wrong
            self.pos = pos + 1 if pos + 1 < self.size else 0
        else:
            ring.append(wrong)
        if wrong:
            self.wrong += 1
            self.recent += 1

    def get(self, rolling: bool, n: int) -> float:
        if rolling:
            size = len(self.ring)
            return (size - self.recent) / size
        return (n - self.wrong) / n


def _tracker(name: str, window: int) -> _Accuracy | _MeanTracker | _RiverTracker:
    if name == "accuracy":
        return _Accuracy(name, window)
    return (_MeanTracker if name in _MEANS else _RiverTracker)(name, window)


class _RiverTracker:
    """Any other River metric, cumulative and wrapped in ``utils.Rolling``."""

    def __init__(self, name: str, window: int) -> None:
        self.name = name
        self._cumulative = make_metric(name)
        self._rolling = utils.Rolling(type(self._cumulative), window_size=window)

    def update(self, y_true: Any, y: Any, loss: float) -> None:
        self._cumulative.update(y_true, y)
        self._rolling.update(y_true, y)

    def get(self, rolling: bool, n: int = 0) -> float:
        return (self._rolling if rolling else self._cumulative).get()


class PrequentialEvaluator:
    """Cumulative and rolling metrics over a stream of (label, prediction) pairs.

    Parameters
    ----------
    task
        ``binary``, ``multiclass`` or ``regression``.
    metrics
        Metric names allowed for the task; the first is the primary metric.
    window
        How many recent scored events the rolling metrics cover.

    Examples
    --------
    >>> ev = PrequentialEvaluator("binary", ["accuracy", "logloss"], window=2)
    >>> ev.update(True, True, {True: 0.8, False: 0.2})
    0.0
    >>> ev.update(False, True, {True: 0.6, False: 0.4})
    1.0
    >>> ev.update(False, False)
    0.0
    >>> {k: round(v, 4) for k, v in ev.values().items()}
    {'accuracy': 0.6667, 'accuracy_rolling': 0.5, 'logloss': 0.5697, 'logloss_rolling': 0.5697}
    >>> ev.primary, ev.primary_value(), ev.n
    ('accuracy', 0.6666666666666666, 3)
    """

    def __init__(self, task: str, metrics: Sequence[str], window: int = 1000) -> None:
        if task not in METRICS:
            raise ConfigError(f"task: unknown task {task!r}; choose one of: {', '.join(METRICS)}")
        if not metrics:
            raise ConfigError("metrics: at least one metric is needed")
        for name in metrics:
            if name not in METRICS[task]:
                raise ConfigError(
                    f"metrics: {name!r} is not a metric for task {task!r}; "
                    f"choose one of: {', '.join(METRICS[task])}"
                )
        if window < 1:
            raise ConfigError(f"window: must be at least 1, got {window}")
        self.task = task
        self.metrics = tuple(metrics)
        self.window = window
        self.n = 0  # labelled events seen
        self._unscored = 0  # ... of which had no prediction
        self.n_proba = 0  # ... of which had a usable probability
        self._regression = task == "regression"
        self._tracked: dict[str, _Accuracy | _MeanTracker | _RiverTracker] = {
            name: _tracker(name, window) for name in self.metrics
        }
        self._accuracy = self._tracked.get("accuracy")
        self._on_label = [
            t
            for t in self._tracked.values()
            if not metric_needs_proba(t.name) and t is not self._accuracy
        ]
        self._on_proba = [t for t in self._tracked.values() if metric_needs_proba(t.name)]

    def __setstate__(self, state: dict) -> None:
        # A snapshot taken before accuracy was counted: its accuracy tracker is a mean, which
        # the loop over ``_on_label`` still updates.
        state.setdefault("_regression", state["task"] == "regression")
        state.setdefault("_accuracy", None)
        if "n_scored" in state:
            state["_unscored"] = state["n"] - state.pop("n_scored")
        pickling.set_attributes(self, state)  # interns the names, as pickle's default does

    @property
    def n_scored(self) -> int:
        """Labelled events that had a prediction."""
        return self.n - self._unscored

    @property
    def primary(self) -> str:
        return self.metrics[0]

    def update(self, y_true: Any, y_pred: Any, y_proba: dict | None = None) -> float:
        """Score one prediction; returns its loss (0/1 error, or absolute error)."""
        # The hot path: the loss (models.zero_one_loss / absolute_error) and accuracy are
        # computed inline; a call per event costs more than the arithmetic.
        self.n += 1
        if self._regression:
            loss = abs(y_true - (y_pred or 0.0))
            wrong = True  # not used
        elif y_pred == y_true:
            loss, wrong = 0.0, False
        else:
            loss, wrong = 1.0, True
        if y_pred is None:
            self._unscored += 1
        else:
            accuracy = self._accuracy
            if accuracy is not None:  # accuracy.update(y_true, y_pred, loss)
                ring = accuracy.ring
                if len(ring) == accuracy.size:
                    pos = accuracy.pos
                    if ring[pos]:
                        accuracy.recent -= 1
                    ring[pos] = wrong
                    accuracy.pos = pos + 1 if pos + 1 < accuracy.size else 0
                else:
                    ring.append(wrong)
                if wrong:
                    accuracy.wrong += 1
                    accuracy.recent += 1
            for tracker in self._on_label:
                tracker.update(y_true, y_pred, loss)
        # sum() is NaN if any probability is: an untrained MinMaxScaler yields NaN probabilities,
        # and one NaN would poison a cumulative logloss for good.
        if self._on_proba and y_proba and not math.isnan(sum(y_proba.values())):
            self.n_proba += 1
            for tracker in self._on_proba:
                tracker.update(y_true, y_proba, loss)
        return loss

    def _get(self, name: str, rolling: bool) -> float:
        tracker = self._tracked[name]
        scored = self.n_proba if tracker in self._on_proba else self.n_scored
        return tracker.get(rolling, scored) if scored else math.nan

    def values(self) -> dict[str, float]:
        """``{"accuracy": ..., "accuracy_rolling": ..., ...}``; NaN before the first score."""
        out = {}
        for name in self.metrics:
            out[name] = self._get(name, rolling=False)
            out[f"{name}_rolling"] = self._get(name, rolling=True)
        return out

    def primary_value(self, rolling: bool = False) -> float:
        """The primary metric, cumulative or rolling; NaN before the first score."""
        return self._get(self.primary, rolling)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in self.values().items())
        return f"PrequentialEvaluator(n={self.n}, {shown})"


def score(model: Any, events: Iterable[Event | tuple[dict, Any]], metric: str) -> float:
    """Evaluate ``model`` on held-out labelled events without training it.

    Used by champion/challenger; the value is the one :class:`PrequentialEvaluator` would
    report for ``metric`` on the same predictions. The model is not copied: predicting does not
    change the state of any model the factory builds once it has learnt something (the
    contract test checks this for every allow-listed estimator; River's pipelines only learn
    while predicting inside ``compose.learn_during_predict()``).

    Events may be :class:`~stream_learner.core.events.Event` objects (unlabelled ones are
    skipped) or ``(x, y)`` pairs. Returns NaN when nothing could be scored.
    """
    make_metric(metric)  # an unknown name fails here, with the choices
    task = "regression" if metric in METRICS["regression"] else "binary"
    loss = loss_fn(task)
    tracker = _tracker(metric, 1)
    needs_proba = metric_needs_proba(metric)
    n = 0
    for item in events:
        if isinstance(item, Event):
            x, y = item.x, item.y
            if y is None:
                continue
        else:
            x, y = item
        if needs_proba:
            proba = model.predict_proba_one(x)
            if not proba or math.isnan(sum(proba.values())):
                continue
            tracker.update(y, proba, 0.0)
        else:
            y_pred = model.predict_one(x)
            if y_pred is None:
                continue
            tracker.update(y, y_pred, loss(y, y_pred))
        n += 1
    return tracker.get(False, n) if n else math.nan
