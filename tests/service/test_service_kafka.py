"""The service end to end on the real broker: no mocks of Kafka anywhere here."""

from __future__ import annotations

import signal
import time
from collections import Counter

import orjson
import pytest

from stream_learner.cli.service_cmd import build_service
from stream_learner.config import load_config
from stream_learner.core.race import SOURCES
from stream_learner.synth import Message, demo_messages
from tests.conftest import drain
from tests.service.helpers import (
    ServiceProcess,
    produce,
    run_in_thread,
    sample,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.kafka


def _ids(messages) -> Counter:
    return Counter(orjson.loads(m.value())["id"] for m in messages)


def test_drifting_stream_with_delayed_labels_end_to_end(
    bootstrap, service_topics, prefix, tmp_path
):
    msgs = list(demo_messages(6000, change_at=3000, unlabelled_share=0.2, label_delay=50, seed=3))
    requests = [m for m in msgs if m.topic == "events" and "y" not in m.value]
    labels = [m for m in msgs if m.topic == "labels"]
    # Produced before the service starts: the event-time merge then sees the whole history,
    # and the run is the same every time (a live producer races the merge).
    produce(bootstrap, prefix, msgs)
    config = load_config(write_config(tmp_path, bootstrap, prefix))
    built = build_service(config, bootstrap, http_port=0)
    built.http.start()
    stop, thread, errors = run_in_thread(built.service)
    try:
        service = built.service
        wait_until(
            lambda: (
                service.learners.get("default") is not None
                and service.learners["default"].index >= len(msgs)
            ),
            60,
            "all inputs",
        )
        learner = service.learners["default"]
        service.end_batch()  # metrics of the last batch
        text = _scrape(built.http.url)
    finally:
        stop.set()
        thread.join(30)
        built.http.stop()
    assert not errors
    # Every request got exactly one prediction, with the model version that served it.
    predictions = drain(bootstrap, service_topics.predictions)
    assert _ids(predictions) == Counter(m.value["id"] for m in requests)
    first = orjson.loads(predictions[0].value())
    assert set(first) >= {"id", "key", "y_pred", "model_version", "lineage", "ts"}
    # Every delayed label found its prediction and was learned with the original features.
    assert learner.joiner.joined == len(labels)
    assert learner.learned == 6000 - len(requests) + len(labels)
    # The drift after event 3000 was detected, a retrain ran and its outcome was recorded.
    performance = [(d.action, d.index) for d in learner.decisions if d.trigger == "performance"]
    retrain_at = next(index for action, index in performance if action == "retrain")
    assert 3000 < retrain_at < 3000 + 1000 + 1149  # inputs: events plus the labels before it
    assert any(action == "promote" for action, _ in performance)
    assert learner.version == 2  # with event-time order the run is deterministic: promoted
    # The metrics endpoint shows all of it.
    assert sample(text, "stream_learner_events_total", outcome="predicted") == len(requests)
    assert sample(text, "stream_learner_labels_total", result="joined") == len(labels)
    assert sample(text, "stream_learner_drift_detections_total", signal="performance") >= 1
    # The new version came from the race (a shadow, or the window candidate racing it).
    promoted = [sample(text, "stream_learner_race_promotions_total", source=s) for s in SOURCES]
    assert sum(promoted) == 1
    assert sample(text, "stream_learner_model_version", key="default") == learner.version
    assert sample(text, "stream_learner_prequential_metric", key="default", window="rolling") > 0.8


def _scrape(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_bad_input_is_dead_lettered_and_the_good_around_it_is_processed(
    bootstrap, service_topics, prefix, tmp_path
):
    from stream_learner.kafka.sink import KafkaSink

    good = [
        Message("events", "default", {"id": f"g{i}", "x": {"a": float(i % 7)}}) for i in range(40)
    ]
    bad = [
        (b"this is not json", "not_json"),
        (b'{"id": "b1", "x": [1, 2]}', "x_not_object"),
        (b'{"id": "b2", "x": {"a": NaN}}', "not_json"),
        (b'{"id": "b3", "x": {"a": 1e999}}', "non_finite"),
        (b'{"id": "b4", "x": {"a": 1}, "y": {"nested": true}}', "bad_label"),
        (b'{"id": "b5", "x": {"a": 1}, "y": "maybe"}', "bad_label"),  # a string for a binary task
        (b'{"id": "b6"}', "missing_x"),
        (
            b'{"id": "b7", "x": {"a": 1}, "pad": "' + b"z" * (5 * 1024 * 1024) + b'"}',
            "payload_too_large",
        ),
    ]
    sink = KafkaSink(bootstrap)
    bad_values = iter(raw for raw, _ in bad)
    for i, msg in enumerate(good):
        if i % 5 == 0:  # a bad message before every fifth good one
            sink.produce(service_topics.events, next(bad_values), key="default")
        sink.produce(service_topics.events, orjson.dumps(msg.value), key="default")
    assert sink.close(30) == 0
    config = load_config(write_config(tmp_path, bootstrap, prefix))
    built = build_service(config, bootstrap, http_port=0)
    stop, thread, errors = run_in_thread(built.service)
    try:
        wait_until(
            lambda: len(drain(bootstrap, service_topics.predictions)) >= 40,
            60,
            "predictions for all good events",
        )
        wait_until(
            lambda: len(drain(bootstrap, service_topics.dead_letters)) >= 8, 60, "dead letters"
        )
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert _ids(drain(bootstrap, service_topics.predictions)) == Counter(f"g{i}" for i in range(40))
    dead = drain(bootstrap, service_topics.dead_letters)
    reasons = [dict(m.headers())["dlq.reason"].decode() for m in dead]
    assert reasons == [reason for _, reason in bad]
    big = dead[-1]
    assert len(big.value()) > 5 * 1024 * 1024  # the original bytes, untouched
    headers = dict(big.headers())
    assert headers["dlq.source.topic"].decode() == service_topics.events
    assert int(headers["dlq.source.offset"]) >= 0 and headers["dlq.detail"]


def test_sigterm_mid_stream_exits_cleanly_and_loses_nothing(
    bootstrap, service_topics, prefix, tmp_path
):
    n = 40_000
    keys = ("a", "b", "c", "d")
    msgs = [
        Message(
            "events",
            keys[i % 4],
            {"id": f"r{i}", "key": keys[i % 4], "x": {"u": float(i % 13), "v": float(i % 5)}},
        )
        for i in range(n)
    ]
    produce(bootstrap, prefix, msgs)
    config = write_config(tmp_path, bootstrap, prefix, batch_size=500)
    first = ServiceProcess(config, tmp_path / "first.log")
    try:
        # Stopped at its first batch's predictions, looked for often: the service reads
        # the whole stream in well under a second (the SIGTERM once landed after it).
        wait_until(
            lambda: first.sample("stream_learner_events_total", outcome="predicted") > 0,
            60,
            "the first predictions",
            interval=0.01,
        )
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.log_path.read_text()[-3000:]
    finally:
        first.kill()
    done_first = len(drain(bootstrap, service_topics.predictions))
    assert 0 < done_first < n, "the SIGTERM did not land mid-stream"
    second = ServiceProcess(config, tmp_path / "second.log")
    try:
        wait_until(
            lambda: len(drain(bootstrap, service_topics.predictions)) >= n,
            120,
            "the rest of the predictions",
        )
        second.proc.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        second.kill()
    counts = _ids(drain(bootstrap, service_topics.predictions))
    assert len(counts) == n and max(counts.values()) == 1  # every event once, none twice


def test_two_processes_share_the_partitions_and_process_everything_once(
    bootstrap, service_topics, prefix, tmp_path
):
    config = write_config(tmp_path, bootstrap, prefix)
    a = ServiceProcess(config, tmp_path / "a.log")
    b = ServiceProcess(config, tmp_path / "b.log")
    try:

        def both_assigned():
            return (
                a.sample("stream_learner_assigned_partitions") > 0
                and b.sample("stream_learner_assigned_partitions") > 0
            )

        wait_until(both_assigned, 90, "both instances to get partitions")
        n = 20_000
        keys = [f"k{i}" for i in range(16)]
        produce(
            bootstrap,
            prefix,
            (
                Message("events", keys[i % 16], {"id": f"r{i}", "x": {"u": float(i % 11)}})
                for i in range(n)
            ),
        )
        wait_until(
            lambda: len(drain(bootstrap, service_topics.predictions)) >= n, 120, "all predictions"
        )
        per_instance = [
            a.sample("stream_learner_events_total", outcome="predicted"),
            b.sample("stream_learner_events_total", outcome="predicted"),
        ]
        assigned = [
            a.sample("stream_learner_assigned_partitions"),
            b.sample("stream_learner_assigned_partitions"),
        ]
        for proc in (a, b):
            proc.proc.send_signal(signal.SIGTERM)
        assert a.wait(60) == 0 and b.wait(60) == 0
    finally:
        a.kill()
        b.kill()
    counts = _ids(drain(bootstrap, service_topics.predictions))
    assert len(counts) == n and max(counts.values()) == 1
    assert sum(per_instance) == n and min(per_instance) > 0  # both did real work
    assert assigned == [6, 6]  # 3 input topics x 2 of 4 partitions each


def test_labels_for_too_many_unseen_keys_are_dead_lettered_not_given_learners(
    bootstrap, service_topics, prefix, tmp_path
):
    """A label may open its key's learner before the key's first event, but only for
    ``label_max_unseen_keys`` keys at a time: a flood of made-up keys gets dead letters.
    (The keys spread over partitions, so which of them come first is the broker's.)"""
    config = load_config(
        write_config(tmp_path, bootstrap, prefix),
        env={"STREAM_LEARNER__SERVICE__LABEL_MAX_UNSEEN_KEYS": "3"},
    )
    built = build_service(config, bootstrap, http_port=0)
    service = built.service
    stop, thread, errors = run_in_thread(service)

    def label(i: int) -> Message:
        return Message("labels", f"u{i}", {"id": f"l{i}", "key": f"u{i}", "y": True})

    def dead_ids() -> list[str]:
        return [
            orjson.loads(m.value())["id"] for m in drain(bootstrap, service_topics.dead_letters)
        ]

    try:
        produce(bootstrap, prefix, [label(i) for i in range(6)])
        wait_until(lambda: len(dead_ids()) >= 3, 60, "3 dead letters")
        opened = set(service.learners)
        # The first event of one of them: it is no longer unseen, which makes room for one.
        seen = sorted(opened)[0]
        produce(bootstrap, prefix, [Message("events", seen, {"id": "e0", "x": {"a": 1.0}})])
        wait_until(lambda: drain(bootstrap, service_topics.predictions), 60, "its prediction")
        produce(bootstrap, prefix, [label(6), label(7)])
        wait_until(lambda: len(dead_ids()) >= 4, 60, "4 dead letters")
        learners = set(service.learners)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    dead = drain(bootstrap, service_topics.dead_letters)
    assert [dict(m.headers())["dlq.reason"].decode() for m in dead] == ["unseen_key"] * 4
    ids = set(dead_ids())
    first, [last] = ids & {f"l{i}" for i in range(6)}, ids & {"l6", "l7"}
    assert len(opened) == 3 and opened | {f"u{i[1:]}" for i in first} == {f"u{i}" for i in range(6)}
    assert learners == opened | ({"u6", "u7"} - {f"u{last[1:]}"})


def test_what_one_event_may_hold_is_bounded_with_a_reason_per_bound(
    bootstrap, service_topics, prefix, tmp_path
):
    """Features per event, name length, and the distinct names a key gathers: each bound
    dead-letters with its own reason, and the events around them are predicted. The last
    bound is per key: another key still takes the names one key may no longer add."""
    config = load_config(
        write_config(tmp_path, bootstrap, prefix),
        env={
            "STREAM_LEARNER__SERVICE__MAX_EVENT_FEATURES": "4",
            "STREAM_LEARNER__SERVICE__MAX_FEATURE_NAME_CHARS": "8",
            "STREAM_LEARNER__LEARNER__MAX_FEATURE_NAMES": "6",
        },
    )

    def event(id_: str, key: str, x: dict) -> Message:
        return Message("events", key, {"id": id_, "key": key, "x": x})

    stream = [
        event("g0", "k", {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}),  # 4 names: fine
        event("b0", "k", {f"f{i}": 1.0 for i in range(5)}),  # 5 features in one event
        event("b1", "k", {"a" * 9: 1.0}),  # a 9-character name
        event("g1", "k", {"a": 1.0, "e": 1.0, "f": 1.0}),  # 6 names for k: the limit
        event("b2", "k", {"a": 1.0, "g": 1.0}),  # a 7th name for k
        event("g2", "k", {"a": 2.0, "f": 0.5}),  # known names go on
        event("g3", "other", {"g": 1.0, "h": 1.0}),  # another key, its own names
    ]
    produce(bootstrap, prefix, stream)
    built = build_service(config, bootstrap, http_port=0)
    stop, thread, errors = run_in_thread(built.service)
    try:
        wait_until(
            lambda: len(drain(bootstrap, service_topics.predictions)) >= 4, 60, "4 predictions"
        )
        wait_until(
            lambda: len(drain(bootstrap, service_topics.dead_letters)) >= 3, 60, "3 dead letters"
        )
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert _ids(drain(bootstrap, service_topics.predictions)) == Counter(["g0", "g1", "g2", "g3"])
    dead = {
        orjson.loads(m.value())["id"]: dict(m.headers())
        for m in drain(bootstrap, service_topics.dead_letters)
    }
    assert {id_: h["dlq.reason"].decode() for id_, h in dead.items()} == {
        "b0": "too_many_features",
        "b1": "feature_name_too_long",
        "b2": "too_many_feature_names",
    }
    assert "max_feature_names = 6" in dead["b2"]["dlq.detail"].decode()


def test_the_lag_gauge_reads_zero_on_every_input_partition_once_all_is_committed(
    bootstrap, service_topics, prefix, tmp_path
):
    """The lag is the broker's view (the group's committed offsets against the partitions'
    ends), refreshed while no batch comes: 0 everywhere once everything is consumed and
    committed, including partitions that never held a record (the control topic here)."""
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as KafkaTopicPartition

    from stream_learner.kafka.client import client_config

    keys = [f"k{i}" for i in range(16)]  # spread over every partition
    messages = list(
        demo_messages(300, keys=tuple(keys), unlabelled_share=0.2, label_delay=20,
                      t0=time.time() - 300 * len(keys))
    )  # fmt: skip
    produce(bootstrap, prefix, messages)
    config = load_config(write_config(tmp_path, bootstrap, prefix, batch_size=500))
    built = build_service(config, bootstrap, http_port=0)
    registry = built.service.metrics.registry
    stop, thread, errors = run_in_thread(built.service)
    partitions = [
        (topic, p) for topic in service_topics.inputs for p in range(4)
    ]  # topics/topics.toml: 4 partitions each

    def lags() -> dict:
        return {
            (t, p): registry.get_sample_value(
                "stream_learner_consumer_lag",
                {"topic": t, "partition": str(p), "runtime": "service"},
            )
            for t, p in partitions
        }

    try:
        wait_until(lambda: built.service.caught_up, 90, "the service to catch up")
        wait_until(lambda: set(lags().values()) == {0.0}, 30, "lag 0 everywhere", interval=0.5)
        assert registry.get_sample_value("stream_learner_ready", {"runtime": "service"}) == 1
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    # What the gauge said is what the broker says: the group committed every partition's end.
    probe = Consumer(client_config(bootstrap, {"group.id": config.kafka.group_id}))
    try:
        committed = probe.committed([KafkaTopicPartition(t, p) for t, p in partitions], timeout=10)
        for tp in committed:
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            assert tp.offset == high or (high == low == 0), (tp, low, high)
    finally:
        probe.close()


def _semaphores() -> set[str]:
    from pathlib import Path

    return {p.name for p in Path("/dev/shm").glob("sem.*")}


def test_a_killed_instances_successor_logs_only_json_and_nothing_leaks(
    bootstrap, service_topics, prefix, tmp_path
):
    """Two instances one after the other on one log stream, the first killed with SIGKILL
    while its retrain worker runs: every line of the stream is JSON (Python's warnings and
    the worker's included), and the first instance's semaphores are gone."""
    produce(bootstrap, prefix, list(demo_messages(300, keys=("a", "b"), t0=time.time() - 600)))
    config = write_config(tmp_path, bootstrap, prefix)
    log = tmp_path / "service.log"
    before = _semaphores()
    first = ServiceProcess(config, log, append=True)  # one stream: every writer appends
    try:
        wait_until(first.ready, 90, "the first instance to be ready")
        time.sleep(1.0)  # the worker is up and warmed
        started = _semaphores() - before
        first.proc.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        first.kill()
    second = ServiceProcess(config, log, append=True)
    try:
        wait_until(second.ready, 90, "the successor to be ready")
        time.sleep(3.0)  # the first instance's worker and helpers end within a second or two
        second.proc.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        second.kill()
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]  # each JSON
    assert [r["event"] for r in lines if r["event"] in ("started", "stopped")] == [
        "started",
        "started",
        "stopped",
    ]
    assert not (started & _semaphores()), "semaphores of the killed instance remain"
