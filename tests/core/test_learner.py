from __future__ import annotations

import copy
import itertools
import math
import pickle

import pytest
from river.datasets import synth

from stream_learner.core.events import Event, Label, check_label
from stream_learner.core.learner import Learner, LearnerConfig, Outcome
from stream_learner.core.models import ModelSpec
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.retrain import RetrainConfig, RetrainJob
from stream_learner.errors import ConfigError, DecodeError
from tests.core.specs import LINEAR, TREE

REGRESSION = ModelSpec.from_dict(
    {"task": "regression", "pipeline": [{"estimator": "linear_model.LinearRegression"}]}
)
MULTICLASS = ModelSpec.from_dict(
    {"task": "multiclass", "pipeline": [{"estimator": "tree.HoeffdingTreeClassifier"}]}
)

CHANGE = 3000

#: Change-triggered retrains judged on their holdout alone, without the race (which
#: tests/core/test_race.py covers): the tests below are about the window retrains.
WINDOW_ONLY = RetrainConfig(shadow=False)


def sea_change(n: int, seed: int = 1, change: int = CHANGE) -> list[Event]:
    """SEA concept 3, then concept 2 from ``change``: a fifth of the labels flip."""
    pairs = itertools.chain(
        itertools.islice(synth.SEA(3, noise=0.1, seed=seed), change),
        synth.SEA(2, noise=0.1, seed=seed + 1),
    )
    return [
        Event(f"e{i}", "k", {f"x{j}": v for j, v in x.items()}, y, 1000.0 + i)
        for i, (x, y) in enumerate(itertools.islice(pairs, n))
    ]


def feed(learner: Learner, evts: list[Event], run_jobs: bool = True) -> list[Outcome]:
    outs = []
    for e in evts:
        out = learner.learn(e)
        outs.append(out)
        if run_jobs and out.job is not None:
            learner.apply(out.job.run())
    return outs


def first_job(learner: Learner, evts: list[Event]) -> tuple[int, RetrainJob]:
    for i, e in enumerate(evts):
        out = learner.learn(e)
        if out.job is not None:
            return i, out.job
    raise AssertionError("no retrain job")


# -- configuration ---------------------------------------------------------------------------


def test_learner_config_from_dict():
    config = LearnerConfig.from_dict(
        {"detector": "page_hinkley", "detector_params": {"threshold": 30}}
    )
    assert config.detector == "page_hinkley"
    assert config.detector_params == (("threshold", 30),)
    assert config.error_monitor()._drift.threshold == 30
    assert LearnerConfig.from_dict({}) == LearnerConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"detectors": "adwin"}, "learner.detectors: unknown key; accepted: eval_window"),
        ({"detector": "ddm"}, "learner.detector: 'ddm'; choose one of: adwin, page_hinkley"),
        ({"detector_params": {"lambda": 1}}, "learner.detector_params.lambda: unknown for adwin"),
        ({"detector_params": [1]}, "learner.detector_params: expected a table"),
        ({"feature_block": 0}, "learner.feature_block: 0; expected an integer >= 1"),
        ({"feature_threshold": 0}, "learner.feature_threshold: 0.0; expected > 0"),
    ],
)
def test_bad_learner_tables_name_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        LearnerConfig.from_dict(table)


# -- test-then-train -------------------------------------------------------------------------


def test_learn_predicts_first_then_learns():
    learner = Learner("k", LINEAR)
    first = learner.learn(Event("a", "k", {"x": 1.0}, True))
    # Untrained, the logistic regression says 50/50 and the argmax picks the first class.
    assert (first.index, first.y_pred, first.loss, first.version) == (1, False, 1.0, 1)
    assert first.lineage == LINEAR.lineage
    second = learner.learn(Event("b", "k", {"x": 1.0}, True))
    assert (second.index, second.y_pred, second.loss) == (2, True, 0.0)
    assert second.proba[True] > 0.5
    assert learner.evaluator.n == 2 and learner.learned == 2
    assert [ex.index for ex in learner.window] == [1, 2]


def test_an_unlabelled_or_ill_typed_event_is_refused_before_anything_changes():
    learner = Learner("k", LINEAR)
    with pytest.raises(ValueError, match="has no label; predict"):
        learner.learn(Event("a", "k", {"x": 1.0}))
    with pytest.raises(DecodeError, match="bad_label"):
        learner.learn(Event("a", "k", {"x": 1.0}, "cat"))
    assert learner.index == 0 and learner.evaluator.n == 0


def test_a_delayed_label_is_scored_against_the_served_prediction_with_the_original_features():
    learner = Learner("k", LINEAR)
    for i in range(50):
        learner.learn(Event(f"t{i}", "k", {"x": 1.0}, True))
    served = learner.predict(Event("p", "k", {"x": 1.0}, ts=5.0))
    assert (served.y_pred, served.loss, served.version) == (True, None, 1)
    assert learner.joiner.pending == 1 and learner.predicted == 1
    for i in range(50):  # the model moves on meanwhile
        learner.learn(Event(f"u{i}", "k", {"x": 1.0}, False))
    out = learner.on_label(Label("p", "k", False, ts=9.0))
    assert out.y_pred is True and out.loss == 1.0  # the prediction that was served
    assert out.index == 102
    last = learner.window.after(101)[0]
    # the window keeps what a retrain reads: features, label, time (not the event's id)
    assert (last.index, last.event.x, last.event.y, last.event.ts) == (102, {"x": 1.0}, False, 5.0)
    assert learner.joiner.joined == 1
    with pytest.raises(DecodeError, match="bad_label"):
        learner.on_label(Label("p", "k", 0.5))


def test_a_label_that_comes_before_its_event_is_learned_when_the_event_is_predicted():
    learner = Learner("k", LINEAR)
    assert learner.on_label(Label("early", "k", True, ts=1.0)) is None
    assert learner.joiner.parked == 1 and learner.learned == 0
    out = learner.predict(Event("early", "k", {"x": 2.0}, ts=2.0))
    assert (out.index, out.loss) == (2, 1.0)  # scored (50/50 picks False) and learned
    assert learner.learned == 1 and learner.predicted == 0
    assert learner.window.after(1)[0].event == Event("", "k", {"x": 2.0}, True, 2.0)  # no id kept


def test_prediction_requests_feed_the_data_drift_monitor():
    learner = Learner("k", LINEAR, config=LearnerConfig(feature_block=10, feature_reference=100))
    outs = [
        learner.predict(Event(f"p{i}", "k", {"x": 0.0 if i < 500 else 9.0})) for i in range(600)
    ]
    signals = [s for out in outs for s in out.signals]
    assert [(s.kind, s.feature, s.direction) for s in signals] == [("data", "x", "up")]
    decisions = [d for out in outs for d in out.decisions]
    assert [(d.trigger, d.code) for d in decisions] == [("data_drift", "data_drift_unconfirmed")]


def test_a_regression_learner_scores_absolute_error():
    spec = ModelSpec.from_dict(
        {"task": "regression", "pipeline": [{"estimator": "linear_model.LinearRegression"}]}
    )
    learner = Learner("k", spec)
    out = learner.learn(Event("a", "k", {"x": 1.0}, 3.0))
    assert (out.y_pred, out.proba, out.loss) == (0.0, None, 3.0)


# -- retrains --------------------------------------------------------------------------------


def test_after_a_detected_change_the_retrain_waits_for_post_detection_examples():
    learner = Learner("k", TREE, retrain=WINDOW_ONLY)
    evts = sea_change(6000)
    at, job = first_job(learner, evts)
    decision = job.decision
    assert (decision.trigger, decision.code, decision.kind) == (
        "performance",
        "performance_degraded",
        "stateless",
    )
    assert CHANGE <= decision.index <= CHANGE + 1000
    rc = learner.retrain_config
    assert len(job.train) == rc.min_train and len(job.holdout) == rc.holdout
    assert job.train[0].index == decision.index + 1  # events after the detection only
    assert job.holdout[-1].index == learner.index == at + 1
    assert job.base is None  # a stateless job does not ship the model
    assert learner.policy.in_flight is decision


def test_while_a_retrain_is_in_flight_the_learner_keeps_learning_and_the_candidate_catches_up():
    learner = Learner("k", TREE, retrain=WINDOW_ONLY)
    evts = sea_change(8000)
    at, job = first_job(learner, evts)
    meanwhile = feed(learner, evts[at + 1 : at + 301], run_jobs=False)  # the job runs elsewhere
    assert all(out.job is None for out in meanwhile)
    result = job.run()
    assert result.promoted
    expected = copy.deepcopy(result.candidate)
    for e in evts[at + 1 : at + 301]:  # what it missed while the job ran
        expected.learn_one(e.x, e.y)
    decision = learner.apply(result)
    assert (decision.action, decision.code, decision.trigger) == (
        "promote",
        "challenger_better",
        "performance",
    )
    assert decision.values["n_caught_up"] == 300
    assert learner.version == 2 and learner.policy.in_flight is None
    assert learner.model is result.candidate
    probe = sea_change(500, seed=7, change=0)
    assert [learner.model.predict_proba_one(e.x) for e in probe] == [
        expected.predict_proba_one(e.x) for e in probe
    ]
    assert learner.learn(evts[at + 301]).version == 2
    counts = learner.decision_counts
    assert counts["performance", "retrain"] == 1 and counts["performance", "promote"] == 1


def test_a_result_that_is_not_in_flight_is_ignored():
    learner = Learner("k", TREE, retrain=WINDOW_ONLY)
    evts = sea_change(6000)
    _, job = first_job(learner, evts)
    result = job.run()
    stale = copy.copy(result)
    object.__setattr__(stale, "number", 99)
    d = learner.apply(stale)
    assert (d.action, d.code) == ("keep", "stale_result")
    assert learner.version == 1 and learner.policy.in_flight is not None
    assert learner.apply(result).action in ("promote", "keep")
    assert learner.apply(result).code == "stale_result"  # applied once only


def test_abandon_frees_the_policy_and_a_late_result_is_ignored():
    learner = Learner("k", TREE, retrain=WINDOW_ONLY)
    _, job = first_job(learner, sea_change(6000))
    d = learner.abandon("worker died")
    assert (d.action, d.code, d.reason, d.trigger) == (
        "keep",
        "retrain_abandoned",
        "worker died",
        "performance",
    )
    assert learner.policy.in_flight is None
    assert learner.apply(job.run()).code == "stale_result"
    assert learner.version == 1
    assert learner.abandon("nothing to abandon") is None


def test_rollback_serves_an_earlier_model_as_a_new_version_and_drops_a_retrain_in_flight():
    learner = Learner("k", TREE, retrain=WINDOW_ONLY)
    _, job = first_job(learner, sea_change(6000))
    old = copy.deepcopy(learner.model)
    learner.apply(job.run())
    assert learner.version == 2
    decision, job = learner.request_retrain("try again", kind="stateless")
    assert decision.action == "retrain"
    d = learner.rollback(old, 1, "v2 misbehaves")
    assert (d.trigger, d.action, d.code, d.values) == (
        "on_demand",
        "rollback",
        "rolled_back",
        {"restored_version": 1},
    )
    assert d.reason == (
        "rolled back to the model of version 1, now v3: v2 misbehaves; "
        "the retrain in flight was dropped"
    )
    assert (learner.version, learner.model, learner.policy.in_flight) == (3, old, None)
    assert learner.apply(job.run()).code == "stale_result"
    assert learner.version == 3


def test_on_demand_retrain_starts_at_once_when_the_window_allows():
    learner = Learner("k", LINEAR, retrain=RetrainConfig(window=1000, holdout=100, min_train=200))
    evts = sea_change(2500, change=5000)
    decision, job = learner.request_retrain("backfill", ts=5.0)
    assert (decision.action, decision.kind, job) == ("retrain", "stateful", None)  # no data yet
    outs = feed(learner, evts[:299], run_jobs=False)
    assert all(out.job is None for out in outs)
    job = learner.learn(evts[299]).job
    assert job is not None and job.kind == "stateful" and job.base is not learner.model
    assert (len(job.train), len(job.holdout), job.train[0].index) == (200, 100, 1)
    learner.apply(job.run())
    feed(learner, evts[300:])  # the window is full now: on demand is immediate
    decision, job = learner.request_retrain("again", kind="stateless")
    assert job is not None and job.kind == "stateless"
    assert (len(job.train), len(job.holdout)) == (900, 100)
    assert decision.index == learner.index == 2500


def test_the_decision_log_is_bounded_and_counted():
    learner = Learner(
        "k",
        LINEAR,
        config=LearnerConfig(max_decisions=5),
        policy=PolicyConfig(warmup=0, cooldown_events=0, interval_events=10),
    )
    feed(learner, sea_change(300, change=1000))
    assert len(learner.decisions) == 5
    assert sum(learner.decision_counts.values()) > 5
    assert learner.decisions[-1].index == 300


def test_memory_is_bounded_by_the_window():
    learner = Learner("k", LINEAR, retrain=RetrainConfig(window=600))
    feed(learner, sea_change(3000, change=10_000))
    assert len(learner.window) == 600


# -- determinism and state -------------------------------------------------------------------


def test_same_events_give_the_same_outcomes_and_state():
    def go() -> tuple[list, Learner]:
        learner = Learner("k", LINEAR, retrain=WINDOW_ONLY)
        outs = feed(learner, sea_change(6000))
        return [(o.y_pred, o.loss, o.decisions, o.version) for o in outs], learner

    (a, la), (b, lb) = go(), go()
    assert la.version > 1  # a retrain happened on the way
    assert a == b
    assert pickle.dumps(la) == pickle.dumps(lb)


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda x: pickle.loads(pickle.dumps(x))])
def test_a_copy_taken_mid_stream_continues_exactly_like_the_original(clone):
    learner = Learner("k", LINEAR, retrain=WINDOW_ONLY)
    evts = sea_change(6000)
    feed(learner, evts[: CHANGE + 100])
    learner.predict(Event("pending", "k", evts[0].x))  # a prediction waiting for its label
    twin = clone(learner)
    rest = evts[CHANGE + 100 :]
    a = [(o.y_pred, o.decisions, o.version) for o in feed(learner, rest)]
    b = [(o.y_pred, o.decisions, o.version) for o in feed(twin, rest)]
    assert a == b
    assert learner.version > 1  # the copy went through a retrain too
    label = Label("pending", "k", True)
    assert learner.on_label(label) == twin.on_label(label)
    # Compared by value: a copy's events hold copies of strings the original's events share
    # with later events, so whole pickles differ in their memo references, not in content.
    for name, value in vars(learner).items():
        if name == "window":
            assert list(value) == list(twin.window)
        elif name == "pool":  # retired models, compared by what they predict
            assert [v for v, _ in value] == [v for v, _ in twin.pool]
            for (_, m), (_, t) in zip(value, twin.pool, strict=True):
                assert [m.predict_proba_one(e.x) for e in rest[:50]] == [
                    t.predict_proba_one(e.x) for e in rest[:50]
                ]
        elif name == "joiner":
            assert vars(value) == vars(twin.joiner)
        else:
            assert pickle.dumps(value) == pickle.dumps(vars(twin)[name]), name


class _StepByStep(Learner):
    """``learn`` as the composition its hot path inlines: check the label, predict (the
    champion, and the candidate serving during a race, as ``predict`` does), feed the data
    monitor, then ``_learn`` with the champion's prediction."""

    def learn(self, event: Event) -> Outcome:
        if event.y is None:
            raise ValueError(f"event {event.id!r} has no label; predict() it instead")
        check_label(event.y, self._task)
        self.index = index = self.index + 1
        champion = y_pred, proba = self._predict(event.x)
        race = self._race
        if race is not None and race.serving is not None:
            y_pred, proba = race.predict(event.x, self._classifier)
        signals = () if self._features is None else self._features.update(event.x, index)
        t = float(index) if event.ts is None else event.ts
        return self._learn(index, t, event, y_pred, proba, signals, champion)


@pytest.mark.parametrize("spec", [LINEAR, TREE], ids=["linear", "tree"])
def test_the_inlined_learn_is_the_step_by_step_path(spec):
    kwargs = {
        "config": LearnerConfig(feature_block=50, feature_reference=300, feature_threshold=8.0),
        "policy": PolicyConfig(warmup=300, interval_events=1700, data_drift_triggers=True),
        # Promotion after 50 events: the linear champion relearns the flipped labels within
        # about 1,000, and then (see race_confirm) a shadow is no longer promoted.
        "retrain": RetrainConfig(race_min_events=50),
    }
    fast, reference = Learner("k", spec, **kwargs), _StepByStep("k", spec, **kwargs)
    evts = sea_change(7000)
    evts[4000:] = [Event(e.id, e.key, {**e.x, "x1": e.x["x1"] + 2.0}, e.y) for e in evts[4000:]]
    # Labels flip at 5500: a change the race (shadow candidate, then the pool) must handle.
    evts[5500:] = [Event(e.id, e.key, e.x, not e.y) for e in evts[5500:]]

    def outcomes(learner: Learner) -> list[tuple]:
        return [(*o[:-1], o.job is not None) for o in feed(learner, evts)]

    a, b = outcomes(fast), outcomes(reference)
    assert a == b
    triggers = {d.trigger for out in a for d in out[7]}
    assert {"performance", "data_drift", "interval"} <= triggers and fast.version > 1
    assert fast.race_promotions["shadow"] >= 1
    assert list(fast.decisions) == list(reference.decisions)
    assert fast.evaluator.values() == reference.evaluator.values()
    assert list(fast.window) == list(reference.window)
    assert (fast.index, fast.learned, fast.policy.labels) == (7000, 7000, 7000)
    assert (reference.index, reference.learned, reference.policy.labels) == (7000, 7000, 7000)


@pytest.mark.parametrize("spec", [LINEAR, REGRESSION, MULTICLASS], ids=lambda s: s.task)
def test_labels_are_refused_exactly_as_check_label_refuses_them(spec):
    """Labels of some types are accepted by their type alone: that must be check_label's
    verdict too, for learn and for a joined label."""
    samples = [True, False, 0, 1, 2, -1, 0.0, 1.0, 0.5, math.nan, math.inf, "a", "", b"x", [1]]
    for i, y in enumerate(samples):
        learner = Learner("k", spec)  # one each: a model may not take mixed classes
        try:
            check_label(y, spec.task)
            fits = True
        except DecodeError:
            fits = False
        before = learner.index
        if fits:
            learner.learn(Event(f"e{i}", "k", {"x": 1.0}, y))
            assert learner.on_label(Label(f"none{i}", "k", y)) is None
        else:
            with pytest.raises(DecodeError, match="bad_label"):
                learner.learn(Event(f"e{i}", "k", {"x": 1.0}, y))
            with pytest.raises(DecodeError, match="bad_label"):
                learner.on_label(Label(f"none{i}", "k", y))
            assert learner.index == before


def test_a_key_admits_a_bounded_number_of_feature_names():
    """Past ``max_feature_names`` an input with a new name is refused whole, before it
    changes anything; inputs with known names go on; the names survive a snapshot."""
    learner = Learner("k", LINEAR, config=LearnerConfig(max_feature_names=3, feature_drift=False))
    learner.learn(Event("e1", "k", {"a": 1.0, "b": 2.0}, y=True))
    learner.predict(Event("e2", "k", {"c": 1.0}))
    before = pickle.dumps(learner)
    for refused in (
        lambda: learner.learn(Event("e3", "k", {"a": 1.0, "d": 1.0}, y=False)),
        lambda: learner.predict(Event("e4", "k", {"e": 1.0})),
    ):
        with pytest.raises(DecodeError) as info:
            refused()
        assert info.value.reason == "too_many_feature_names"
    assert pickle.dumps(learner) == before  # nothing changed, not even the input index
    assert learner.learn(Event("e5", "k", {"c": 2.0, "a": 0.5}, y=False)).index == 3
    restored = pickle.loads(pickle.dumps(learner))
    with pytest.raises(DecodeError):
        restored.learn(Event("e6", "k", {"z": 1.0}, y=True))
    assert restored.learn(Event("e7", "k", {"b": 1.0}, y=True)).index == 4


def test_a_learner_pickled_before_names_were_kept_starts_counting_them():
    learner = Learner("k", LINEAR, config=LearnerConfig(max_feature_names=2))
    state = learner.__getstate__()
    del state["_names"]  # as an older snapshot holds it
    old = Learner.__new__(Learner)
    old.__setstate__(state)
    old.learn(Event("e1", "k", {"a": 1.0, "b": 1.0}, y=True))
    with pytest.raises(DecodeError):
        old.learn(Event("e2", "k", {"c": 1.0}, y=True))
