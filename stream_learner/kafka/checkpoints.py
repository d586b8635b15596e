"""The checkpoint store on Kafka: the compacted checkpoints topic as a :class:`LogStore`.

The format (key scheme, catalog, slot rules, staging) is the core's, in
:mod:`stream_learner.core.checkpoints`, where :class:`MemoryCheckpointStore` runs it without a
broker; this module only moves the records: producing them to partition 0 of the topic
(the topic is declared with one, so a snapshot's chunks always precede its manifest in the
log) and reading the partition back from the start, waiting out a topic that has no leader
yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from stream_learner.core.checkpoints import LogStore
from stream_learner.errors import BrokerError
from stream_learner.kafka.client import client_config
from stream_learner.kafka.sink import KafkaSink

log = logging.getLogger(__name__)

__all__ = ["CheckpointStore"]

PARTITION = 0
MAX_MESSAGE_BYTES = 8_388_608  # the topic's max.message.bytes

_PRODUCER = {
    "compression.type": "none",  # payloads are zlib-compressed already
    "message.max.bytes": MAX_MESSAGE_BYTES,
    "batch.size": 4 * 1024 * 1024,  # a few chunks per request, far below the topic limit
    "linger.ms": 5,
}
_CONSUMER = {
    "group.id": "stream-learner.checkpoint-reader",  # required by librdkafka; never joined
    "enable.auto.commit": False,
    "enable.partition.eof": True,
    "auto.offset.reset": "earliest",
    # One partition, read once from start to end: a fetch of 16 MiB keeps the reader busy,
    # and the prefetch queue (librdkafka's default: 64 MiB) need not hold more than two.
    "fetch.max.bytes": 16 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    "queued.max.messages.kbytes": 32 * 1024,
}


class CheckpointStore(LogStore):
    """The store on the compacted checkpoints topic.

    ``publish`` blocks until the broker has every record (idempotent producer,
    ``acks=all``) and raises ``BrokerError`` otherwise. ``read`` assigns partition 0
    without a consumer group and reads from the start to the high watermark seen when it
    began, so it takes time in proportion to the topic's compacted size, not its history;
    its ``timeout`` is the longest wait for the next record (a million keys' snapshots take
    longer than any fixed bound on the whole read).
    ``extra`` is passed to librdkafka (security settings).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        signing_key: bytes | None,
        keep_versions: int = 3,
        chunk_bytes: int = 1_048_576,
        extra: Mapping[str, Any] | None = None,
        delivery_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            signing_key=signing_key, keep_versions=keep_versions, chunk_bytes=chunk_bytes
        )
        self.bootstrap = bootstrap
        self.topic = topic
        self.delivery_timeout = delivery_timeout
        self._extra = dict(extra or {})
        self._sink = KafkaSink(
            bootstrap,
            {**_PRODUCER, "message.timeout.ms": int(delivery_timeout * 1000), **self._extra},
        )

    def __repr__(self) -> str:
        return (
            f"CheckpointStore({self.bootstrap!r}, {self.topic!r}, "
            f"signed={self._signing_key is not None}, keep_versions={self.keep_versions})"
        )

    def close(self) -> None:
        self._sink.close(self.delivery_timeout)

    def _write(self, records: list[tuple[str, bytes | None]]) -> None:
        for key, value in records:
            self._sink.produce(self.topic, value, key=key, partition=PARTITION)
        try:
            remaining = self._sink.flush(self.delivery_timeout + 5.0)
        except BrokerError as exc:
            raise BrokerError(f"checkpoint write to {self.topic} failed: {exc}") from None
        if remaining:
            raise BrokerError(
                f"checkpoint write to {self.topic}: {remaining} record(s) not delivered "
                f"within {self.delivery_timeout:g}s"
            )

    def _watermarks(self, consumer: Consumer, deadline: float) -> tuple[int, int]:
        """The partition's offsets. A topic created moments ago may have no leader yet:
        that is waited out, with backoff, until ``deadline``; a missing topic is not."""
        delay = 0.1
        while True:
            left = deadline - time.monotonic()
            try:
                # Each ask bounded, so one that hangs (a leader still being elected on a
                # loaded broker) leaves time to ask again.
                return consumer.get_watermark_offsets(
                    TopicPartition(self.topic, PARTITION),
                    timeout=max(min(left, 5.0), 0.1),
                    cached=False,
                )
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if left > delay and self._exists(consumer, left):
                    log.warning(
                        "checkpoint topic %s not readable yet (%s); retrying", self.topic, err
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise BrokerError(
                    f"cannot read checkpoint topic {self.topic!r}: {err}",
                    code=getattr(err, "name", lambda: None)(),
                ) from None

    def _exists(self, consumer: Consumer, timeout: float) -> bool:
        try:
            meta = consumer.list_topics(self.topic, timeout=min(timeout, 5.0)).topics.get(
                self.topic
            )
        except KafkaException:
            return True  # the broker did not answer: not a proof of absence
        return meta is not None and (
            meta.error is None or meta.error.code() != KafkaError.UNKNOWN_TOPIC_OR_PART
        )

    def _scan(self, timeout: float) -> Iterator[tuple[str, bytes | None]]:
        deadline = time.monotonic() + timeout
        consumer = Consumer(client_config(self.bootstrap, {**_CONSUMER, **self._extra}))
        try:
            low, high = self._watermarks(consumer, deadline)
            if high <= low:
                return
            consumer.assign([TopicPartition(self.topic, PARTITION, low)])
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerError(
                        f"checkpoint topic {self.topic!r} not read to offset {high}: "
                        f"no record for {timeout:g}s"
                    )
                # consume() waits for a full batch or the timeout: keep the timeout short.
                messages = consumer.consume(1000, timeout=min(remaining, 0.1))
                if messages:  # a timeout bounds a stall, not the read: a big topic takes long
                    deadline = time.monotonic() + timeout
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            if msg.offset() >= high:
                                return
                            continue
                        raise BrokerError(
                            f"reading checkpoint topic {self.topic!r}: {err.str()}",
                            code=err.name(),
                        )
                    key = msg.key()
                    if key is not None:
                        yield key.decode("utf-8", "replace"), msg.value()
                    if msg.offset() >= high - 1:
                        return
        finally:
            consumer.close()
