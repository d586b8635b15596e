"""An in-memory source and sink for the service loop: the Protocols of ``runtime.py``
satisfied without a broker, for tests of the loop's own logic (what reaches Kafka is
tested on the real broker elsewhere).

The source is one consumer that owns every partition of its logs: ``start`` assigns them
all (the service's ``on_assign`` says where each starts), ``poll`` hands out runs of one
topic-partition at a time as a Kafka fetch does, and ``close`` revokes everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from stream_learner.kafka.source import Record

TopicPartition = tuple[str, int]


class MemorySource:
    def __init__(
        self,
        logs: Mapping[TopicPartition, Sequence[Record]],
        *,
        on_assign: Callable[[list[TopicPartition]], Mapping[TopicPartition, int] | None],
        on_revoke: Callable[[list[TopicPartition]], None],
        committed: Mapping[TopicPartition, int] | None = None,
        log_starts: Mapping[TopicPartition, int] | None = None,
        run: int = 37,
    ) -> None:
        self.logs = {tp: list(records) for tp, records in logs.items()}
        # Records below a log start are deleted (retention): reading there is out of range.
        self.starts: dict[TopicPartition, int] = dict(log_starts or {})
        self.on_assign, self.on_revoke = on_assign, on_revoke
        self.offsets: dict[TopicPartition, int] = dict(committed or {})  # the group's
        self.position: dict[TopicPartition, int] = {}
        self.assignment: set[TopicPartition] = set()
        self.lag: dict[TopicPartition, int] = {}
        self.run = run  # records of one topic-partition per turn (a fetch's run)
        self._turn = 0

    def start(self) -> None:
        tps = sorted(self.logs)
        self.assignment = set(tps)
        starts = self.on_assign(tps) or {}
        for tp in tps:
            self.position[tp] = starts.get(tp, self.offsets.get(tp, 0))
            if self.position[tp] < self.starts.get(tp, 0):  # the broker would refuse it
                raise AssertionError(f"{tp} starts at {self.position[tp]}, below its log start")

    def poll(self, max_messages: int, timeout: float) -> list[Record]:
        out: list[Record] = []
        tps = sorted(self.assignment)
        for _ in range(len(tps)):  # round robin over partitions with data, a run each
            if len(out) >= max_messages:
                break
            tp = tps[self._turn % len(tps)]
            self._turn += 1
            at = self.position[tp]
            take = self.logs[tp][at : at + min(self.run, max_messages - len(out))]
            out.extend(take)
            self.position[tp] = at + len(take)
        return out

    def commit(self, positions: Mapping[TopicPartition, int], *, wait: bool = True) -> None:
        self.offsets.update(positions)

    def committed(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.offsets[tp] for tp in tps if tp in self.offsets}

    def high_watermark(self, tp: TopicPartition) -> int | None:
        return len(self.logs[tp]) if tp in self.logs else None

    def log_starts(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self.starts.get(tp, 0) for tp in tps}

    def group_metadata(self) -> Any:
        return None

    def rejoin(self) -> None:
        """A fresh join that gets every partition back: revoked, then assigned again at the
        starts the service says (from its checkpoints and the committed offsets)."""
        if self.assignment:
            self.on_revoke(sorted(self.assignment))
        self.start()

    def close(self) -> None:
        if self.assignment:
            self.on_revoke(sorted(self.assignment))
        self.assignment = set()

    def drained(self) -> bool:
        return all(self.position.get(tp, 0) >= len(log) for tp, log in self.logs.items())


class MemorySink:
    """Every output, in order: ``(topic, value, key, headers)``."""

    transactional = False

    def __init__(self) -> None:
        self.outputs: list[tuple[str, bytes | None, Any, Any]] = []

    def start(self) -> None:
        pass

    def produce(self, topic: str, value: bytes | None, *, key=None, headers=None) -> None:
        self.outputs.append((topic, value, key, headers))

    def flush(self, timeout: float = 10.0) -> int:
        return 0

    def commit_transaction(self, positions: Mapping[TopicPartition, int], group_metadata) -> None:
        raise AssertionError("not a transactional sink")

    def on(self, topic: str) -> list[tuple[bytes | None, Any, Any]]:
        return [(value, key, headers) for t, value, key, headers in self.outputs if t == topic]


def logs_of(messages, topics, partitions: Callable[[str], int]) -> dict[TopicPartition, list]:
    """Records of ``messages`` (``stream_learner.synth.Message``: a topic role, a key and a
    JSON body) as the broker would hold them: per topic-partition in produce order, the
    record timestamp the event time (as the README asks producers to set it)."""
    import orjson

    names = {"events": topics.events, "labels": topics.labels, "control": topics.control}
    logs: dict[TopicPartition, list[Record]] = {}
    for msg in messages:
        topic = names[msg.topic]
        partition = partitions(msg.key)
        log = logs.setdefault((topic, partition), [])
        ts = msg.value.get("ts")
        log.append(
            Record(
                topic,
                partition,
                len(log),
                msg.key.encode() if msg.key is not None else None,
                orjson.dumps(msg.value),
                None if ts is None else int(ts * 1000),
            )
        )
    for name in names.values():  # every co-partitioned topic has every partition
        for p in {p for _, p in logs}:
            logs.setdefault((name, p), [])
    return logs
