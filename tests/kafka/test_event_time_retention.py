"""History with old timestamps is safe by design, shown on a real broker.

Producers stamp input records with their event time. Time-based retention judges a
segment by its newest record timestamp, so a backfill of year-old events under a 7-day
``retention.ms`` is deletable as soon as its segments roll, read or not. The project's
topics therefore keep the event-time topics by size (``retention.ms = -1``,
``retention.bytes``), and ``topics apply`` warns about a finite ``retention.ms`` on them.

The broker here is a private one with a one-second retention check (the shared broker
checks every five minutes): the same year-old history goes into the project's events
topic and into one with the former 7-day retention; once the broker has deleted the
latter's old segments, the former must still hold every record, and a time lookup
(``replay --start TIME``) must land on the first record at or after that time.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream_learner.kafka.client import client_config
from stream_learner.kafka.history import parse_bound, read_kafka_history
from stream_learner.kafka.local import LocalBroker
from stream_learner.kafka.sink import KafkaSink
from stream_learner.kafka.topics import WARNING, apply, default_topics_file, load_topics, plan
from tests.conftest import free_port_pair
from tests.service.helpers import wait_until

pytestmark = pytest.mark.kafka

DAY_MS = 86_400_000
N = 2000


@pytest.fixture
def quick_retention_broker():
    broker = LocalBroker(
        port=free_port_pair(), overrides={"log.retention.check.interval.ms": "1000"}
    )
    try:
        broker.up(timeout=120)
        yield broker
    finally:
        broker.down(purge=True, grace=10)


def _watermarks(bootstrap: str, topic: str) -> tuple[int, int]:
    consumer = Consumer(client_config(bootstrap, {"group.id": "t"}))
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
    finally:
        consumer.close()


def test_a_year_old_backfill_is_kept_and_found_by_time(quick_retention_broker):
    bootstrap = quick_retention_broker.bootstrap
    admin = AdminClient(client_config(bootstrap))
    kept = load_topics(default_topics_file(), prefix="kept.")
    assert not [c for c in plan(kept, admin) if c.kind == WARNING]
    apply(admin, plan(kept, admin))
    # The same topics as declared before: events kept for 7 days by time.
    timed = load_topics(default_topics_file(), prefix="timed.")
    timed = dataclasses.replace(
        timed,
        topics=tuple(
            dataclasses.replace(t, config={**t.config, "retention.ms": str(7 * DAY_MS)})
            if t.name == "events"
            else t
            for t in timed.topics
        ),
    )
    changes = plan(timed, admin)
    warnings = [c for c in changes if c.kind == WARNING]
    assert [c.topic for c in warnings] == ["timed.events"]
    assert "retention.ms=604800000 (declared, 7 days) deletes records" in warnings[0].note
    apply(admin, changes)

    # 2,000 events of partition 0 spread over 40 days, starting 400 days ago: the broker
    # rolls a segment per 7 days of record time (segment.ms), so most are closed segments.
    start_ms = int(time.time() * 1000) - 400 * DAY_MS
    stamps = [start_ms + i * (40 * DAY_MS // N) for i in range(N)]
    sink = KafkaSink(bootstrap)
    for prefix in ("kept.", "timed."):
        for i, ts in enumerate(stamps):
            body = b'{"id": "e%d", "key": "k", "ts": %f, "x": {"u": 1.0}, "y": true}' % (
                i,
                ts / 1000,
            )
            sink.produce(prefix + "events", body, key="k", partition=0, timestamp_ms=ts)
    assert sink.close(30) == 0
    assert _watermarks(bootstrap, "kept.events") == (0, N)

    # Retention has run once the 7-day topic lost its old segments...
    wait_until(
        lambda: _watermarks(bootstrap, "timed.events")[0] > 0, 90, "retention on timed.events"
    )
    low, high = _watermarks(bootstrap, "timed.events")
    # The history a backfill meant to learn: gone (here all of it: the broker even rolls
    # the active segment when its records are past retention).
    assert high == N and low > 0
    # ... and a second check later, the project's topic still holds all of it.
    time.sleep(2.5)
    assert _watermarks(bootstrap, "kept.events") == (0, N)

    # replay --start TIME: the broker's time index still maps event times to offsets.
    middle = stamps[1234]
    history = read_kafka_history(
        bootstrap,
        {"events": "kept.events"},
        parse_bound(str(middle)),
        parse_bound(str(stamps[1500]), "--end"),
    )
    assert history.ranges[("kept.events", 0)] == (1234, 1500)
    assert [item.id for item in history.items] == [f"e{i}" for i in range(1234, 1500)]
