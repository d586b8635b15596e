"""A retention gap: the log start moved past a partition's restore position while the
service was down (retention, or records deleted by an operator), shown on the real broker.

``delete_records`` moves the log start exactly as time- or size-based retention does,
without waiting minutes for the broker's retention check. The restarted service says so
once (a warning naming the partition and the lost range, the lost-input counter, an
``input_lost`` decision on the key), continues from the log start and becomes ready; every
prediction request the log still holds is predicted once, none of the deleted ones.
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import orjson
import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

from stream_learner.kafka.client import client_config
from stream_learner.synth import Message
from tests.conftest import drain
from tests.service.helpers import ServiceProcess, produce, wait_until, write_config

pytestmark = pytest.mark.kafka

CHECKPOINTED, LOG_START, END = 3000, 4500, 6000


def _events(start: int, n: int) -> list[Message]:
    """Events of one key; every fifth is a prediction request (no label)."""
    out = []
    for i in range(start, start + n):
        x = {"u": float(i % 13), "v": float(i % 7)}
        body = {"id": f"e{i}", "key": "k", "ts": 1_700_000_000 + i, "x": x}
        if i % 5:
            body["y"] = x["u"] > x["v"]
        out.append(Message("events", "k", body))
    return out


def _requests(ids: range) -> set[str]:
    return {f"e{i}" for i in ids if i % 5 == 0}


def test_restart_over_a_retention_gap_says_so_and_becomes_ready(
    bootstrap, service_topics, prefix, tmp_path
):
    config = write_config(tmp_path, bootstrap, prefix, batch_size=200, every_events=1000)
    produce(bootstrap, prefix, _events(0, CHECKPOINTED))
    first = ServiceProcess(config, tmp_path / "first.log")
    try:
        wait_until(
            lambda: (
                first.sample("stream_learner_events_total", outcome="learned")
                + first.sample("stream_learner_events_total", outcome="predicted")
                >= CHECKPOINTED
            ),
            90,
            "the first events",
        )
        first.proc.send_signal(signal.SIGTERM)  # a shutdown round checkpoints at 3000
        assert first.wait(60) == 0
    finally:
        first.kill()
    # While the service is down: more input, then the log start moves past the checkpoint.
    produce(bootstrap, prefix, _events(CHECKPOINTED, END - CHECKPOINTED))
    admin = AdminClient(client_config(bootstrap))
    events = service_topics.events
    [partition] = [
        p
        for p in admin.list_topics(events, timeout=10).topics[events].partitions
        if _marks(bootstrap, events, p)[1] > 0
    ]
    for f in admin.delete_records([TopicPartition(events, partition, LOG_START)]).values():
        f.result(timeout=30)
    assert _marks(bootstrap, events, partition) == (LOG_START, END)

    started = time.monotonic()
    second = ServiceProcess(config, tmp_path / "second.log")
    try:
        wait_until(second.ready, 30 - (time.monotonic() - started), "ready after the gap")
        to_ready = time.monotonic() - started
        wait_until(
            lambda: (
                second.sample("stream_learner_events_total", outcome="learned")
                + second.sample("stream_learner_events_total", outcome="predicted")
                >= END - LOG_START
            ),
            60,
            "the retained events",
        )
        lost_total = second.sample("stream_learner_input_lost_total")
        second.proc.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        second.kill()
    print(f"time to ready after the gap: {to_ready:.1f} s")
    lines = [
        orjson.loads(x) for x in (tmp_path / "second.log").read_bytes().splitlines()
        if x.startswith(b"{")
    ]  # fmt: skip
    lost = [rec for rec in lines if rec.get("event") == "input_lost"]
    assert len(lost) == 1, lost
    assert lost[0]["level"] in ("WARNING", "warning"), lost[0]
    assert lost[0]["partition"] == f"{events}[{partition}]"
    assert (lost[0]["first_lost"], lost[0]["log_start"], lost[0]["lost"]) == (
        CHECKPOINTED,
        LOG_START,
        LOG_START - CHECKPOINTED,
    )
    assert lost_total == LOG_START - CHECKPOINTED
    decisions = [
        rec for rec in lines if rec.get("event") == "decision" and rec.get("code") == "input_lost"
    ]
    assert [d["key"] for d in decisions] == ["k"]
    # Nothing else lost, nothing twice: every request the log held when it was read is
    # predicted once; the deleted ones never.
    predicted = Counter(
        orjson.loads(m.value())["id"] for m in drain(bootstrap, service_topics.predictions)
    )
    assert max(predicted.values()) == 1
    assert set(predicted) == _requests(range(CHECKPOINTED)) | _requests(range(LOG_START, END))


def _marks(bootstrap: str, topic: str, partition: int) -> tuple[int, int]:
    from confluent_kafka import Consumer

    consumer = Consumer(client_config(bootstrap, {"group.id": "t"}))
    try:
        return consumer.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=10, cached=False
        )
    finally:
        consumer.close()
