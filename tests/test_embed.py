"""The embedding API (stream_learner.embed): the service's contract and engine as a library.
Pure: an in-memory checkpoint store, no broker."""

from __future__ import annotations

import pytest

import stream_learner
from stream_learner import DecodeError, StreamLearner
from stream_learner.config import parse_config
from stream_learner.core.checkpoints import MemoryCheckpointStore
from stream_learner.core.events import Event, Label
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.processor import Processor
from stream_learner.core.retrain import RetrainConfig
from stream_learner.replay import replay, resolve_policy
from stream_learner.synth import demo_messages

SIGNING_KEY = bytes(range(32))

CONFIG = {
    "service": {"retrain_apply_after": 50, "retrain_in_worker": False},
    "model": {
        "task": "binary",
        "pipeline": [
            {"estimator": "preprocessing.StandardScaler"},
            {"estimator": "linear_model.LogisticRegression"},
        ],
        "metrics": ["accuracy"],
    },
    "learner": {"feature_drift": False},
    "policy": {"warmup": 300, "cooldown_events": 300},
    "retrain": {
        "window": 1000,
        "holdout": 100,
        "min_train": 100,
        "race_z": 2.0,
        "race_min_events": 50,  # promotions within these short streams
    },
    "checkpoints": {"every_events": 1000, "every_seconds": 0},
}


def _history(n: int = 2000) -> list:
    """A drifting STAGGER stream for two keys, a tenth of it as requests labelled later."""
    return list(
        demo_messages(
            n,
            generator="stagger",
            change_at=n // 2,
            keys=("a", "b"),
            unlabelled_share=0.1,
            label_delay=20,
            t0=1_700_000_000.0,
        )
    )


def _feed(sl: StreamLearner, messages, offsets: dict | None = None) -> list:
    results = []
    for m in messages:
        offset = None
        if offsets is not None:
            offset = offsets[m.topic] = offsets.get(m.topic, -1) + 1
        feed = sl.event if m.topic == "events" else sl.label
        results.append(feed(m.value, key=m.key, offset=offset))
    return results


def test_the_package_root_exports_a_small_sorted_surface():
    assert stream_learner.__all__ == sorted(stream_learner.__all__)
    assert stream_learner.StreamLearner is StreamLearner


@pytest.mark.parametrize(
    ("feed", "value", "reason"),
    [
        ("event", b'{"id": "e1", "x": [1, 2]}', "x_not_object"),
        ("event", b"{not json", "not_json"),
        ("event", {"id": "e1", "x": {"a": float("nan")}}, "non_finite"),
        ("event", {"id": "e1", "key": "other", "x": {"a": 1}}, "key_mismatch"),
        ("event", {"id": "e1", "x": {"a": 1}, "y": "yes"}, "bad_label"),
        ("event", {"x": {"a": 1}}, "missing_id"),
        ("label", {"id": "e1", "y": 0.5}, "bad_label"),
        ("label", {"id": "e1"}, "missing_y"),
    ],
)
def test_bad_input_raises_the_reason_the_service_dead_letters_with(feed, value, reason):
    sl = StreamLearner.from_dict(CONFIG)
    with pytest.raises(DecodeError) as caught:
        getattr(sl, feed)(value, key="fraud")
    assert caught.value.reason == reason


def test_a_value_the_model_refuses_is_model_rejected_as_in_the_service():
    sl = StreamLearner.from_dict(CONFIG)
    sl.event({"id": "e0", "x": {"a": 1.0}, "y": True})
    with pytest.raises(DecodeError) as caught:
        sl.event({"id": "e1", "x": {"a": "a string"}, "y": True})
    assert caught.value.reason == "model_rejected"


def test_labels_past_the_unseen_key_bound_are_refused_as_unseen_key():
    sl = StreamLearner.from_dict(
        {**CONFIG, "service": {"label_max_unseen_keys": 1, "retrain_in_worker": False}}
    )
    assert sl.label({"id": "e1", "key": "k1", "y": True}).kind == "parked"
    with pytest.raises(DecodeError) as caught:
        sl.label({"id": "e2", "key": "k2", "y": True})
    assert caught.value.reason == "unseen_key"


def test_bytes_dicts_and_decoded_inputs_give_the_same_prediction():
    sl = StreamLearner.from_dict(CONFIG)
    as_bytes = sl.event(b'{"id": "e1", "ts": 5, "x": {"a": 2.0}}', key=b"k")
    as_dict = sl.event({"id": "e2", "ts": 5, "x": {"a": 2.0}}, key="k")
    decoded = sl.event(Event("e3", "k", {"a": 2.0}, ts=5.0))
    preds = [r.prediction for r in (as_bytes, as_dict, decoded)]
    assert [p["id"] for p in preds] == ["e1", "e2", "e3"]
    assert all({k: v for k, v in p.items() if k != "id"} == {
        k: v for k, v in preds[0].items() if k != "id"
    } for p in preds)  # fmt: skip
    assert sl.label(Label("e1", "k", True)).kind == "learned"


def test_it_drives_the_same_processor_and_decides_as_the_replay_does():
    """The embedding is the engine the service and the replay drive, not a copy: on the
    same history it takes the replay's decisions at the same inputs, with the same scores."""
    messages = _history()
    sl = StreamLearner.from_dict(CONFIG)
    assert type(sl.processor) is Processor
    results = _feed(sl, messages)
    config = parse_config(CONFIG)
    history = [
        Event(**{"y": None, **m.value}) if m.topic == "events" else Label(**m.value)
        for m in messages
    ]
    learners: list = []
    named = resolve_policy(
        "config",
        RetrainConfig.from_dict(config.retrain),
        config=PolicyConfig.from_dict(config.policy),
    )
    replay(history, config, [named], learners=learners)
    for key in ("a", "b"):
        mine, theirs = sl.learners[key], learners[0][key]
        assert [(d.index, d.action, d.code) for d in mine.decisions] == [
            (d.index, d.action, d.code) for d in theirs.decisions
        ]
        assert mine.version == theirs.version >= 2  # the change was detected and recovered
        assert mine.evaluator.values() == theirs.evaluator.values()
    # Results carry the decisions as they were taken, and one prediction per request.
    decided = [d for r in results for d in r.decisions]
    assert {d.action for d in decided} >= {"retrain", "promote"}
    requests = [m for m in messages if m.topic == "events" and "y" not in m.value]
    assert sum(r.kind == "predicted" for r in results) == len(requests)


def test_snapshots_restore_where_they_left_off_and_skip_what_they_hold():
    """A checkpoint round, then a new embedding restores it: same state, and the inputs
    its snapshots hold are skipped (fed again, as after a crash, they are not learned twice)."""
    messages = _history(1200)
    store = MemoryCheckpointStore(signing_key=SIGNING_KEY)
    first = StreamLearner.from_dict(CONFIG, store=store)
    offsets: dict = {}
    _feed(first, messages[:1500], offsets)
    written = first.checkpoint(0, "periodic")
    assert sorted(h["key"] for h in written) == ["a", "b"]
    assert all(h["signature"] for h in written)
    rest = messages[1500:]
    _feed(first, rest, dict(offsets))

    second = StreamLearner.from_dict(CONFIG, store=store)
    plan = second.restore([0])
    assert sorted(r.key for r in plan.restored) == ["a", "b"]
    events, labels = second.topics.events, second.topics.labels
    assert plan.starts[events, 0] == offsets["events"] + 1
    assert plan.starts[labels, 0] == offsets["labels"] + 1
    replayed = _feed(second, messages, {})  # everything again, from offset 0
    assert {r.kind for r in replayed[:1500]} == {"skipped"}
    for key in ("a", "b"):
        assert second.learners[key].index == first.learners[key].index
        assert second.learners[key].version == first.learners[key].version
        assert second.learners[key].evaluator.values() == first.learners[key].evaluator.values()


def test_the_checkpoint_cadence_is_the_configs():
    """``every_events`` inputs of a partition make a round; a promotion snapshots its key."""
    store = MemoryCheckpointStore(signing_key=SIGNING_KEY)
    sl = StreamLearner.from_dict(CONFIG, store=store)
    offsets: dict = {}
    written: list = []
    for m in _history():
        _feed(sl, [m], offsets)
        written += sl.checkpoint_due()
    triggers = {h["trigger"] for h in written}
    assert triggers == {"periodic", "retrain"}
    retrain = [h for h in written if h["trigger"] == "retrain"]
    assert all(h["model_version"] >= 2 for h in retrain)
    catalog = store.read()
    assert sorted(catalog.keys()) == ["a", "b"]


def test_retrains_in_the_worker_process_decide_as_inline_ones():
    messages = _history(1200)
    inline = StreamLearner.from_dict(CONFIG)
    _feed(inline, messages)
    with StreamLearner.from_dict(CONFIG, retrain_in_worker=True) as worker:
        worker.start()
        _feed(worker, messages)
        for key in ("a", "b"):
            assert [(d.index, d.code) for d in worker.learners[key].decisions] == [
                (d.index, d.code) for d in inline.learners[key].decisions
            ]


def test_no_store_is_one_clear_error():
    sl = StreamLearner.from_dict(CONFIG)
    sl.event({"id": "e1", "x": {"a": 1.0}, "y": True})
    with pytest.raises(stream_learner.StreamLearnerError, match="without a store"):
        sl.checkpoint(0)
    assert sl.checkpoint_due() == []


def test_the_base_install_needs_no_faust():
    """faust-streaming is an extra: not a dependency, and the package (embedding API
    included) imports without loading it."""
    import subprocess
    import sys
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not any("faust" in dep for dep in project["dependencies"])
    assert any("faust-streaming" in dep for dep in project["optional-dependencies"]["faust"])
    code = (
        "import sys, stream_learner, stream_learner.embed, stream_learner.cli; "
        "stream_learner.StreamLearner; print('faust' in sys.modules, 'aiokafka' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_commands_pause_and_roll_back_as_in_the_service():
    """Control commands through the embedding: pause/resume, and a rollback to a version
    in the store, served as the key's next version (its snapshot written by the cadence)."""
    store = MemoryCheckpointStore(signing_key=SIGNING_KEY)
    sl = StreamLearner.from_dict(CONFIG, store=store)
    messages = _history()
    _feed(sl, messages[:400])
    sl.checkpoint(0)  # version 1 of both keys
    _feed(sl, messages[400:])
    assert sl.learners["a"].version >= 2
    sl.checkpoint(0)
    before = sl.learners["a"].version

    sl.command({"command": "pause", "key": "a"}, key="a")
    assert sl.event(
        {"id": "p1", "x": {"size": 1, "color": 1, "shape": 1}, "y": 1}, key="a"
    ).kind == ("paused")
    sl.command({"command": "resume", "key": "a"}, key="a")

    effects = sl.command({"command": "rollback", "key": "a", "version": 1}, key="a")
    rolled = [d for e in effects for d in getattr(e, "decisions", ()) if d.action == "rollback"]
    assert len(rolled) == 1 and sl.learners["a"].version == before + 1
    written = sl.checkpoint_due()
    assert [h["model_version"] for h in written if h["key"] == "a"] == [before + 1]
    with pytest.raises(stream_learner.StreamLearnerError, match="no valid snapshot"):
        sl.command({"command": "rollback", "key": "a", "version": 99}, key="a")
