"""A retention gap without a broker: the pure part of the plan (:func:`retention_gaps`)
and the real service loop over the in-memory source, whose log start moved past the
checkpoint's positions while the service was down.

The in-memory source refuses a start below a log start (the broker's out-of-range), so
a service that did not move its starts up would fail here, not silently reset.
"""

from __future__ import annotations

import pickle

import orjson

from stream_learner.cli.service_cmd import core_factory
from stream_learner.config import load_config
from stream_learner.core.checkpoints import MemoryCheckpointStore
from stream_learner.core.learner import Learner
from stream_learner.core.restore import Gap, retention_gaps
from stream_learner.metrics import ServiceMetrics
from stream_learner.service import Retrainer, Service, Topics
from stream_learner.service.runtime import CheckpointPolicy
from stream_learner.synth import demo_messages
from tests.core.specs import LINEAR
from tests.service.helpers import sample
from tests.service.memory import MemorySink, MemorySource, logs_of

TOPICS = Topics.from_prefix("mem.")
PARTITION = {"a": 0, "b": 0, "c": 1}
KEY = b"k" * 32
CONFIG = """
[kafka]
topic_prefix = "mem."

[service]
batch_size = 100

[model]
task = "binary"
pipeline = [{ estimator = "linear_model.LogisticRegression" }]
metrics = ["accuracy"]
"""


# -- the plan ---------------------------------------------------------------------------


def test_a_claimed_start_below_the_log_start_is_a_gap_and_moves_up():
    e0, e1, lab0 = ("ev", 0), ("ev", 1), ("lab", 0)
    starts = {e0: 3000, e1: 0, lab0: 10}
    claimed = {e0: 3000, lab0: 10}  # e1 was never checkpointed nor committed
    moved, gaps = retention_gaps(starts, claimed, {e0: 4500, e1: 700, lab0: 5})
    assert moved == {e0: 4500, e1: 700, lab0: 10}
    assert gaps == [Gap("ev", 0, 3000, 4500)]
    assert gaps[0].lost == 1500


def test_an_unknown_log_start_keeps_the_start_and_a_start_at_it_loses_nothing():
    moved, gaps = retention_gaps({("ev", 0): 50}, {("ev", 0): 50}, {("ev", 1): 9})
    assert (moved, gaps) == ({("ev", 0): 50}, [])
    moved, gaps = retention_gaps({("ev", 0): 50}, {("ev", 0): 50}, {("ev", 0): 50})
    assert (moved, gaps) == ({("ev", 0): 50}, [])


def test_the_decision_is_recorded_and_an_old_learner_still_loads():
    learner = Learner("k", LINEAR)
    old = pickle.loads(pickle.dumps(learner))  # a learner pickled before the method existed
    d = old.input_lost("ev", 0, 3000, 4500)
    assert (d.trigger, d.action, d.code) == ("retention", "warn", "input_lost")
    assert d.values == {
        "topic": "ev", "partition": 0, "first_lost": 3000, "log_start": 4500, "lost": 1500
    }  # fmt: skip
    assert old.decisions[-1] is d
    assert old.decision_counts["retention", "warn"] == 1


# -- the service loop -------------------------------------------------------------------


class _Run:
    def __init__(self, config, logs, store, committed=None, log_starts=None) -> None:
        self.sink = MemorySink()
        self.source = MemorySource(
            logs,
            on_assign=lambda tps: self.service.on_assign(tps),
            on_revoke=self._revoked,
            committed=committed,
            log_starts=log_starts,
        )
        self.metrics = ServiceMetrics()
        self.service = Service(
            factory=core_factory(config),
            topics=TOPICS,
            source=self.source,
            sink=self.sink,
            metrics=self.metrics,
            retrainer=Retrainer(workers=0),
            batch_size=100,
            poll_timeout_s=0.0,
            store=store,
            checkpoint_policy=CheckpointPolicy(every_events=0, every_seconds=0),
        )
        turns = iter(range(20_000))  # bounded: a readiness that hangs ends the loop too
        self.service.run(lambda: self.service.caught_up or next(turns, None) is None)

    def _revoked(self, tps) -> None:
        self.learners = dict(self.service.learners)
        self.service.on_revoke(tps)

    def predicted(self) -> list[str]:
        return [orjson.loads(v)["id"] for v, _, _ in self.sink.on(TOPICS.predictions)]


def test_the_service_reports_the_gap_once_continues_from_the_log_start_and_is_ready(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    messages = list(
        demo_messages(
            1200, keys=("a", "b", "c"), unlabelled_share=0.2, label_delay=10, seed=3,
            t0=1_700_000_000.0,
        )
    )  # fmt: skip
    events = [m for m in messages if m.topic == "events"]
    first = events[: 3 * 500]  # before the shutdown: 500 events of each key, no labels
    store = MemoryCheckpointStore(signing_key=KEY)
    one = _Run(config, logs_of(first, TOPICS, PARTITION.__getitem__), store)
    # The checkpoint round at shutdown recorded partition 0's events at 1000 (a and b).
    whole = logs_of(events, TOPICS, PARTITION.__getitem__)
    ev0 = (TOPICS.events, 0)
    assert len(whole[ev0]) == 2400
    two = _Run(
        config, whole, store, committed=one.source.offsets, log_starts={ev0: 1600}
    )  # retention deleted offsets up to 1599 while the service was down

    assert two.service.caught_up  # ready, not stuck below a log start
    assert sample(_scrape(two.metrics), "stream_learner_input_lost_total") == 600
    for key in ("a", "b"):  # every key of the partition says what it never saw
        [d] = [d for d in two.learners[key].decisions if d.code == "input_lost"]
        assert d.values == {
            "topic": TOPICS.events, "partition": 0, "first_lost": 1000, "log_start": 1600,
            "lost": 600,
        }  # fmt: skip
    assert not any(d.code == "input_lost" for d in two.learners["c"].decisions)
    # Nothing else lost or doubled: every request after the log start is predicted once,
    # none of the deleted ones is.
    requests_after = {
        r.value and orjson.loads(r.value)["id"]
        for tp, log in whole.items()
        for r in log
        if tp[0] == TOPICS.events
        and (tp != ev0 or r.offset >= 1600)
        and r.offset >= (1000 if tp == ev0 else 500)
        and orjson.loads(r.value).get("y") is None
    }
    predicted = two.predicted()
    assert len(predicted) == len(set(predicted))
    assert set(predicted) == requests_after
    assert two.learners["a"].index + two.learners["b"].index == 1000 + 800


def _scrape(metrics: ServiceMetrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()
