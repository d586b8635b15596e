"""Producing the service's outputs (predictions, dead letters, control commands).

One idempotent producer per process. Messages are never given up on
(``message.timeout.ms=0``: librdkafka retries until the broker is back), so a
broker restart delays outputs but loses none; the service commits input offsets
only after :meth:`KafkaSink.flush` reports everything delivered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from stream_learner.errors import BrokerError, TransactionAborted
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

# How long past its own timeout a transactional call may run before it counts as stuck:
# librdkafka 2.x can block in send_offsets_to_transaction past any timeout while the group
# coordinator moves (librdkafka issues #5456, #5511; seen in the chaos suite's rolling
# restart), which would stop the service and make it deaf to SIGTERM.
_GRACE_S = 5.0

T = TypeVar("T")


class _Stuck(Exception):
    """A call that did not return within its limit (it still runs, on its own thread)."""


def call_within(call: Callable[[], T], limit: float) -> T:
    """``call()`` on a daemon thread: its result or its exception, or :class:`_Stuck` when it
    has not returned within ``limit`` seconds. A stuck call is left running (nothing can
    interrupt a C call); a daemon thread does not hold back the process's exit."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="kafka-transaction", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        raise _Stuck
    if "error" in box:
        raise box["error"]
    return box["result"]


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
        # Producers whose transaction got stuck: kept, not closed (closing would wait on the
        # stuck call); the next producer's init_transactions fences them.
        self._abandoned: list[Any] = []
        self.stuck_grace_s = _GRACE_S

    @property
    def producer(self):
        if self._producer is None:  # lazily: no network in __init__
            producer = Producer(self._conf)
            if self.transactional:
                try:  # also fences an abandoned predecessor (see commit_transaction)
                    producer.init_transactions(30)
                except KafkaException as exc:
                    err = exc.args[0]
                    raise BrokerError(
                        f"transactions could not start: {err.str()}",
                        code=err.name(),
                        description=err.str(),
                    ) from None
            self._producer = producer
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
        self,
        positions: Mapping[tuple[str, int], int],
        group_metadata: Any,
        timeout: float | None = None,
    ) -> None:
        """Commit the outputs produced since the last call together with the input
        ``positions``: consumers reading committed data see both or neither.

        ``timeout`` (default: the producer's ``transaction.timeout.ms``) bounds each step.
        A failure the producer survives aborts the transaction and raises
        :class:`TransactionAborted`: the caller gives the batch up and replays it from the
        last committed positions. A step stuck past its timeout abandons this producer (the
        next one fences it) and raises the same. A fatal error (this transactional id now
        belongs to another producer) raises ``BrokerError``: the caller must stop."""
        producer = self.producer
        if timeout is None:
            timeout = int(self._conf.get("transaction.timeout.ms", 60_000)) / 1000
        limit = timeout + self.stuck_grace_s
        offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
        try:
            if not self._in_transaction:
                producer.begin_transaction()
            call_within(
                lambda: producer.send_offsets_to_transaction(offsets, group_metadata, timeout),
                limit,
            )
            call_within(lambda: producer.commit_transaction(timeout), limit)
        except _Stuck:
            self._abandon()
            raise TransactionAborted(
                f"transaction stuck for more than {limit:.0f} s; producer abandoned (fenced "
                "by the next one)",
                code="_TXN_STUCK",
            ) from None
        except KafkaException as exc:
            err = exc.args[0]
            if err.fatal():
                raise BrokerError(
                    f"transaction failed: {err.str()}", code=err.name(), description=err.str()
                ) from None
            self._abort(producer, timeout, limit)
            raise TransactionAborted(
                f"transaction aborted: {err.str()}", code=err.name(), description=err.str()
            ) from None
        finally:
            self._in_transaction = False

    def _abort(self, producer: Any, timeout: float, limit: float) -> None:
        """Abort the open transaction; a producer that cannot is abandoned (and fenced)."""
        try:
            call_within(lambda: producer.abort_transaction(timeout), limit)
        except (_Stuck, KafkaException) as exc:
            log.warning("abandoning the transactional producer: abort failed (%s)", exc)
            self._abandon()

    def _abandon(self) -> None:
        if self._producer is not None:
            self._abandoned.append(self._producer)
            self._producer = None
        self._failures = []  # outputs of the given-up transaction: replayed, not lost

    def close(self, timeout: float = 10.0) -> int:
        remaining = self.flush(timeout)
        self._producer = None
        return remaining
