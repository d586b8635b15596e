"""Consuming the service's inputs in batches from one consumer group.

The group subscribes to the events, labels and control topics. They share one
partition count and are assigned with the ``range`` strategy, so partition *p*
of each lands on the same instance: a model key's events, delayed labels and
commands meet in one process, which is that key's single writer.

Offsets are never auto-committed: the service commits, per partition, the
position after the last message whose outputs were delivered.

Nor are they ever reset silently. The service gives every assigned partition an explicit
start, never below its log start; if the log start passes a partition's position later
(retention deleting records not read yet), the fetch fails (``auto.offset.reset`` is
``error``) and ``on_gap(topic, partition, first_lost, log_start)`` is told before the
source reads on from the log start.

Partitions taken away are either *revoked* (a rebalance this member takes part in: the
service hands them off, ``on_revoke``) or *lost* (the group gave them to another member
while this one was not heartbeating: ``on_lost``, nothing of their state is handed over).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from stream_learner.errors import BrokerError
from stream_learner.kafka.client import client_config
from stream_learner.kafka.health import KafkaHealth
from stream_learner.kafka.identity import Identity

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]

SESSION_TIMEOUT_MS = 30_000

_CONSUMER_DEFAULTS = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "isolation.level": "read_committed",
    # Every start is explicit (see the module docstring): an out-of-range position is an
    # error the source reports as lost input, never a silent jump.
    "auto.offset.reset": "error",
    "partition.assignment.strategy": "range",
    "statistics.interval.ms": 2000,
    "fetch.wait.max.ms": 50,
    "queued.max.messages.kbytes": 65536,
    # How long a member that stopped heartbeating keeps its partitions. With static
    # membership (the default, see kafka/identity.py) a restarted instance takes them back
    # at once whatever this is; it bounds how long the partitions of an instance that does
    # not come back (a crash without restart, a scale-down: a static member does not leave
    # the group on close) wait before the others take them over.
    "session.timeout.ms": SESSION_TIMEOUT_MS,
    "max.poll.interval.ms": 300000,
}


# Answers worth asking again for: the broker is slow, or leadership is still settling.
_TRANSIENT = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)

_FRESH_STATS_S = 5  # statistics older than this (seconds) say nothing about brokers now


class Record(NamedTuple):
    """One consumed message, reduced to what the service needs (a NamedTuple: one is
    built per message, and it is four times cheaper to build than a frozen dataclass)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


# One Record is built per message: tuple.__new__ skips the NamedTuple's Python-level
# constructor (a frame per message) and builds the same object.
_new_record = tuple.__new__


def to_record(msg: Any) -> Record:
    """A consumed message (without error) as a Record; no timestamp is ``None``."""
    ts_type, ts = msg.timestamp()
    ts = ts if ts_type else None
    return _new_record(
        Record, (msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), ts)
    )


def partition_lag(pstats: Mapping[str, Any], committed_reads: bool = True) -> int | None:
    """Messages between the group's committed offset and the partition's end, from one
    partition's statistics; ``None`` while the end is unknown. The end is the last stable
    offset under ``read_committed``. A partition the group never committed counts from the
    log's start, so an empty one is 0 behind, not unknown."""
    end = pstats.get("ls_offset", -1) if committed_reads else -1
    if end < 0:
        end = pstats.get("hi_offset", -1)
    if end < 0:
        return None
    base = pstats.get("committed_offset", -1)
    if base < 0:
        base = pstats.get("lo_offset", -1)
    if base < 0:
        return None
    return max(0, end - base)


class KafkaSource:
    """A group consumer with explicit commits and per-partition lag from statistics.

    ``on_assign(partitions)`` runs before the first message of newly assigned
    partitions and may return start offsets for some of them (a restored checkpoint's
    positions); ``on_revoke(partitions)`` runs before they are taken away, so the
    service can flush and commit (and later hand state off) in time; ``on_lost``
    instead when they are gone already (see the module docstring).
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Sequence[str],
        *,
        extra: Mapping[str, Any] | None = None,
        on_assign: Callable[[list[TopicPartition]], Mapping[TopicPartition, int] | None]
        | None = None,
        on_revoke: Callable[[list[TopicPartition]], None] | None = None,
        on_lost: Callable[[list[TopicPartition]], None] | None = None,
        on_gap: Callable[[str, int, int, int], None] | None = None,
        identity: Identity | None = None,
        health: KafkaHealth | None = None,
    ) -> None:
        conf = {**_CONSUMER_DEFAULTS, "group.id": group_id, **(extra or {})}
        if identity is not None:  # static membership; the slot is released on close
            conf["group.instance.id"] = identity.id
        self.identity = identity
        self._conf = client_config(bootstrap, conf)
        self._conf["stats_cb"] = self._on_stats
        self._conf["error_cb"] = self._on_error
        self._conf["on_commit"] = self._on_commit
        self.health = health or KafkaHealth()
        self.brokers = 0  # brokers the cluster's metadata names (not bootstrap entries)
        self._topics = list(topics)
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lost = on_lost
        self._on_gap = on_gap
        self._starts: dict[TopicPartition, int] = {}  # where each assigned partition began
        self._consumer = None
        # Per assigned partition: its end (the last stable offset under read_committed) minus
        # the group's committed offset, from the client's statistics every two seconds.
        self.lag: dict[TopicPartition, int] = {}
        self.assignment: set[TopicPartition] = set()
        self.fatal: str | None = None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self._consumer = Consumer(self._conf)
        self._subscribe()

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            self._topics, on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )

    def rejoin(self) -> None:
        """Leave the current assignment behind and join the group afresh: every partition
        this member gets is assigned anew (``on_revoke``, then ``on_assign`` with restored
        starts), from the next poll on."""
        self._consumer.unsubscribe()
        self._subscribe()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()  # triggers on_revoke for what is still assigned
            self._consumer = None
        if self.identity is not None:
            self.identity.release()  # the next instance here may take this id (and partitions)

    # -- callbacks (run inside poll/consume/close) --------------------------
    def _assigned(self, consumer, partitions) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.assignment.update(tps)
        starts = self._on_assign(tps) if self._on_assign else None
        if starts:
            # Start where the restored state says, not at the committed offset.
            for p in partitions:
                if (p.topic, p.partition) in starts:
                    p.offset = starts[p.topic, p.partition]
            consumer.assign(partitions)
        for p in partitions:
            self._starts[p.topic, p.partition] = p.offset

    def _revoked(self, consumer, partitions, *, lost: bool = False) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        handler = self._on_lost if lost and self._on_lost else self._on_revoke
        if handler:
            handler(tps)
        self.assignment.difference_update(tps)
        for tp in tps:
            self.lag.pop(tp, None)
            self._starts.pop(tp, None)

    def _lost(self, consumer, partitions) -> None:
        self._revoked(consumer, partitions, lost=True)

    def _on_stats(self, raw: str) -> None:
        stats = orjson.loads(raw)
        # Statistics are handed over in consume(): after the loop waited elsewhere (for
        # output delivery) they may be old news about the brokers.
        if time.time() - stats.get("time", 0) <= _FRESH_STATS_S:
            self._broker_states(stats.get("brokers") or {})
        committed_reads = self._conf.get("isolation.level") == "read_committed"
        for topic, tstats in stats.get("topics", {}).items():
            for pid, pstats in tstats.get("partitions", {}).items():
                tp = (topic, int(pid))
                if tp in self.assignment:
                    lag = partition_lag(pstats, committed_reads)
                    if lag is not None:
                        self.lag[tp] = lag

    def _broker_states(self, brokers: Mapping[str, Any]) -> None:
        """Brokers up or down, from the client's statistics: the cluster's brokers only, not
        the bootstrap entries or the logical coordinator handle librdkafka lists too."""
        real = [b for b in brokers.values() if b.get("source") == "learned"] or [
            b for b in brokers.values() if b.get("source") == "configured"
        ]
        if not real:
            return
        self.brokers = sum(1 for b in real if b.get("source") == "learned") or self.brokers
        if any(b.get("state") == "UP" for b in real):
            self.health.resolved("brokers")
        else:
            self.health.problem("brokers", self._down())

    def _down(self) -> str:
        n = self.brokers
        return f"all {n} broker{'s' if n != 1 else ''} down" if n else "the bootstrap is down"

    def _on_error(self, err) -> None:
        if err.fatal():
            self.fatal = err.str()
            log.error("fatal kafka consumer error: %s", err.str())
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            # librdkafka's text counts bootstrap entries as brokers ("2/2 brokers are down"
            # with one broker); the health line says how many the cluster has.
            self.health.problem("brokers", self._down())
        else:
            log.warning("kafka consumer error: %s", err.str())

    def _on_commit(self, err, partitions) -> None:
        if err is None:
            self.health.resolved("commit")
        elif err.code() != KafkaError._NO_OFFSET:
            self.health.problem("commit", err.str())

    # -- data -----------------------------------------------------------------
    def poll(self, max_messages: int, timeout: float) -> list[Record]:
        if self._consumer is None:
            raise BrokerError("KafkaSource.poll() before start()")
        messages = self._consumer.consume(num_messages=max_messages, timeout=timeout)
        if self.fatal:
            raise BrokerError(f"fatal Kafka consumer error: {self.fatal}")
        records: list[Record] = []
        append = records.append
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise BrokerError(f"fatal Kafka consumer error: {err.str()}", code=err.name())
                if err.code() == KafkaError._AUTO_OFFSET_RESET:
                    self._out_of_range(msg.topic(), msg.partition(), msg.offset())
                    continue
                log.warning("consume error on %s[%s]: %s", msg.topic(), msg.partition(), err.str())
                continue
            append(to_record(msg))
        return records

    def commit(self, positions: Mapping[TopicPartition, int], *, wait: bool = True) -> None:
        """Commit ``positions`` (next offset to read); ``wait=False`` does not wait for the
        broker's answer (a later commit covers a lost one; restores rely on snapshots)."""
        if not positions or self._consumer is None:
            return
        offsets = [KafkaTopicPartition(t, p, off) for (t, p), off in positions.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=not wait)
        except KafkaException as exc:
            err = exc.args[0]
            self.health.problem("commit", err.str())
            raise BrokerError(
                f"offset commit failed: {err.str()}", code=err.name(), description=err.str()
            ) from None

    def group_metadata(self) -> Any:
        """For committing input offsets inside an output transaction."""
        return self._consumer.consumer_group_metadata()

    def high_watermark(self, tp: TopicPartition) -> int | None:
        """The partition's end as of the last fetch (no network call); None if unknown."""
        if self._consumer is None:
            return None
        marks = self._consumer.get_watermark_offsets(KafkaTopicPartition(*tp), cached=True)
        if not marks or marks[1] < 0:
            return None
        return marks[1]

    def _out_of_range(self, topic: str, partition: int, offset: int | None) -> None:
        """The broker no longer (or not yet) holds ``offset``: below the log start, the
        records up to it are lost input (``on_gap``); read on from the log start. Beyond
        the end (a log truncated under us), read on from the end."""
        tp = KafkaTopicPartition(topic, partition)
        low, high = self._consumer.get_watermark_offsets(tp, timeout=10, cached=False)
        if offset is None or offset < 0:  # no position (nothing committed): the log start
            to = low
        elif offset < low:
            if self._on_gap is not None:
                self._on_gap(topic, partition, offset, low)
            to = low
        else:
            log.warning(
                "%s[%s]: offset %s is beyond the log's end %s; reading on from the end",
                topic,
                partition,
                offset,
                high,
            )
            to = high
        self._restart_at(topic, partition, to)

    def _restart_at(self, topic: str, partition: int, offset: int) -> None:
        """Read ``topic[partition]`` on from ``offset``. librdkafka refuses to seek a
        partition whose fetch failed, so the whole assignment is assigned again: every
        other partition at its position (or, before its first record, at its start)."""
        current = self._consumer.assignment()
        at = {(x.topic, x.partition): x.offset for x in self._consumer.position(current)}
        self._starts[topic, partition] = offset
        parts = []
        for x in current:
            tp = (x.topic, x.partition)
            off = offset if tp == (topic, partition) else at.get(tp, -1)
            if off < 0:
                off = self._starts.get(tp, OFFSET_INVALID)
            parts.append(KafkaTopicPartition(x.topic, x.partition, off))
        self._consumer.assign(parts)

    def log_starts(self, tps: Sequence[TopicPartition], timeout: float = 10.0) -> dict:
        """The first offset each partition still holds, asked of the broker now (records
        below it were deleted by retention or by an operator)."""
        out = {}
        for t, p in tps:
            tp = KafkaTopicPartition(t, p)
            low, _ = self._asked(
                f"the log start of {t}[{p}]",
                lambda tp=tp: self._consumer.get_watermark_offsets(
                    tp, timeout=timeout, cached=False
                ),
            )
            out[t, p] = low
        return out

    def seek(self, topic: str, partition: int, offset: int) -> None:
        self._consumer.seek(KafkaTopicPartition(topic, partition, offset))

    def committed(self, tps: Sequence[TopicPartition], timeout: float = 10.0) -> dict:
        """The group's committed offsets. Under ``read_committed`` the broker holds the answer
        back while a transaction with offsets for these partitions is open (a crashed
        exactly-once instance's, until it is aborted): :meth:`_asked` retries that."""
        parts = [KafkaTopicPartition(t, p) for t, p in tps]
        result = self._asked(
            "committed offsets", lambda: self._consumer.committed(parts, timeout=timeout)
        )
        return {(tp.topic, tp.partition): tp.offset for tp in result}

    @staticmethod
    def _asked(what: str, ask: Callable[[], Any], attempts: int = 6) -> Any:
        """``ask()`` the broker, again after a timeout or a transient error (a topic created
        moments ago has no leader yet; a coordinator is moving): up to ``attempts`` times,
        then one BrokerError naming ``what``."""
        delay = 0.2
        for attempt in range(attempts):
            try:
                return ask()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                transient = err is not None and (
                    err.code() in _TRANSIENT or (hasattr(err, "retriable") and err.retriable())
                )
                if not transient or attempt == attempts - 1:
                    raise BrokerError(
                        f"reading {what} failed: {err}",
                        code=getattr(err, "name", lambda: None)(),
                    ) from None
                log.warning("%s not available yet (attempt %d): %s", what, attempt + 1, err)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")
