"""One key's continual learner: predict, score, watch for drift, decide, learn.

:class:`Learner` ties the core together for one model key. A labelled event goes through
test-then-train: predict, score the prediction (:class:`PrequentialEvaluator`), feed the loss
to the error detector and the features to the data detector, let the :class:`TriggerPolicy`
decide, then learn. An unlabelled event is predicted and remembered, so that its label,
arriving later, is scored against the prediction that was served and learned with the
original features.

Retrains are decided here but run elsewhere: when a retrain is due and enough examples are
available, the :class:`Outcome` carries a :class:`RetrainJob`; the caller runs it (inline,
or in a worker process) and hands the result to :meth:`Learner.apply`. Until then the retrain
is *in flight*: the learner keeps learning, and the policy starts no other retrain. Examples
learned meanwhile are not lost: they are in the recent window, and a promoted candidate is
trained on every example newer than its own before it starts serving.

Everything is deterministic: the same inputs in the same order give the same predictions,
decisions and model state (one caveat: River's Gaussian estimators, in the leaves of its
trees, each hold an unseeded random generator that they use only to draw samples, never to
learn or predict; two such trees behave identically but do not pickle to the same bytes).
Time is event time (``ts``, else the input index); the only clock read anywhere is a
retrain's duration, which is reported, never decided on.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from stream_learner.core import pickling
from stream_learner.core.drift import DETECTORS, DriftSignal, ErrorDriftMonitor, FeatureDriftMonitor
from stream_learner.core.evaluation import PrequentialEvaluator
from stream_learner.core.events import Event, Label, check_label
from stream_learner.core.labels import LabelJoiner
from stream_learner.core.models import (
    ModelSpec,
    build_model,
    loss_fn,
    quicken,
    regrow,
    settle,
)
from stream_learner.core.policy import Decision, PolicyConfig, TriggerPolicy, config_from_dict
from stream_learner.core.race import Candidate, Race, squared_error
from stream_learner.core.retrain import (
    RecentWindow,
    RetrainConfig,
    RetrainJob,
    RetrainResult,
)
from stream_learner.errors import ConfigError, DecodeError

__all__ = ["Learner", "LearnerConfig", "Outcome"]

#: Triggers that mean "something changed": their retrains train on events after the decision.
CHANGE_TRIGGERS = ("performance", "data_drift")


@dataclass(frozen=True)
class LearnerConfig:
    """The ``[learner]`` section: evaluation window, detectors and the decision log.

    ``detector_params`` go to :class:`ErrorDriftMonitor` (e.g. ``{delta = 0.001}`` for
    ADWIN); the ``feature_*`` keys configure :class:`FeatureDriftMonitor`.
    """

    eval_window: int = 1000
    detector: str = "adwin"
    detector_params: tuple[tuple[str, float], ...] = ()
    feature_drift: bool = True
    feature_block: int = 100
    feature_reference: int = 1000
    feature_threshold: float = 15.0
    max_features: int = 50
    max_decisions: int = 1000
    max_feature_names: int = 10_000

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "learner") -> LearnerConfig:
        """Validate a ``[learner]`` table; an unknown key or a bad value names the key."""
        d = dict(d) if isinstance(d, Mapping) else d
        params = d.pop("detector_params", {}) if isinstance(d, dict) else {}
        if not isinstance(params, Mapping):
            raise ConfigError(f"{where}.detector_params: expected a table of detector parameters")
        config = config_from_dict(cls, d, where)
        return dataclasses.replace(config, detector_params=tuple(sorted(params.items())))

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(
                f"learner.detector: {self.detector!r}; choose one of: {', '.join(DETECTORS)}"
            )
        for name in (
            "eval_window",
            "feature_block",
            "feature_reference",
            "max_features",
            "max_decisions",
            "max_feature_names",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"learner.{name}: {getattr(self, name)!r}; expected an integer >= 1"
                )
        if not self.feature_threshold > 0:
            raise ConfigError(
                f"learner.feature_threshold: {self.feature_threshold!r}; expected > 0"
            )
        self.error_monitor()  # validates detector_params, naming the key

    def error_monitor(self) -> ErrorDriftMonitor:
        return ErrorDriftMonitor(
            self.detector, where="learner.detector_params", **dict(self.detector_params)
        )

    def feature_monitor(self) -> FeatureDriftMonitor | None:
        if not self.feature_drift:
            return None
        return FeatureDriftMonitor(
            block=self.feature_block,
            reference=self.feature_reference,
            threshold=self.feature_threshold,
            max_features=self.max_features,
        )


class Outcome(NamedTuple):
    """What one input did. ``loss`` is ``None`` for a prediction request; ``job`` is a retrain
    to run, when one was due and could start. A NamedTuple: one is built per event."""

    index: int
    y_pred: Any
    proba: dict | None
    loss: float | None
    version: int
    lineage: str
    signals: tuple[DriftSignal, ...] = ()
    decisions: tuple[Decision, ...] = ()
    job: RetrainJob | None = None


_NONE: tuple = ()
_new = tuple.__new__

#: The logs and counts a learner pickles as None while empty (see ``__getstate__``).
_HOLLOWED = ("decisions", "decision_counts", "pool", "race_promotions")
#: Label types that fit a task whatever their value (``check_label`` checks the others: a
#: binary 0/1 number, a regression float's finiteness). One set lookup per event instead of
#: a call; the tests check this agrees with ``check_label``.
_LABEL_TYPES = {
    "binary": frozenset((bool,)),
    "multiclass": frozenset((str, int, bool)),
    "regression": frozenset((int,)),
}


class Learner:
    """The continual learner of one model key; see the module docstring.

    >>> from stream_learner.core.models import ModelSpec
    >>> spec = ModelSpec.from_dict({"task": "binary", "pipeline": [
    ...     {"estimator": "preprocessing.StandardScaler"},
    ...     {"estimator": "linear_model.LogisticRegression"}]})
    >>> learner = Learner("default", spec)
    >>> out = learner.learn(Event("e1", "default", {"a": 1.0}, y=True))
    >>> out.index, out.loss, out.version
    (1, 1.0, 1)
    >>> learner.predict(Event("e2", "default", {"a": 1.0})).y_pred
    True
    >>> learner.on_label(Label("e2", "default", False)).loss
    1.0
    """

    def __init__(
        self,
        key: str,
        spec: ModelSpec,
        *,
        config: LearnerConfig | None = None,
        policy: PolicyConfig | None = None,
        retrain: RetrainConfig | None = None,
        max_pending: int = 100_000,
        max_age_s: float | None = 3600.0,
    ) -> None:
        self.key = key
        self.spec = spec
        self.config = config = config or LearnerConfig()
        self.retrain_config = retrain or RetrainConfig()
        self.lineage = spec.lineage
        self.model = build_model(spec)
        self.version = 1
        self.evaluator = PrequentialEvaluator(spec.task, spec.metrics, window=config.eval_window)
        self.policy = TriggerPolicy(policy, key)
        self.window = RecentWindow(self.retrain_config.window, key)
        self.joiner = LabelJoiner(max_pending, max_age_s)
        self.decisions: deque[Decision] = deque(maxlen=config.max_decisions)
        self.decision_counts: Counter[tuple[str, str]] = Counter()  # (trigger, action)
        self.index = 0  # inputs seen: events and labels (offset-like)
        self.learned = 0
        self.predicted = 0
        self.retrains = 0  # jobs handed out
        self._task = spec.task
        self._classifier = spec.task != "regression"
        self._errors = config.error_monitor()
        self._features = config.feature_monitor()
        self._ts = 0.0  # event time of the last input
        self._pending: Decision | None = None  # a retrain decided, waiting for examples
        self._waiting = 0  # examples usable by the pending retrain
        self._running: int | None = None  # number of the job handed out, not yet applied
        self._race: Race | None = None  # candidates racing the champion, while any are
        self.pool: deque[tuple[int, Any]] = deque(maxlen=self.retrain_config.pool)
        self.race_promotions: Counter[str] = Counter()  # by source (see race.SOURCES)
        self._grown: int | None = None  # index at which a quickened champion settles
        self._serving_since = 0  # input index after which the champion's predictions count
        self._names: set[str] = set()  # every feature name this key has admitted

    # The names as a sorted list: a set pickles in hash order, which changes with the
    # process's hash seed, and a snapshot's bytes should not. A learner pickled before the
    # names were kept starts counting them when it is restored. Empty logs and counts as
    # None (a young key's are: see pickling.hollowed).
    def __getstate__(self) -> dict:
        state = {**vars(self), "_names": sorted(self._names)}
        return pickling.hollowed(state, _HOLLOWED)

    def __setstate__(self, state: dict) -> None:
        state["_names"] = set(state.get("_names", ()))
        if "_race" not in state:  # pickled before the race: none, an empty pool, no counts
            state.update(_race=None, race_promotions=None, pool=None)
        pickling.refilled(
            state,
            decisions=lambda: deque(maxlen=state["config"].max_decisions),
            decision_counts=pickling.empty_counter,
            pool=lambda: deque(maxlen=state["retrain_config"].pool),
            race_promotions=pickling.empty_counter,
        )
        state.setdefault("_grown", None)
        state.setdefault("_serving_since", 0)  # the window then holds any version's
        pickling.set_attributes(self, state)  # inline, as built: see core/pickling.py

    def _admit(self, x: dict) -> None:
        """Remember the feature names of ``x`` new to this key, up to
        ``learner.max_feature_names``: an input that would pass it is refused whole, as
        ``too_many_feature_names`` (the service dead-letters it), before it changes anything,
        so a stream of ever-new names cannot grow a key's model and windows without end. Inputs
        with names the key knows go on."""
        new = x.keys() - self._names
        limit = self.config.max_feature_names
        if len(self._names) + len(new) > limit:
            raise DecodeError(
                "too_many_feature_names",
                f"key {self.key[:40]!r} has {len(self._names)} feature names; "
                f"{len(new)} new ones would pass learner.max_feature_names = {limit}",
            )
        self._names |= new

    # -- inputs ------------------------------------------------------------------------

    def learn(self, event: Event) -> Outcome:
        """Test-then-train on a labelled event."""
        # The hot path, flat: _predict() and _learn() inline, and the monitors' and policy's
        # per-event bookkeeping too where it is a line or two (a call costs more than that).
        # The steps and their order are those of _learn(), which joined labels take.
        y = event.y
        if type(y) not in _LABEL_TYPES[self._task]:
            if y is None:
                raise ValueError(f"event {event.id!r} has no label; predict() it instead")
            check_label(y, self._task)
        x = event.x
        if not self._names.issuperset(x):
            self._admit(x)
        self.index = index = self.index + 1
        model = self.model
        if self._classifier:
            proba = model.predict_proba_one(x)
            y_pred = max(proba, key=proba.get) if proba else None
        else:
            y_pred, proba = model.predict_one(x), None
        signals = _NONE
        features = self._features
        if features is not None:  # features.update(x, index)
            pending = features.pending
            pending.append(x)
            if len(pending) >= features.block:
                signals = features.flush(index)
        ts = event.ts
        self._ts = t = float(index) if ts is None else ts
        race = self._race
        if race is not None:  # a candidate may serve: _learn() has the race's steps
            champion = (y_pred, proba)
            if race.serving is not None:
                y_pred, proba = race.predict(x, self._classifier)
            return self._learn(index, t, event, y_pred, proba, signals, champion)
        loss = self.evaluator.update(y, y_pred, proba)
        self.window.push(index, ts, x, y, y_pred, proba)  # an Example's fields
        signal = self._errors.update(loss, index)
        if signal is not None:
            signals = (signal, *signals)
        policy = self.policy  # policy.observe(index, t, True)
        policy.labels += 1
        decision = policy.due(index, t) if policy.scheduled else None
        model.learn_one(x, y)
        self.learned += 1
        if self._grown is not None and index >= self._grown:
            self._grow_up()
        if self._pending is None and decision is None and not signals:
            return _new(
                Outcome,
                (index, y_pred, proba, loss, self.version, self.lineage, _NONE, _NONE, None),
            )
        return self._conclude(index, t, y_pred, proba, loss, signals, decision)

    def predict(self, event: Event) -> Outcome:
        """Predict an unlabelled event and remember it for its label.

        When the label came first (the joiner parked it), the event is scored and learned at
        once, and the outcome is that of :meth:`learn`."""
        x = event.x
        if not self._names.issuperset(x):
            self._admit(x)
        self.index = index = self.index + 1
        ts = event.ts
        self._ts = t = float(index) if ts is None else ts
        champion = y_pred, proba = self._predict(x)
        race = self._race
        if race is not None and race.serving is not None:  # a candidate leads: it serves
            y_pred, proba = race.predict(x, self._classifier)
        label = self.joiner.remember(event, (y_pred, proba), t)
        features = self._features
        signals = _NONE if features is None else features.update(x, index)
        if label is not None:
            labelled = Event(event.id, event.key, x, label.y, ts)
            return self._learn(index, t, labelled, y_pred, proba, signals, champion)
        self.predicted += 1
        decision = self.policy.observe(index, t, False)
        decisions = self._decide(decision, signals, index, t) if decision or signals else _NONE
        return _new(
            Outcome,
            (index, y_pred, proba, None, self.version, self.lineage, signals, decisions, None),
        )

    def on_label(self, label: Label, now: float | None = None) -> Outcome | None:
        """Join a delayed label to its remembered event and learn from it.

        ``None`` when the event has not been predicted yet (the joiner parks the label, and
        :meth:`predict` learns from it when the event comes) or has expired. ``now`` is the
        joiner's clock (default: the label's ``ts``, else the input index)."""
        if type(label.y) not in _LABEL_TYPES[self._task]:
            check_label(label.y, self._task)
        self.index = index = self.index + 1
        t = float(index) if label.ts is None else label.ts
        joined = self.joiner.join(label, t if now is None else now)
        if joined is None:
            return None
        event, (y_pred, proba) = joined
        event = Event(event.id, event.key, event.x, label.y, event.ts)
        return self._learn(index, t, event, y_pred, proba, _NONE)

    def _predict(self, x: dict) -> tuple[Any, dict | None]:
        """The served prediction, and the class probabilities it came from (classifiers).

        One ``predict_proba_one`` and an argmax: what River's ``predict_one`` does anyway."""
        if self._classifier:
            proba = self.model.predict_proba_one(x)
            return (max(proba, key=proba.get) if proba else None), proba
        return self.model.predict_one(x), None

    def _learn(
        self,
        index: int,
        t: float,
        event: Event,
        y_pred: Any,
        proba: dict | None,
        signals: tuple[DriftSignal, ...],
        champion: tuple[Any, dict | None] | None = None,
    ) -> Outcome:
        """Score, watch, decide and learn one labelled event whose prediction was served.

        ``champion`` is the champion's own prediction of it, when known (``learn()`` and a
        parked label); it matters during a race only, where a candidate may have served."""
        # learn() runs these same steps inline. The Outcome is built with tuple.__new__, which
        # skips the NamedTuple's Python-level constructor (several times faster, same object).
        self._ts = t
        if self._race is not None:
            return self._raced(index, t, event, y_pred, proba, signals, champion)
        loss = self.evaluator.update(event.y, y_pred, proba)
        self.window.push(index, event.ts, event.x, event.y, y_pred, proba)
        signal = self._errors.update(loss, index)
        if signal is not None:
            signals = (signal, *signals)
        decision = self.policy.observe(index, t, True)
        self.model.learn_one(event.x, event.y)
        self.learned += 1
        if self._grown is not None and index >= self._grown:
            self._grow_up()
        if self._pending is None and decision is None and not signals:
            return _new(
                Outcome,
                (index, y_pred, proba, loss, self.version, self.lineage, _NONE, _NONE, None),
            )
        return self._conclude(index, t, y_pred, proba, loss, signals, decision)

    def _conclude(
        self,
        index: int,
        t: float,
        y_pred: Any,
        proba: dict | None,
        loss: float,
        signals: tuple[DriftSignal, ...],
        decision: Decision | None,
        raced: tuple[Decision, ...] = _NONE,
    ) -> Outcome:
        """The outcome of a learned event on which something fired or a retrain waits."""
        self._waiting += 1  # counted before deciding: a new retrain uses later examples only
        decisions = self._decide(decision, signals, index, t)
        if decisions and self.retrain_config.shadow:
            started = self._maybe_race(decisions)
            if started is not None:
                decisions += (started,)
        if raced:
            decisions = raced + decisions
        job = self._start() if self._pending is not None else None
        return _new(
            Outcome,
            (index, y_pred, proba, loss, self.version, self.lineage, signals, decisions, job),
        )

    # -- the race (see stream_learner.core.race) --------------------------------------------

    def _raced(
        self,
        index: int,
        t: float,
        event: Event,
        y_pred: Any,
        proba: dict | None,
        signals: tuple[DriftSignal, ...],
        champion: tuple[Any, dict | None] | None,
    ) -> Outcome:
        """A labelled event while a race is on: the steps of :meth:`_learn`, where the
        served prediction may be a candidate's, and the candidates race the event too.

        The evaluator scores what was served (what users got); the error detector, the
        recent window (a retrain's record of the champion) and the race take the champion's
        own loss. When the champion's prediction is not known (a joined label: the
        remembered prediction is the one served), the champion predicts the event now, as
        the candidates do: it has not learned it yet."""
        x, y = event.x, event.y
        loss = self.evaluator.update(y, y_pred, proba)
        known = None  # the serving candidate's loss, when it served this very prediction
        if champion is None:
            champion = self._predict(x)
        elif self._race.serving is not None:
            known = loss
        c_pred, c_proba = champion
        if self._classifier:
            champion_loss = 0.0 if c_pred == y else 1.0
        else:
            champion_loss = abs(y - (c_pred or 0.0))
        self.window.push(index, event.ts, x, y, c_pred, c_proba)  # an Example's fields
        signal = self._errors.update(champion_loss, index)
        if signal is not None:
            signals = (signal, *signals)
        decision = self.policy.observe(index, t, True)
        self.model.learn_one(x, y)
        self.learned += 1
        if self._grown is not None and index >= self._grown:
            self._grow_up()
        raced = self._race_step(x, y, champion_loss, known)
        if self._pending is None and decision is None and not signals and not raced:
            return _new(
                Outcome,
                (index, y_pred, proba, loss, self.version, self.lineage, _NONE, _NONE, None),
            )
        return self._conclude(index, t, y_pred, proba, loss, signals, decision, raced)

    def _maybe_race(self, decisions: tuple[Decision, ...]) -> Decision | None:
        """Start a race on a sign of change: a performance warning or drift, or a
        change-triggered retrain decision; not during warm-up, nor with the trigger off."""
        policy = self.policy
        if policy.labels < policy.config.warmup:
            return None
        for d in decisions:
            if (d.trigger == "performance" and policy.config.performance) or (
                d.action == "retrain" and d.trigger in CHANGE_TRIGGERS
            ):
                if self._race is None:
                    return self._start_race(d.trigger, d.code)
                if d.signal is not None and d.signal.level == "drift":
                    return self._restart_shadow(d.code)
        return None

    def _restart_shadow(self, why: str) -> Decision | None:
        """A drift during a race: a shadow without a sound lead learned from before this
        change, so a fresh one replaces it (ARF restarts its background trees likewise)."""
        race = self._race
        rc = self.retrain_config
        for i, c in enumerate(race.candidates):
            if c.source == "shadow":
                if c.n < rc.race_min_events or c.lead - rc.race_z * c.error >= 0.0:
                    return None
                race.candidates[i] = Candidate(self._fresh(), "shadow", self.index)
                if race.serving is c:  # the champion serves until the new one leads
                    race.serving = None
                reason = f"shadow restarted on {why}: the previous one was not ahead"
                values = {"previous": c.describe()}
                return self._log(race.trigger, "race", "shadow_restarted", reason, None, values)
        race.candidates.append(Candidate(self._fresh(), "shadow", self.index))
        reason = f"shadow started on {why}, joining the race"
        return self._log(race.trigger, "race", "shadow_started", reason, None)

    def _fresh(self) -> Any:
        """A shadow: a fresh model of the spec whose Hoeffding trees split sooner while
        young (``retrain.race_young_grace``; see :func:`models.quicken`)."""
        model = build_model(self.spec)
        grace = self.retrain_config.race_young_grace
        if grace:
            quicken(model, grace)
        return model

    def _regrown(self) -> Any:
        """A regrown candidate (:func:`models.regrow`); ``None`` when it is off or the
        model has no Hoeffding tree. It keeps the spec's grace period: quickened, it split
        its leaves sooner than the champion had and beat it on a stationary STAGGER stream
        (a promotion the race must not make), and won nothing after a change (core report)."""
        if not self.retrain_config.race_regrown:
            return None
        return regrow(self.model)

    def _before(self) -> tuple[float, float] | None:
        """The champion's mean loss over the recent window's examples it predicted (since it
        serves), and the squared standard error of that mean: what the race compares its
        loss with (:meth:`Race.champion_worse`). ``None`` with ``race_confirm`` off or no
        such example."""
        if not self.retrain_config.race_confirm:
            return None
        n = total = squares = 0.0
        loss_of = loss_fn(self._task)
        for y, p in self.window.outcomes(self._serving_since):
            loss = loss_of(y, p)
            n += 1
            total += loss
            squares += loss * loss
        return (total / n, squared_error(n, total, squares)) if n else None

    def _start_race(self, trigger: str, why: str) -> Decision:
        race = self._race = Race(trigger, self.index, self._before())
        race.candidates.append(Candidate(self._fresh(), "shadow", self.index))
        regrown = self._regrown()
        if regrown is not None:
            race.candidates.append(Candidate(regrown, "regrown", self.index))
        for version, model in self.pool:
            race.candidates.append(Candidate(model, "pool", self.index, version))
        pooled = [version for version, _ in self.pool]
        self.pool.clear()
        reason = (
            f"race started on {why}: a shadow model"
            + (", the champion regrown" if regrown is not None else "")
            + (f" and the retired versions {', '.join(map(str, pooled))}" if pooled else "")
        )
        values = {"candidates": len(race.candidates), "pool_versions": pooled}
        if race.before is not None:
            values["champion_loss_before"] = round(race.before[0], 6)
        return self._log(trigger, "race", "race_started", reason, None, values)

    def _race_step(
        self, x: dict, y: Any, loss: float, known: float | None = None
    ) -> tuple[Decision, ...]:
        rc = self.retrain_config
        race = self._race
        serve = rc.race_serve_window if rc.race_serve else 0
        winner, dropped = race.step(
            x,
            y,
            loss,
            self._classifier,
            rc.race_z,
            rc.race_margin,
            rc.race_min_events,
            rc.race_max_events,
            1.0 / serve if serve else 0.0,
            known,
            rc.race_behind_events,
        )
        served = None
        if serve and winner is None:
            serving, changed = race.choose(serve // 2, rc.race_serve_margin)
            if changed:
                served = self._served(serving)
        if winner is None and not dropped:
            return _NONE if served is None else (served,)
        decided = []
        for c in dropped:
            if c.source == "pool":
                self.pool.append((c.version, c.model))
            values = c.describe()
            if c.n < rc.race_max_events:
                code = "candidate_behind"
                why = f"{-c.z:.1f} standard errors behind the champion"
            elif c.lead - rc.race_z * c.error >= rc.race_margin:
                code = "champion_unchanged"
                why = (
                    f"a sound lead within {rc.race_max_events} events, but the champion's "
                    f"loss did not rise soundly above its level before the race "
                    f"({race.before[0]:.4f} -> {race.champion_loss:.4f})"
                )
                values.update(self._levels(race))
            else:
                code = "candidate_cannot_lead"
                why = f"no sound lead within {rc.race_max_events} events"
            reason = f"{c.source} candidate given up: {why} (lead {c.lead:+.4f})"
            decided.append(self._log(race.trigger, "abandon", code, reason, None, values))
        if winner is not None:
            decided += self._promote_candidate(winner)
        elif not race.candidates:
            self._race = None
        if served is not None:
            decided.append(served)
        return tuple(decided)

    def _served(self, serving: Candidate | None) -> Decision:
        """Log a change of the model serving during the race (the version stays the
        champion's: a candidate serves on trial, until it is promoted or given up)."""
        race = self._race
        rc = self.retrain_config
        if serving is None:
            reason = "the champion serves again: no candidate leads over the recent events"
            values = {"candidates": [c.describe() for c in race.candidates]}
            return self._log(race.trigger, "race", "champion_serves", reason, None, values)
        reason = (
            f"{serving.source} candidate serves on trial: recent lead {serving.recent:+.4f} "
            f"(over about {rc.race_serve_window} events), not yet a sound lead"
        )
        return self._log(race.trigger, "race", "candidate_serves", reason, None, serving.describe())

    def _promote_candidate(self, winner: Candidate) -> list[Decision]:
        """The winner serves as the next version; the race ends and the champion retires to
        the pool. A change-triggered retrain still in flight is abandoned: it was decided
        against the champion just replaced."""
        race = self._race
        self._race = None
        for c in race.candidates:
            if c.source == "pool":  # back to the pool, unchanged in rank
                self.pool.append((c.version, c.model))
        self._retire()
        self._crown(winner.model)
        self._grown = winner.started + self.retrain_config.race_young_events
        if winner.source != "shadow" or self.index >= self._grown:
            self._grow_up()  # only a shadow was quickened
        self.race_promotions[winner.source] += 1
        values = winner.describe()
        values["version"] = self.version
        values.update(self._levels(race))
        reason = (
            f"{winner.source} candidate promoted: v{self.version}, lead {winner.lead:+.4f} "
            f"({winner.z:.1f} standard errors) over {winner.n} events"
        )
        decided = [self._log(race.trigger, "promote", "candidate_leads", reason, None, values)]
        cause = self.policy.in_flight
        if cause is not None and cause.trigger in CHANGE_TRIGGERS:
            # As abandon(), but logged as the race's: no retrain result was judged and kept.
            self._pending = None
            self._running = None
            self.policy.finished()
            reason = f"the {cause.trigger} retrain decided at {cause.index} is superseded: "
            reason += f"the {winner.source} candidate was promoted"
            decided.append(
                self._log(cause.trigger, "abandon", "retrain_superseded", reason, cause.kind)
            )
        return decided

    @staticmethod
    def _levels(race: Race) -> dict[str, float]:
        """The champion's loss before the race and during it, for a decision's values."""
        if race.before is None:
            return {}
        return {
            "champion_loss_before": round(race.before[0], 6),
            "champion_loss": round(race.champion_loss, 6),
        }

    def _grow_up(self) -> None:
        """The serving model, promoted from a quickened shadow, has learned
        ``race_young_events`` since it started: its trees get the spec's grace period back."""
        self._grown = None
        settle(self.model, self.spec)

    def _crown(self, model: Any) -> None:
        """Serve ``model`` as the next version, from this input on."""
        self.model = model
        self.version += 1
        self._serving_since = self.index  # its own predictions start after this input
        self._errors.reset()  # the new model's error level is a new baseline

    def _retire(self) -> None:
        """Keep the serving model in the pool (the oldest there goes when it is full)."""
        if self.pool.maxlen:
            self.pool.append((self.version, self.model))

    def race_status(self) -> tuple[int, float]:
        """Candidates alive, and the best one's lead (loss per event; 0 without a race)."""
        race = self._race
        if race is None:
            return 0, 0.0
        best = race.best()
        return len(race.candidates), best.lead if best is not None else 0.0

    # -- retrains ------------------------------------------------------------------------

    def request_retrain(
        self, reason: str = "", ts: float | None = None, kind: str | None = None
    ) -> tuple[Decision, RetrainJob | None]:
        """An on-demand retrain; the job is returned at once when the window allows it, else
        it comes with the outcome of a later labelled event."""
        decision = self.policy.request(reason, self.index, self._ts if ts is None else ts, kind)
        self._record(decision)
        job = self._start() if self._pending is not None else None
        return decision, job

    def apply(self, result: RetrainResult) -> Decision:
        """Promote the result's candidate (it becomes the next version) or keep the champion.

        A result that is not the one in flight (already applied, abandoned, or from before a
        restore) changes nothing and is logged as ``stale_result``."""
        trigger, kind = result.decision.trigger, result.kind
        if result.key != self.key or result.number != self._running:
            reason = f"retrain #{result.number} is not the one in flight; its result is ignored"
            return self._log(trigger, "keep", "stale_result", reason, kind)
        self._running = None
        self.policy.finished()
        values: dict[str, Any] = {
            "number": result.number,
            "metric": result.metric,
            "champion": result.champion_score,
            "challenger": result.challenger_score,
            "margin": result.margin,
            "n_train": result.n_train,
            "n_holdout": result.n_holdout,
        }
        scores = (
            f"challenger {result.metric} {result.challenger_score:.4f}, "
            f"champion {result.champion_score:.4f}, margin {result.margin:g}"
        )
        if not result.promoted:
            reason = f"{kind} retrain #{result.number} not better, champion kept: {scores}"
            return self._log(trigger, "keep", "champion_better", reason, kind, values)
        candidate = result.candidate
        newer = self.window.after(result.through)
        for ex in newer:
            candidate.learn_one(ex.event.x, ex.event.y)
        values["n_caught_up"] = len(newer)
        if trigger in CHANGE_TRIGGERS and self.retrain_config.shadow:
            # After a change the holdout is short and noisy: the candidate earns its place
            # in the race, event by event, like the shadow.
            if self._race is None:
                self._race = Race(trigger, self.index, self._before())
            self._race.candidates.append(Candidate(candidate, "window", self.index))
            reason = f"{kind} retrain #{result.number} passed its holdout and races: {scores}"
            return self._log(trigger, "race", "candidate_races", reason, kind, values)
        self._retire()
        self._crown(candidate)
        self._grown = None
        self.race_promotions["window"] += 1
        if self._race is not None:  # they raced the model just replaced
            self._race.rebase()
        reason = f"{kind} retrain #{result.number} promoted: v{self.version}, {scores}"
        return self._log(trigger, "promote", "challenger_better", reason, kind, values)

    def abandon(self, reason: str) -> Decision | None:
        """Give up the retrain in flight (a worker died, or its examples never came), so the
        policy may decide another. A late result of the abandoned job is ignored by
        :meth:`apply`. ``None`` when nothing was in flight."""
        cause = self.policy.in_flight
        if cause is None:
            return None
        self._pending = None
        self._running = None
        self.policy.finished()
        return self._log(cause.trigger, "keep", "retrain_abandoned", reason, cause.kind)

    #: The lineage this learner was built with, while it serves another one it adopted
    #: (see :meth:`rollback`); ``None`` while it serves its own. A class default, so
    #: learners pickled before it existed load with ``None``.
    adopted_from: str | None = None

    def rollback(
        self, model: Any, version: int, reason: str = "", spec: ModelSpec | None = None
    ) -> Decision:
        """Serve the model of an earlier ``version`` again (restored from its checkpoint by
        the caller), as a new version: versions only go up, and the log says which came back.

        ``spec`` is the restored snapshot's spec. When its lineage is not this learner's (a
        model rebuilt over history, or an older model iteration), the learner adopts that
        lineage: later retrains build that spec, and the decision's code is
        ``lineage_adopted``. A different task is refused (``ValueError``): the key's labels
        would not fit the model. Metrics continue unless the spec names other metrics.

        A retrain in flight is dropped: its candidate was judged against the model being
        replaced, and its late result is ignored by :meth:`apply`."""
        switch = spec is not None and spec.lineage != self.lineage
        if switch and spec.task != self._task:
            raise ValueError(
                f"version {version} is a {spec.task} model; key {self.key!r} is {self._task}"
            )
        dropped = self.policy.in_flight is not None
        self._pending = None
        self._running = None
        self.policy.finished()
        race = self._race
        if race is not None:  # the candidates raced the model being replaced
            self._race = None
            self.pool.extend((c.version, c.model) for c in race.candidates if c.source == "pool")
        if switch:
            self.pool.clear()  # another lineage's models
        else:
            self._retire()
        self._crown(model)
        self._grown = None
        values: dict[str, Any] = {"restored_version": version}
        code = "rolled_back"
        text = f"rolled back to the model of version {version}, now v{self.version}"
        if switch:
            values.update(lineage=spec.lineage, previous_lineage=self.lineage)
            text = (
                f"adopted lineage {spec.lineage} (was {self.lineage}): the model of version "
                f"{version}, now v{self.version}"
            )
            code = "lineage_adopted"
            if spec.metrics != self.spec.metrics:
                window = self.config.eval_window
                self.evaluator = PrequentialEvaluator(spec.task, spec.metrics, window=window)
            original = self.adopted_from or self.lineage  # the lineage it was built with
            self.adopted_from = None if spec.lineage == original else original
            self.spec, self.lineage = spec, spec.lineage
        text += f": {reason}" if reason else ""
        text += "; the retrain in flight was dropped" if dropped else ""
        return self._log("on_demand", "rollback", code, text, None, values)

    def input_lost(self, topic: str, partition: int, first_lost: int, log_start: int) -> Decision:
        """Record that offsets ``first_lost`` to ``log_start - 1`` of ``topic[partition]``,
        input this key's state should have learned, were deleted from the log (retention)
        before it learned them: the key goes on from ``log_start`` without them. Nothing
        about the model changes; the decision log says what it never saw."""
        lost = log_start - first_lost
        reason = (
            f"{lost} input records of {topic}[{partition}] (offsets {first_lost} to "
            f"{log_start - 1}) were deleted before they were learned; continuing from "
            f"offset {log_start}"
        )
        values = {
            "topic": topic,
            "partition": partition,
            "first_lost": first_lost,
            "log_start": log_start,
            "lost": lost,
        }
        return self._log("retention", "warn", "input_lost", reason, None, values)

    def _log(
        self,
        trigger: str,
        action: str,
        code: str,
        reason: str,
        kind: str | None,
        values: dict[str, Any] | None = None,
    ) -> Decision:
        """Record a decision of the learner's own (a retrain's result, lost input), taken now."""
        decision = Decision(
            self.key, self.index, self._ts, trigger, action, code, reason, kind, None, values or {}
        )
        return self._record(decision)

    def _decide(
        self, decision: Decision | None, signals: tuple[DriftSignal, ...], index: int, t: float
    ) -> tuple[Decision, ...]:
        decided = [] if decision is None else [decision]
        decided += [self.policy.signal(s, index, t) for s in signals]
        for d in decided:
            self._record(d)
        return tuple(decided)

    def _record(self, decision: Decision) -> Decision:
        self.decisions.append(decision)
        self.decision_counts[decision.trigger, decision.action] += 1
        if decision.action == "retrain":
            self._pending = decision
            self._waiting = 0 if decision.trigger in CHANGE_TRIGGERS else len(self.window)
        return decision

    def _start(self) -> RetrainJob | None:
        """The pending retrain's job, once it has ``min_train`` + ``holdout`` examples."""
        rc = self.retrain_config
        if self._waiting < rc.min_train + rc.holdout:
            return None
        decision = self._pending
        since = decision.index if decision.trigger in CHANGE_TRIGGERS else -1
        examples = self.window.after(since)
        self.retrains += 1
        job = RetrainJob(
            key=self.key,
            number=self.retrains,
            kind=decision.kind,
            spec=self.spec,
            base=copy.deepcopy(self.model) if decision.kind == "stateful" else None,
            train=tuple(examples[: -rc.holdout]),
            holdout=tuple(examples[-rc.holdout :]),
            margin=rc.margin,
            decision=decision,
            through=self.index,
        )
        self._pending = None
        self._running = job.number
        return job
