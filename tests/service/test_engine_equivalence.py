"""The service loop and the replay drive one processor: without a broker, on the same
inputs, they serve the same predictions, log the same decisions and end with the same
metrics — through a restart from checkpoints, and for a command to every key (``*``)
while a restored key has had no input since its snapshot.

The service runs its real loop (merge, decode, route, outputs, commits, checkpoint
rounds, restore) over the in-memory source, sink and checkpoint store of
``tests/service/memory.py`` and ``core/checkpoints.py``; the replay reads the same
records as the Kafka history reader does (merged, then :func:`decode_history`).
"""

from __future__ import annotations

import pickle
from dataclasses import replace

import orjson
import pytest

from stream_learner.cli.service_cmd import core_factory
from stream_learner.config import load_config
from stream_learner.core.checkpoints import MemoryCheckpointStore
from stream_learner.core.keystate import KeyState
from stream_learner.core.ordering import Merger
from stream_learner.metrics import ServiceMetrics
from stream_learner.replay import decode_history, replay, resolve_policy
from stream_learner.service import Retrainer, Service, Topics
from stream_learner.service.runtime import CheckpointPolicy
from stream_learner.synth import Message, demo_messages
from tests.service.memory import MemorySink, MemorySource, logs_of

KEYS = ("alpha", "beta", "gamma")
PARTITION = {"alpha": 0, "beta": 1, "gamma": 0}
N = 2400  # events per key of alpha and beta; gamma's stop at the restart
SPLIT = 1500  # the restart: after this many events of each key
TOPICS = Topics.from_prefix("mem.")
KEY = b"k" * 32

CONFIG = """
[kafka]
topic_prefix = "mem."

[service]
batch_size = 150
retrain_apply_after = 60

[model]
task = "binary"
pipeline = [
  { estimator = "preprocessing.StandardScaler" },
  { estimator = "linear_model.LogisticRegression" },
]
metrics = ["accuracy"]

[learner]
feature_drift = true

[policy]
warmup = 300
cooldown_events = 300

[retrain]
window = 1500
holdout = 100
min_train = 150
margin = 0.0
# Window retrains only: the race would promote a shadow before the change-triggered retrain
# starts, and these tests need a retrain in flight at the snapshot (the race goes through
# restarts in test_crash_equivalence and test_replay_equivalence).
shadow = false
"""


def _messages() -> tuple[list[Message], list[Message]]:
    """Before and after the restart: three keys on two partitions, a concept change, 20 %
    prediction requests whose labels come 40 events later, commands (to one key and to
    every key of partition 0) and records the service dead-letters. Gamma's inputs end
    before the restart, so after it gamma is a restored key without input."""
    streams = {
        key: list(
            demo_messages(
                N,
                generator="stagger",
                change_at=N // 2,
                keys=(key,),
                unlabelled_share=0.2,
                label_delay=40,
                seed=11 + i,
                id_prefix=f"{key}-",
                t0=1_700_000_000.0,
            )
        )  # fmt: skip
        for i, key in enumerate(KEYS)
    }

    def cut(key: str, before: bool) -> list[Message]:
        ts = 1_700_000_000.0 + SPLIT  # event time: one second per event
        return [m for m in streams[key] if (m.value["ts"] < ts) == before]

    def command(name: str, key: str, at: float, **body) -> Message:
        value = {"command": name, "key": key, "ts": 1_700_000_000.0 + at, **body}
        return Message("control", "alpha" if key == "*" else key, value)

    first = cut("alpha", True) + cut("beta", True) + cut("gamma", True)
    first += [
        command("pause", "beta", 300.5),
        command("resume", "beta", 420.5),
        command("retrain", "alpha", 700.5, reason="operator"),
        Message("events", "alpha", {"id": "bad", "ts": 1_700_000_900.5, "x": {}, "y": "maybe"}),
    ]
    second = cut("alpha", False) + cut("beta", False)
    second += [
        command("retrain", "*", SPLIT + 50.5, reason="every key of partition 0"),
        command("snapshot", "alpha", SPLIT + 60.5),
    ]
    return first, second


def _records(messages: list[Message]) -> dict:
    # The memory logs want a body per message; the bad one's x is fine, its y is not.
    return logs_of(messages, TOPICS, PARTITION.__getitem__)


class _Run:
    """One service instance over the logs, with the checkpoint store and group offsets
    of the instance before it."""

    def __init__(self, config, logs, store, committed=None, max_keys=0) -> None:
        self.sink = MemorySink()
        self.service: Service
        self.source = MemorySource(
            logs,
            on_assign=lambda tps: self.service.on_assign(tps),
            on_revoke=self._revoked,
            committed=committed,
        )
        settings = config.service
        self.service = Service(
            factory=core_factory(config),
            topics=TOPICS,
            source=self.source,
            sink=self.sink,
            metrics=ServiceMetrics(),
            retrainer=Retrainer(workers=0, apply_after=settings.retrain_apply_after),
            batch_size=settings.batch_size,
            poll_timeout_s=0.0,
            store=store,
            checkpoint_policy=CheckpointPolicy(every_events=700, every_seconds=0),
        )
        # A tiny cache: evicted keys go to the checkpoint store too, and come back from it.
        self.service.limit_keys(max_keys, cache_bytes=60_000)
        # Until everything is consumed: a bounded loop (the logs are finite).
        self.service.run(lambda: self.service.caught_up)

    def _revoked(self, tps) -> None:
        self.learners = _final(self.service)  # as they were when the run ended
        self.service.on_revoke(tps)

    def predictions(self) -> dict[str, tuple]:
        out = {}
        for value, _, _ in self.sink.on(TOPICS.predictions):
            body = orjson.loads(value)
            out[body["id"]] = (body["y_pred"], body["model_version"], body.get("proba"))
        return out


def _final(service: Service) -> dict:
    """Every key's learner, evicted ones too (read without disturbing the service)."""
    learners = dict(service.learners)
    evicted = service.evicted
    for key in service.processor.evicted:
        entry = evicted.cache.get(key)
        state = pickle.loads(entry.pickled) if entry is not None else evicted.tier.get(key)
        learners[key] = KeyState.of(state).learner
    return learners


def _samples(metrics: ServiceMetrics) -> dict:
    """The metrics a budget must not change: all but timings, sizes, the budget's own, the
    count of checkpoints written (evicted keys are written by their store instead) and of
    records re-read without outputs after the restart (an evicted key's snapshot reflects
    the positions of its eviction, later than its last round's, so less is re-read)."""
    skip = ("seconds", "duration", "bytes", "size", "batch", "evict", "reload", "resident")
    skip += ("passes",)
    skip += ("stream_learner_checkpoints",)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in metrics.registry.collect()
        if not any(word in family.name for word in skip)
        for sample in family.samples
        if not sample.name.endswith("_created") and sample.labels.get("outcome") != "replayed"
    }


def _dead(run) -> list:
    return [
        (value, key, [h for h in headers if h[0] != "dlq.timestamp"])
        for value, key, headers in run.sink.on(TOPICS.dead_letters)
    ]


def _merged(*logs: dict) -> list:
    """The records of every log in the service's merge order (each member read to its end)."""
    merger = Merger(TOPICS.inputs)
    for log in logs:
        for tp in sorted(log):
            merger.push(log[tp])
    return merger.pop_ready(lambda tp: True)


def _decisions(learner) -> list[tuple]:
    return [(d.index, d.trigger, d.action, d.code, d.reason) for d in learner.decisions]


def _served(predictions) -> dict[str, tuple]:
    out = {}
    for event, outcome in predictions:
        proba = {str(k): v for k, v in outcome.proba.items()} if outcome.proba else None
        out[event.id] = (outcome.y_pred, outcome.version, proba)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "config.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    first, second = _messages()
    before = _records(first)
    whole = _records(first + second)  # the same records first, then the rest
    store = MemoryCheckpointStore(signing_key=KEY)
    one = _Run(config, before, store)
    snapshots = store.read()  # as the restarted instance finds them
    two = _Run(config, whole, store, committed=one.source.offsets)
    return config, before, whole, snapshots, one, two


def test_a_restart_serves_and_decides_as_one_replay_of_the_whole_history(runs):
    config, _, whole, _, one, two = runs
    history = decode_history(
        _merged(whole),
        {"events": TOPICS.events, "labels": TOPICS.labels, "control": TOPICS.control},
        task="binary",
    )
    assert history.skipped == {"bad_label": 1}  # the service dead-letters it
    assert history.commands == {"pause": 1, "resume": 1, "retrain": 2, "snapshot": 1}
    factory = core_factory(config)
    named = resolve_policy("config", factory.retrain, config=factory.policy)
    learners, served = [], []
    [report] = replay(
        history.items, config, [named], partitions=history.partitions,
        learners=learners, predictions=served,
    )  # fmt: skip
    service = two
    assert set(service.learners) == set(KEYS) == set(learners[0])
    for key in KEYS:
        mine, theirs = service.learners[key], learners[0][key]
        assert _decisions(mine) == _decisions(theirs), key
        assert mine.evaluator.values() == theirs.evaluator.values(), key
        assert (mine.index, mine.version, mine.retrains) == (
            theirs.index, theirs.version, theirs.retrains
        ), key  # fmt: skip
    # Every request predicted once, across the restart, as the replay serves it.
    predicted = {**one.predictions(), **two.predictions()}
    assert len(one.predictions()) + len(two.predictions()) == len(predicted)
    assert predicted == _served(served[0])
    # Not vacuous: the change was caught and acted on, the pause held some labels back,
    # and the command to every key of partition 0 reached gamma, which had no input since.
    every = [d for key in KEYS for d in _decisions(service.learners[key])]
    assert any(d[2] == "promote" for d in every)
    gamma = _decisions(service.learners["gamma"])
    assert any(d[1] == "on_demand" and "every key of partition 0" in d[4] for d in gamma)
    assert service.learners["gamma"].index == learners[0]["gamma"].index  # no input since
    assert report.rejected == 0 and one.sink.on(TOPICS.dead_letters)


@pytest.mark.parametrize("max_keys", [0, 1], ids=["no budget", "budget of one key"])
def test_a_replay_from_the_checkpoints_continues_as_the_restarted_service(runs, max_keys):
    """The replay's ``--from-checkpoint`` path: the restored keys, gamma included, are the
    processor's from the start, so ``*`` reaches gamma in the replay as in the service.
    Under a budget of one key, restored keys are evicted as they are adopted, and pass
    through memory for their inputs."""
    config, before, whole, catalog, one, two = runs
    config = replace(config, service=replace(config.service, max_keys=max_keys))
    initial, partitions = {}, {}
    for key in KEYS:
        header, state = catalog.load(key)
        initial[key] = KeyState.of(state)  # a retrain in flight too, applied when due
        partitions[key] = header["extra"]["partition"]
    # What the restarted service read after the snapshots: the records past them.
    cut = {tp: len(records) for tp, records in before.items()}
    after = {tp: records[cut.get(tp, 0) :] for tp, records in whole.items()}
    history = decode_history(
        _merged(after),
        {"events": TOPICS.events, "labels": TOPICS.labels, "control": TOPICS.control},
        task="binary",
    )
    factory = core_factory(config)
    named = resolve_policy("config", factory.retrain, config=factory.policy)
    learners, served = [], []
    [report] = replay(
        history.items, config, [named], partitions=history.partitions, initial=initial,
        initial_partitions=partitions, learners=learners, predictions=served,
    )  # fmt: skip
    assert any(KeyState.of(catalog.load(k)[1]).pending for k in KEYS)  # one in flight
    assert "gamma" not in learners[0]  # no input after the snapshot ...
    for key in ("alpha", "beta"):
        assert _decisions(two.learners[key]) == _decisions(learners[0][key]), key
    assert two.predictions() == _served(served[0])
    # ... and yet the command to every key of partition 0 reached it, in the service and
    # in the replay alike (restored keys are the processor's from the start).
    gamma = _decisions(two.learners["gamma"])
    assert gamma[-1][1] == "on_demand" and "every key of partition 0" in gamma[-1][4]
    replayed = [d for d in report.decisions if d["key"] == "gamma"]
    assert [(d["index"], d["trigger"], d["action"], d["code"], d["reason"]) for d in replayed] == [
        gamma[-1]
    ]


@pytest.fixture(scope="module")
def budget_runs(runs, tmp_path_factory):
    """The same two runs under a budget of one resident key (evictions at almost every
    input, through the cache, the local file and the checkpoint store)."""
    config, before, whole, _, _, _ = runs
    store = MemoryCheckpointStore(signing_key=KEY)
    one = _Run(config, before, store, max_keys=1)
    two = _Run(config, whole, store, committed=one.source.offsets, max_keys=1)
    return one, two


def test_a_key_budget_serves_decides_and_counts_as_no_budget(runs, budget_runs):
    _, _, _, _, one, two = runs
    b_one, b_two = budget_runs
    for plain, budget in ((one, b_one), (two, b_two)):
        assert plain.predictions() == budget.predictions()
        assert set(plain.learners) == set(budget.learners) == set(KEYS)
        for key in KEYS:
            mine, theirs = budget.learners[key], plain.learners[key]
            assert _decisions(mine) == _decisions(theirs), key
            assert mine.evaluator.values() == theirs.evaluator.values(), key
            assert (mine.index, mine.version, mine.retrains, mine.joiner.joined) == (
                theirs.index, theirs.version, theirs.retrains, theirs.joiner.joined
            ), key  # fmt: skip
        assert _samples(budget.service.metrics) == _samples(plain.service.metrics)
        assert _dead(plain) == _dead(budget)
    # Not vacuous: keys were evicted and reloaded from the cache and from the local file
    # (never from the store: the file holds what left the cache), before and after the
    # restart.
    evictions = [run.service.processor.evictions for run in (b_one, b_two)]
    assert sum(evictions) > 20 and min(evictions) >= 1
    reloads = [run.service.evicted.reloads for run in (b_one, b_two)]
    assert sum(r["cache"] for r in reloads) > 20 and sum(r["disk"] for r in reloads) >= 1
    assert sum(r["topic"] for r in reloads) == 0
    for run in (b_one, b_two):
        reg = run.service.metrics.registry
        assert reg.get_sample_value("stream_learner_key_evictions_total") == (
            run.service.processor.evictions
        )
        passes = reg.get_sample_value("stream_learner_key_passes_total")
        assert 0 < passes < run.service.processor.evictions  # LRU evictions too
        for source in ("disk", "topic"):
            assert (
                reg.get_sample_value("stream_learner_key_reloads_total", {"source": source})
                == (run.service.evicted.reloads[source])
            )
