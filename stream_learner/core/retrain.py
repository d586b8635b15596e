"""Retrains: a candidate model built from recent labelled events, gated by champion/challenger.

A :class:`RetrainJob` is pure data plus one pure method: :meth:`RetrainJob.run` builds the
candidate, scores it and the champion on the same held-out events, and returns a
:class:`RetrainResult`. It touches nothing outside itself, so the caller decides where it
runs: inline (tests, replays) or in a worker process (the job and its result pickle).

Two kinds (see CONCEPTS.md):

- ``stateless`` (cold): ``build_model(spec)`` trained on the training window only. After a
  detected change this is a model of the new concept alone.
- ``stateful`` (warm): a copy of the live model trained further on the training window, i.e.
  the recent events weigh twice. A refresh when nothing is known to be wrong.

Windows, taken from the learner's :class:`RecentWindow` when the job is built:

- *holdout*: the most recent ``holdout`` labelled events;
- *train*: the labelled events before them, back to the change: after a detected change,
  only events that arrived *after the detection* (a detector fires some hundreds of events
  into the new regime, but does not say where it began; events after the detection are
  certainly new, which matters more to a cold model than a few hundred more of them), else
  the whole window. The learner waits until ``min_train`` + ``holdout`` such events exist.

Scoring is like for like. A stateless candidate has never seen the holdout, so it is compared
with the champion's own prequential record on those events (each prediction was made before
the champion learned that event); re-scoring the live champion would grade it on events it
has already learned. A stateful candidate starts from the champion, which has learned the
holdout, so both are re-scored on it: same history, and the only difference is the extra
training. The challenger is promoted when it beats the champion by more than ``margin`` in
the primary metric's direction; a tie keeps the champion. A promoted stateless candidate then
learns the holdout too, so it has seen every example the job had.

What travels to a worker: the examples, the spec and, for a stateful job only, a snapshot of
the live model. What comes back: the scores and, only when promoted, the candidate.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from stream_learner.core.evaluation import PrequentialEvaluator, score
from stream_learner.core.events import Event
from stream_learner.core.models import ModelSpec, build_model, metric_better
from stream_learner.core.policy import KINDS, Decision, config_from_dict
from stream_learner.core.rows import Rows
from stream_learner.errors import ConfigError

__all__ = ["Example", "RecentWindow", "RetrainConfig", "RetrainJob", "RetrainResult"]


class Example(NamedTuple):
    """A labelled event as the learner saw it: its input index and the champion's prequential
    prediction (made before the champion learned it). An example read back from a
    :class:`RecentWindow` has the event's features, label and time; not its id, which the
    window does not keep (nothing reads it)."""

    index: int
    event: Event
    y_pred: Any
    proba: dict | None


_new = tuple.__new__


class RecentWindow(Rows):
    """The most recent labelled examples, oldest first; memory is bounded by ``maxlen``.

    The examples are held as compact rows (:class:`~stream_learner.core.rows.Rows`: a few
    typed numbers per example, not an object graph), and read back as :class:`Example`
    objects equal to those appended, but for the event's id. The learner pushes the fields
    of each example itself (:meth:`Rows.push`), which skips building one.
    """

    def __init__(self, maxlen: int, key: str = "") -> None:
        super().__init__(maxlen)
        self.key = key  # the key of the events given back

    def __setstate__(self, state: dict) -> None:
        if "items" in state:  # pickled before the window was compact: a deque of tuples
            self.__init__(state["maxlen"])
            for item in state["items"]:
                self.append(item)
            return
        super().__setstate__(state)

    def append(self, example: Example | tuple[int, Event, Any, dict | None]) -> None:
        index, event, y_pred, proba = example
        if not self.key:
            self.key = event.key
        self.push(index, event.ts, event.x, event.y, y_pred, proba)

    def resized(self, maxlen: int) -> RecentWindow:
        """A window of another size holding the newest of these examples."""
        window = RecentWindow(maxlen, self.key)
        for row in self:
            window.append(row)
        return window

    def after(self, index: int) -> list[Example]:
        """The examples with an index greater than ``index``, oldest first."""
        key = self.key
        return [
            _new(Example, (a, Event("", key, x, y, t), p, proba))
            for a, t, x, y, p, proba in self.newest(index)
        ]

    def __iter__(self) -> Iterator[Example]:
        key = self.key
        return (
            _new(Example, (a, Event("", key, x, y, t), p, proba))
            for a, t, x, y, p, proba in super().__iter__()
        )


@dataclass(frozen=True)
class RetrainConfig:
    """The ``[retrain]`` section: how much data a retrain uses and how a candidate is judged.

    - ``window``: recent labelled examples kept (the most a retrain can train on).
    - ``holdout``: the most recent examples, on which champion and challenger are scored.
    - ``min_train``: a retrain waits until it has this many training examples.
    - ``margin``: how much better the challenger must score, in the units of the primary
      metric. The default, 0.02, is two points of accuracy: a 200-event holdout is noisy, and
      on the acceptance suite smaller margins promoted models that then did worse. For a
      regression metric (MAE, RMSE) it is in the target's units: set it per model.

    The race (:mod:`stream_learner.core.race`) after a sign of change:

    - ``shadow``: start a fresh candidate at the first performance warning or drift, and let
      retired models (the pool) and change-triggered window candidates race the champion.
      ``false``: change-triggered retrains are judged on their holdout alone, as before.
    - ``pool``: retired models kept per key, so that a concept that comes back is served by
      the model that knows it (0: none).
    - ``race_z`` and ``race_margin``: a candidate is promoted when its lead (mean paired
      loss difference per event: accuracy points / 100 for a classifier, the target's units
      for regression) minus ``race_z`` standard errors is at least ``race_margin``.
    - ``race_min_events``: events raced before a candidate can be promoted;
      ``race_behind_events``: before one (not a shadow) can be given up for being behind;
      ``race_max_events``: a candidate that has not led by then is given up.
    - ``race_serve``: meanwhile, serve the predictions of the candidate with the best
      *recent* lead (its paired difference averaged over about ``race_serve_window``
      events, raced at least half as many), once that lead passes ``race_serve_margin``;
      it serves while the lead stays positive, and the champion serves otherwise. A sound
      lead is still what promotes: serving is on trial and changes no version.
    - ``race_confirm``: a candidate is promoted only while the champion's own loss (over
      about the last 500 events raced) is above its level before the race, over the recent
      window's examples it predicted, by ``race_margin`` and ``race_z`` standard errors of
      the difference: the champion got worse. A race that a passing dip began, or a young
      candidate that beats a champion which never got worse (a Hoeffding tree is at its
      best before its first split on some streams), ends without a new version.
    - ``race_regrown``: a race also starts a *regrown* candidate, the champion with its
      Hoeffding trees' splits kept and every leaf started afresh (see
      :func:`models.regrow`); only for a model with such a tree.
    - ``race_young_grace``: a shadow candidate's Hoeffding trees attempt a split
      every this many examples per leaf (River's default is 200; 0: the spec's) until
      ``race_young_events`` after the candidate started; then the spec's grace period.

    The defaults were chosen on the acceptance suite (``tests/core/test_suite.py``) and the
    core report (``scripts/core_report.py``).
    """

    window: int = 5000
    holdout: int = 200
    min_train: int = 300
    margin: float = 0.02
    shadow: bool = True
    pool: int = 3
    race_z: float = 3.0
    race_margin: float = 0.01
    race_min_events: int = 1000
    race_behind_events: int = 50
    race_max_events: int = 2000
    race_serve: bool = True
    race_serve_window: int = 60
    race_serve_margin: float = 0.02
    race_regrown: bool = True
    race_confirm: bool = True
    race_young_grace: int = 20
    race_young_events: int = 5000

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "retrain") -> RetrainConfig:
        return config_from_dict(cls, d, where)

    def __post_init__(self) -> None:
        if self.holdout < 1 or self.min_train < 1:
            raise ConfigError("retrain: holdout and min_train must be at least 1")
        if self.min_train + self.holdout > self.window:
            raise ConfigError(
                f"retrain.window: {self.window} is smaller than min_train + holdout "
                f"({self.min_train} + {self.holdout}); a retrain could never start"
            )
        if self.race_serve_window < 2 or self.race_young_grace < 0 or self.race_young_events < 0:
            raise ConfigError(
                "retrain: race_serve_window must be at least 2, race_young_grace and "
                f"race_young_events at least 0 (got {self.race_serve_window}, "
                f"{self.race_young_grace} and {self.race_young_events})"
            )
        if self.race_behind_events < 1:
            raise ConfigError(
                f"retrain: race_behind_events must be at least 1 (got {self.race_behind_events})"
            )
        if self.race_min_events < 1 or self.race_max_events < self.race_min_events:
            raise ConfigError(
                "retrain: race_min_events must be at least 1 and race_max_events at least "
                f"race_min_events (got {self.race_min_events} and {self.race_max_events})"
            )


@dataclass(frozen=True)
class RetrainResult:
    """What a job produced. ``candidate`` is ``None`` when it was not promoted (nothing to
    ship back). ``through`` is the index of the last example the candidate has learned: the
    learner trains it on anything newer before it serves. ``duration_s`` is a measurement for
    metrics and logs, never an input to a decision."""

    key: str
    number: int
    kind: str
    decision: Decision
    metric: str
    margin: float
    champion_score: float
    challenger_score: float
    promoted: bool
    candidate: Any | None
    through: int
    n_train: int
    n_holdout: int
    duration_s: float


@dataclass(frozen=True)
class RetrainJob:
    """One retrain, ready to run anywhere. ``base`` is a snapshot of the live model (needed
    for a stateful job only); ``through`` the index of the last example it had learned."""

    key: str
    number: int
    kind: str
    spec: ModelSpec
    base: Any | None
    train: tuple[Example, ...]
    holdout: tuple[Example, ...]
    margin: float
    decision: Decision
    through: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind: {self.kind!r}; choose one of: {', '.join(KINDS)}")
        if self.kind == "stateful" and self.base is None:
            raise ValueError("a stateful retrain needs the live model as its base")
        if not self.holdout:
            raise ValueError("a retrain needs held-out events to judge the candidate")

    @property
    def metric(self) -> str:
        return self.spec.primary_metric

    def run(self) -> RetrainResult:
        """Train the candidate and judge it; the job and its inputs are left untouched."""
        started = time.perf_counter()
        holdout = [ex.event for ex in self.holdout]
        if self.kind == "stateful":
            candidate = copy.deepcopy(self.base)
            champion = score(self.base, holdout, self.metric)
        else:
            candidate = build_model(self.spec)
            record = PrequentialEvaluator(self.spec.task, (self.metric,), window=len(holdout))
            for ex in self.holdout:
                record.update(ex.event.y, ex.y_pred, ex.proba)
            champion = record.primary_value()
        for ex in self.train:
            candidate.learn_one(ex.event.x, ex.event.y)
        challenger = score(candidate, holdout, self.metric)
        promoted = _better(self.metric, challenger, champion, self.margin)
        through = self.through
        if promoted and self.kind == "stateless":
            for event in holdout:  # judged on them, now learn them: they are the newest
                candidate.learn_one(event.x, event.y)
            through = self.holdout[-1].index
        return RetrainResult(
            key=self.key,
            number=self.number,
            kind=self.kind,
            decision=self.decision,
            metric=self.metric,
            margin=self.margin,
            champion_score=champion,
            challenger_score=challenger,
            promoted=promoted,
            candidate=candidate if promoted else None,
            through=through,
            n_train=len(self.train),
            n_holdout=len(holdout),
            duration_s=time.perf_counter() - started,
        )


def _better(metric: str, challenger: float, champion: float, margin: float) -> bool:
    """Whether the challenger wins; a NaN score (nothing could be scored) never does."""
    if metric_better(metric) == "higher":
        return challenger > champion + margin
    return challenger < champion - margin
