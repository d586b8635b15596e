"""The source never resets a position silently (``auto.offset.reset = error``): a
position below the log start is reported as lost input and reading goes on from the log
start; a group with nothing committed starts at the log start, reporting nothing."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer, TopicPartition

from stream_learner.kafka.client import client_config
from stream_learner.kafka.source import KafkaSource

pytestmark = pytest.mark.kafka


def _topic_with_a_deleted_head(bootstrap, admin, topic_factory) -> str:
    topic = topic_factory("gap")
    producer = Producer(client_config(bootstrap))
    for i in range(100):
        producer.produce(topic, str(i).encode(), key=b"k")
    assert producer.flush(30) == 0
    for f in admin.delete_records([TopicPartition(topic, 0, 50)]).values():
        f.result(timeout=30)
    return topic


def _first_offset(source: KafkaSource, timeout: float = 30.0) -> int:
    source.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = source.poll(100, 0.2)
            if records:
                return records[0].offset
        raise AssertionError("no record within the timeout")
    finally:
        source.close()


def test_a_start_below_the_log_start_is_reported_and_reading_goes_on_from_it(
    bootstrap, admin, topic_factory, unique_name
):
    topic = _topic_with_a_deleted_head(bootstrap, admin, topic_factory)
    lost = []
    source = KafkaSource(
        bootstrap,
        unique_name("group"),
        [topic],
        on_assign=lambda tps: {tp: 10 for tps_ in [tps] for tp in tps_},  # a stale position
        on_gap=lambda *gap: lost.append(gap),
    )
    assert _first_offset(source) == 50
    assert lost == [(topic, 0, 10, 50)]


def test_a_group_with_nothing_committed_starts_at_the_log_start(
    bootstrap, admin, topic_factory, unique_name
):
    topic = _topic_with_a_deleted_head(bootstrap, admin, topic_factory)
    lost = []
    source = KafkaSource(
        bootstrap, unique_name("group"), [topic], on_gap=lambda *gap: lost.append(gap)
    )
    assert _first_offset(source) == 50
    assert lost == []
    source = KafkaSource(bootstrap, unique_name("group"), [topic])
    source.start()
    try:
        assert source.log_starts([(topic, 0)]) == {(topic, 0): 50}
    finally:
        source.close()
