"""A range of the service's input topics, read back as the history it learned (for replay).

The service learns a partition's events, labels and commands in the order of
:class:`~stream_learner.core.ordering.Merger` (record timestamp, then events before
labels before control, then offset) and dead-letters what does not fit the event
contract. :func:`read_kafka_history` reads a range of the three co-partitioned topics,
merges each partition with that same ``Merger`` and decodes every record with the service's
:class:`~stream_learner.core.events.RecordDecoder`, so :func:`stream_learner.replay.replay`
sees the very sequence the service learned, each input with its partition (a command for
every key, ``*``, means the keys of its partition, which the replay's processor expands as
the service's does). Records the decoder refuses are skipped and counted; commands that
change what is learned (pause, resume, retrain) are in the history, the others are counted
(see :data:`REPLAYED_COMMANDS`). Given the model's task, labels that do not fit it are left
out too; what the model itself refuses is the replay's to skip, as the processor refuses it.

Each end of a range is a :class:`Bound` (see :func:`parse_bound`): the log start or end,
an instant (the broker's time index, in every partition of the three topics), or offsets
per partition. An offset of the events topic cuts the partition's labels and control at
the event time of the record at that offset, so the range is one slice of the merged
stream; ``labels:P:N`` and ``control:P:N`` set those offsets explicitly. The end is
exclusive and never beyond the log end at start: reading stops there, never waits.

The order is the one the service takes on a backlog. Live, a record that arrives after its
partition was read to the end goes next, and past ``Merger``'s memory or stall bound the
service releases records early: the order of such runs may differ. Transaction markers
carry their commit's wall-clock time, so with event times much older than that a time
bound lands on the first marker of a transactional partition (the broker's index says so).
"""

from __future__ import annotations

import math
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition

from stream_learner.core.events import MAX_EVENT_BYTES, MAX_FEATURE_NAME_CHARS, MAX_FEATURES
from stream_learner.core.ordering import Merger
from stream_learner.errors import BrokerError, ConfigError
from stream_learner.kafka.client import client_config
from stream_learner.kafka.source import Record, to_record
from stream_learner.replay import REPLAYED_COMMANDS, RecordHistory, decode_history

__all__ = [
    "REPLAYED_COMMANDS",
    "ROLES",
    "Bound",
    "KafkaHistory",
    "parse_bound",
    "read_kafka_history",
]

#: The input topics, in the merge's tie-break order; offsets name them by these roles.
ROLES = ("events", "labels", "control")
BOUND_SYNTAX = (
    "'earliest' (start) / 'end' (end), an ISO-8601 time, epoch milliseconds, or offsets "
    "PARTITION:OFFSET[,...] (events topic; labels:P:N and control:P:N for the others)"
)
_ENTRY = re.compile(r"(?:(events|labels|control):)?(\d+):(\d+)")
_MIN_EPOCH_MS = 10**11  # 1973: a smaller bare number is an offset typed without its partition

TP = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True)
class Bound:
    """One end of a range: the default (log start or end), an instant, or offsets by
    ``(role, partition)``. ``text`` is what the user wrote, for messages."""

    text: str = ""
    time_ms: int | None = None
    offsets: Mapping[tuple[str, int], int] = field(default_factory=dict)


def parse_bound(text: str | None, option: str = "--start") -> Bound:
    """Parse a ``--start``/``--end`` value; anything else is one :class:`ConfigError` line.

    >>> parse_bound("0:100,labels:0:40").offsets
    {('events', 0): 100, ('labels', 0): 40}
    >>> parse_bound("2024-05-01T00:00:00Z").time_ms
    1714521600000
    """
    if text is None or text.strip() in ("", "earliest", "end"):
        return Bound(text or "")
    text = text.strip()
    if ":" in text and all(_ENTRY.fullmatch(part.strip()) for part in text.split(",")):
        offsets: dict[tuple[str, int], int] = {}
        for part in text.split(","):
            role, partition, offset = _ENTRY.fullmatch(part.strip()).groups()
            where = (role or "events", int(partition))
            if where in offsets:
                raise ConfigError(f"{option} {text}: {where[0]}:{where[1]} is given twice")
            offsets[where] = int(offset)
        return Bound(text, offsets=offsets)
    if text.isdigit():
        if int(text) < _MIN_EPOCH_MS:
            raise ConfigError(
                f"{option} {text}: a bare number is a time in epoch milliseconds; for an "
                f"offset write PARTITION:OFFSET (e.g. 0:{text})"
            )
        return Bound(text, time_ms=int(text))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected {BOUND_SYNTAX}") from None
    if moment.tzinfo is None:  # as events.py reads event times: UTC, on every machine
        moment = moment.replace(tzinfo=UTC)
    return Bound(text, time_ms=round(moment.timestamp() * 1000))


@dataclass
class KafkaHistory(RecordHistory):
    """A :class:`~stream_learner.replay.RecordHistory` read from Kafka, with the
    ``[start, end)`` offsets of each topic-partition it covers."""

    ranges: dict[TP, tuple[int, int]] = field(default_factory=dict)


def read_kafka_history(
    bootstrap: str,
    topics: Mapping[str, str],
    start: Bound | None = None,
    end: Bound | None = None,
    *,
    task: str | None = None,
    max_bytes: int = MAX_EVENT_BYTES,
    max_features: int = MAX_FEATURES,
    max_name_chars: int = MAX_FEATURE_NAME_CHARS,
    client: Mapping[str, Any] | None = None,
    timeout: float = 30.0,
) -> KafkaHistory:
    """Read ``[start, end)`` of the input topics (``topics``: role -> topic name, see
    :data:`ROLES`; labels and control may be absent) in the order the service learns it.

    ``task`` (the model's) leaves out labels that do not fit it (``bad_label``), as the
    service's processor refuses them; ``max_bytes``, ``max_features`` and ``max_name_chars``
    are the service's ``max_event_bytes``, ``max_event_features`` and
    ``max_feature_name_chars``. ``timeout`` bounds each broker request and any wait without
    progress. Reads committed records only."""
    names = {role: topics[role] for role in ROLES if topics.get(role)}
    if "events" not in names:
        raise ConfigError("no events topic given")
    extra = {k: v for k, v in (client or {}).items() if k not in _GROUP_ONLY}
    conf = client_config(bootstrap, {**extra, **_CONSUMER})
    conf["group.id"] = f"stream-learner-replay-{uuid.uuid4().hex[:12]}"  # never commits
    start, end = start or Bound(), end or Bound()
    if None not in (start.time_ms, end.time_ms) and start.time_ms > end.time_ms:
        raise ConfigError(f"--start {start.text} is after --end {end.text}")
    consumer = Consumer(conf)
    try:
        ranges = _resolve(consumer, conf, names, start, end, timeout)
        # Decoded as the merge releases them, so the raw records are never all held.
        read = decode_history(
            _read(consumer, names, ranges, timeout),
            names,
            task=task,
            max_bytes=max_bytes,
            max_features=max_features,
            max_name_chars=max_name_chars,
        )
        history = KafkaHistory(**vars(read), ranges=ranges)
    finally:
        consumer.close()
    return history


# Settings a range reader must own, and group settings it must not take from the config.
_CONSUMER = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "isolation.level": "read_committed",
    "enable.partition.eof": True,
    "auto.offset.reset": "error",  # retention moved the log start under us: say so
}
_GROUP_ONLY = frozenset({"group.id", "group.instance.id", "transactional.id"})


# -- the range ---------------------------------------------------------------------------


def _resolve(
    consumer: Consumer,
    conf: dict[str, Any],
    names: Mapping[str, str],
    start: Bound,
    end: Bound,
    timeout: float,
) -> dict[TP, tuple[int, int]]:
    """``[start, end)`` offsets for every topic-partition of the range, checked."""
    metadata = _call(lambda: consumer.list_topics(timeout=timeout), "list the topics")
    partitions: dict[str, list[int]] = {}
    for role, topic in names.items():
        meta = metadata.topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            if role == "events":
                raise ConfigError(
                    f"topic {topic} does not exist on the broker "
                    "(check kafka.topic_prefix in the config)"
                )
            continue  # no labels or control topic: nothing of that kind to replay
        partitions[role] = sorted(meta.partitions)
    named = {**start.offsets, **end.offsets}
    for role, p in named:
        if role not in partitions:
            raise ConfigError(f"{role}:{p}: there is no {role} topic ({names.get(role)})")
        if p not in partitions[role]:
            have = partitions[role]
            raise ConfigError(
                f"partition {p} of {names[role]} does not exist (it has partitions "
                f"{have[0]} to {have[-1]})"
            )
    wanted = {p for _, p in named} or {p for ps in partitions.values() for p in ps}
    tps = [(role, p) for role in partitions for p in sorted(wanted) if p in partitions[role]]
    marks = {}
    for role, p in tps:
        tp = KafkaTopicPartition(names[role], p)
        marks[role, p] = _call(
            lambda tp=tp: consumer.get_watermark_offsets(tp, timeout=timeout),
            f"read the offsets of {names[role]}[{p}]",
        )

    def at(bound: Bound, option: str, default: int) -> dict[tuple[str, int], int]:
        out: dict[tuple[str, int], int] = {}
        for role, p in tps:
            low, high = marks[role, p]
            if (role, p) in bound.offsets:
                offset = bound.offsets[role, p]
                if not low <= offset <= high:
                    raise ConfigError(
                        f"{option} {role}:{p}:{offset}: out of range; {names[role]}[{p}] "
                        f"holds offsets {low} to {high - 1} (its end is {high})"
                        if high > low
                        else f"{option} {role}:{p}:{offset}: out of range; {names[role]}[{p}] "
                        f"is empty (its end is {high})"
                    )
                out[role, p] = offset
        # An instant: the broker's time index, for every partition not given an offset.
        instants: dict[tuple[str, int], int] = {}
        cuts = [
            (role, p, bound.offsets["events", p])
            for role, p in tps
            if (role, p) not in out and role != "events" and ("events", p) in bound.offsets
        ]
        if cuts:  # labels and control cut at the event time of the events record there
            inside = {(p, off) for _, p, off in cuts if off < marks["events", p][1]}
            times = _timestamps_at(conf, [(names["events"], p, off) for p, off in inside], timeout)
            for role, p, _ in cuts:
                when = times.get((names["events"], p))
                if when is None:  # the events offset is the log end: so is theirs
                    out[role, p] = marks[role, p][1]
                else:
                    instants[role, p] = when
        if bound.time_ms is not None:
            for role, p in tps:
                if (role, p) not in out:
                    instants[role, p] = bound.time_ms
        if instants:
            found = _call(
                lambda: consumer.offsets_for_times(
                    [KafkaTopicPartition(names[r], p, ms) for (r, p), ms in instants.items()],
                    timeout=timeout,
                ),
                "look up offsets by time",
            )
            by_tp = {(tp.topic, tp.partition): tp.offset for tp in found}
            for role, p in instants:
                low, high = marks[role, p]
                offset = by_tp.get((names[role], p), -1)
                # No record at or after that instant: the log end (as of now).
                out[role, p] = high if offset < 0 else min(max(offset, low), high)
        for role, p in tps:
            out.setdefault((role, p), marks[role, p][default])
        return out

    starts, ends = at(start, "--start", 0), at(end, "--end", 1)
    ranges: dict[TP, tuple[int, int]] = {}
    for role, p in tps:
        s, e = starts[role, p], ends[role, p]
        if s > e:
            raise ConfigError(
                f"--start {start.text or 'earliest'} is after --end {end.text or 'end'} in "
                f"{names[role]}[{p}] (offset {s} > {e})"
            )
        ranges[names[role], p] = (s, e)
    return ranges


def _timestamps_at(
    conf: dict[str, Any], where: Sequence[tuple[str, int, int]], timeout: float
) -> dict[TP, int | None]:
    """The record timestamp at (or first after) each ``(topic, partition, offset)``;
    ``None`` at the log end. A consumer of its own, so no fetch leaks into the range read."""
    consumer = Consumer({**conf, "group.id": conf["group.id"] + "-t"})
    try:
        consumer.assign([KafkaTopicPartition(t, p, off) for t, p, off in where])
        todo = {(t, p): off for t, p, off in where}
        found: dict[TP, int | None] = {}
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                missing = ", ".join(f"{t}[{p}]@{off}" for (t, p), off in todo.items())
                raise BrokerError(f"no record came back from {missing} within {timeout:g}s")
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            tp = (msg.topic(), msg.partition())
            if tp not in todo:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    found[tp] = None
                    del todo[tp]
                    continue
                raise _broker_error(err, f"read {tp[0]}[{tp[1]}]")
            if msg.offset() >= todo[tp]:
                ts_type, ts = msg.timestamp()
                found[tp] = ts if ts_type else 0  # no timestamp: the merge reads it as 0
                del todo[tp]
        return found
    finally:
        consumer.close()


# -- reading -----------------------------------------------------------------------------


def _read(
    consumer: Consumer,
    names: Mapping[str, str],
    ranges: Mapping[TP, tuple[int, int]],
    timeout: float,
) -> Iterator[Record]:
    """Every committed record of ``ranges``, merged per partition as the service merges."""
    # Every record of the range is kept until its turn: no memory bound forcing an early
    # release and no stall timeout (a stall here is a broker error, below).
    merger = Merger([names[r] for r in ROLES if r in names], max_buffered=sys.maxsize,
                    max_idle_s=math.inf)  # fmt: skip
    remaining = {tp: span for tp, span in ranges.items() if span[0] < span[1]}
    ends = {tp: span[1] for tp, span in remaining.items()}
    if not remaining:
        return
    consumer.assign([KafkaTopicPartition(t, p, s) for (t, p), (s, _) in remaining.items()])
    deadline = time.monotonic() + timeout
    while remaining:
        messages = consumer.consume(num_messages=1000, timeout=0.2)
        batch: list[Record] = []
        progress = False
        for msg in messages:
            tp = (msg.topic(), msg.partition())
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    _done(consumer, remaining, tp)  # read to the end (the last stable offset)
                    progress = True
                    continue
                if err.fatal() or err.code() in _RANGE_ERRORS:
                    raise _broker_error(err, f"read {tp[0]}[{tp[1]}]")
                continue  # transient (a broker reconnecting): the deadline bounds it
            if tp not in remaining:
                continue
            offset = msg.offset()
            progress = True
            if offset >= ends[tp]:  # past the end (a transaction marker took the last offset)
                _done(consumer, remaining, tp)
                continue
            batch.append(to_record(msg))
            if offset >= ends[tp] - 1:
                _done(consumer, remaining, tp)
        if progress:
            deadline = time.monotonic() + timeout
        elif time.monotonic() > deadline:
            left = ", ".join(f"{t}[{p}] before offset {ends[t, p]}" for t, p in remaining)
            raise BrokerError(f"no records came from {left} for {timeout:g}s; stopped")
        merger.push(batch)
        yield from merger.pop_ready(lambda tp: tp not in remaining)  # read to its range end
    yield from merger.pop_ready(lambda tp: True)


_RANGE_ERRORS = frozenset(
    {
        KafkaError.OFFSET_OUT_OF_RANGE,
        KafkaError._AUTO_OFFSET_RESET,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
    }
)


def _done(consumer: Consumer, remaining: dict, tp: TP) -> None:
    if remaining.pop(tp, None) is not None:
        consumer.pause([KafkaTopicPartition(*tp)])


def _call(fn, what: str):
    try:
        return fn()
    except KafkaException as exc:
        raise _broker_error(exc.args[0], what) from None


def _broker_error(err: KafkaError, what: str) -> BrokerError:
    return BrokerError(f"could not {what}: {err.str()}", code=err.name(), description=err.str())
