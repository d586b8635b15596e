"""Producing the service's outputs (predictions, dead letters, control commands).

One idempotent producer per process. Messages are never given up on
(``message.timeout.ms=0``: librdkafka retries until the broker is back), so a
broker restart delays outputs but loses none; the service commits input offsets
only after :meth:`KafkaSink.flush` reports everything delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_learner.errors import BrokerError
from stream_learner.kafka.client import client_config
from stream_learner.kafka.health import KafkaHealth

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes | str]]

# Java clients hash keys with murmur2; so do we, so a key lands on the same
# partition whichever client produced it (events, labels and control commands
# of one model key must meet on one partition number).
_PRODUCER_DEFAULTS = {
    "partitioner": "murmur2_random",
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "compression.type": "lz4",
    "message.timeout.ms": 0,
    # Only failures are reported back: a Python callback per delivered message would cost
    # more than producing it, and flush() already waits for every delivery.
    "delivery.report.only.error": True,
    # Dead letters carry the original bytes, up to the topics' max.message.bytes (8 MiB).
    "message.max.bytes": 8_388_608 + 65_536,
}


class KafkaSink:
    """A thin producer: ``produce`` buffers, ``flush`` waits for every delivery."""

    def __init__(
        self,
        bootstrap: str,
        extra: Mapping[str, Any] | None = None,
        *,
        transactional_id: str | None = None,
        health: KafkaHealth | None = None,
    ) -> None:
        conf = {**_PRODUCER_DEFAULTS, **(extra or {})}
        if transactional_id:
            conf["transactional.id"] = transactional_id
            # A crashed instance's open transaction holds back read_committed readers until
            # the coordinator aborts it: keep that short unless configured otherwise.
            conf.setdefault("transaction.timeout.ms", 10_000)
        self._conf = client_config(bootstrap, conf)
        self._conf["on_delivery"] = self._on_delivery
        self._conf["error_cb"] = self._on_error
        self.health = health or KafkaHealth()
        self.transactional = bool(transactional_id)
        self._in_transaction = False
        self._producer = None
        self._failures: list[str] = []

    @property
    def producer(self):
        if self._producer is None:  # lazily: no network in __init__
            self._producer = Producer(self._conf)
            if self.transactional:
                self._producer.init_transactions(30)
        return self._producer

    def start(self) -> None:
        """Connect now rather than at the first output. A transactional producer's start
        fences a predecessor with the same transactional id and aborts its open transaction:
        until then, offsets it sent hold back this instance's committed-offset reads."""
        self.producer  # noqa: B018 - the property creates the producer

    def _on_error(self, err) -> None:
        if err.fatal():
            log.error("fatal kafka producer error: %s", err.str())
        elif err.code() != KafkaError._ALL_BROKERS_DOWN:  # undelivered outputs say it better
            log.warning("kafka producer error: %s", err.str())

    def _on_delivery(self, err, msg) -> None:
        if err is not None:
            self._failures.append(f"{msg.topic()}: {err.str()}")

    def produce(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        timestamp_ms: int | None = None,
    ) -> None:
        producer = self._producer or self.producer
        if self.transactional and not self._in_transaction:
            producer.begin_transaction()
            self._in_transaction = True
        if headers is None and partition is None and timestamp_ms is None:
            try:
                producer.produce(topic, value, key)  # the common case (predictions)
                return
            except BufferError:
                pass
        kwargs: dict[str, Any] = {"key": key, "headers": headers}
        if partition is not None:
            kwargs["partition"] = partition
        if timestamp_ms is not None:  # event time, so consumers can merge topics by it
            kwargs["timestamp"] = timestamp_ms
        while True:
            try:
                producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                # Local queue full: let deliveries complete until there is room.
                producer.poll(0.1)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` for deliveries; return how many are still in flight.

        A permanent delivery failure raises ``BrokerError``: the caller must not
        commit input offsets past outputs that were lost.
        """
        if self._producer is None:
            return 0
        remaining = self._producer.flush(timeout)
        if remaining:
            self.health.problem("delivery", f"{remaining} output message(s) waiting")
        else:
            self.health.resolved("delivery")
        if self._failures:
            failures, self._failures = self._failures, []
            raise BrokerError(f"{len(failures)} output message(s) failed: {failures[0]}")
        return remaining

    def commit_transaction(
        self, positions: Mapping[tuple[str, int], int], group_metadata: Any, timeout: float = 30
    ) -> None:
        """Commit the outputs produced since the last call together with the input
        ``positions``: consumers reading committed data see both or neither.

        A failure aborts the transaction and raises ``BrokerError``; the caller must not
        go on (a restart replays from the last committed positions and emits again)."""
        producer = self.producer
        try:
            if not self._in_transaction:
                producer.begin_transaction()
                self._in_transaction = True
            offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
            producer.send_offsets_to_transaction(offsets, group_metadata, timeout)
            producer.commit_transaction(timeout)
        except KafkaException as exc:
            err = exc.args[0]
            if err.txn_requires_abort():
                producer.abort_transaction(timeout)
            raise BrokerError(
                f"transaction failed: {err.str()}", code=err.name(), description=err.str()
            ) from None
        finally:
            self._in_transaction = False

    def close(self, timeout: float = 10.0) -> int:
        remaining = self.flush(timeout)
        self._producer = None
        return remaining
