"""An exactly-once transaction that does not commit is given up, never left to hang the
service: ``KafkaSink.commit_transaction`` bounds each step, abandons a producer stuck inside
librdkafka, and the next transaction fences it, on the real broker."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from stream_learner.errors import TransactionAborted
from stream_learner.kafka.client import client_config
from stream_learner.kafka.sink import KafkaSink, _Stuck, call_within
from tests.conftest import drain


def test_call_within_returns_raises_or_gives_up_on_a_call_that_does_not_return():
    assert call_within(lambda: 42, 1.0) == 42
    with pytest.raises(ZeroDivisionError):
        call_within(lambda: 1 / 0, 1.0)
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(_Stuck):
        call_within(release.wait, 0.2)
    assert time.monotonic() - started < 5  # it did not wait for the call
    release.set()


def test_a_stuck_transaction_is_abandoned_and_fenced_by_the_next_one(
    bootstrap, topic_factory, unique_name
):
    out, inputs = topic_factory("out"), topic_factory("in")
    group = unique_name("group")
    consumer = Consumer(client_config(bootstrap, {"group.id": group}))
    try:
        consumer.subscribe([inputs])
        consumer.poll(1.0)  # joins the group: its metadata fences zombie commits
        metadata = consumer.consumer_group_metadata()
        sink = KafkaSink(bootstrap, transactional_id=unique_name("txn"))
        sink.start()
        for i in range(5):
            sink.produce(out, f"lost-{i}".encode())
        assert sink.flush(10) == 0
        # A step that does not return in time: no wait is short enough for a broker's
        # answer, so the producer is abandoned mid-transaction, as a hung one would be.
        sink.stuck_grace_s = -10.0
        with pytest.raises(TransactionAborted) as caught:
            sink.commit_transaction({(inputs, 0): 5}, metadata, timeout=10.0)
        assert caught.value.code == "_TXN_STUCK"
        assert len(sink._abandoned) == 1

        sink.stuck_grace_s = 5.0
        for i in range(3):
            sink.produce(out, f"kept-{i}".encode())  # a new producer, fencing the old
        assert sink.flush(10) == 0
        sink.commit_transaction({(inputs, 0): 3}, metadata)

        committed = [m.value().decode() for m in drain(bootstrap, out, committed=True)]
        assert committed == ["kept-0", "kept-1", "kept-2"]
        assert len(drain(bootstrap, out)) >= 8  # the abandoned records are there, aborted
        offsets = consumer.committed([TopicPartition(inputs, 0)], timeout=10)
        assert offsets[0].offset == 3
    finally:
        consumer.close()
