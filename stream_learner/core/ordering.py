"""Event-time order across the events, labels and control partitions of one model key.

A key's inputs arrive on three topics (co-partitioned: the same partition number of
each). The consumer fetches them independently, so after a restart with a backlog it may
hand over all the labels before the events they label. Like Kafka Streams, the service
merges them: it always takes the record with the smallest timestamp among the heads of a
partition group, and waits for more data while a member has nothing buffered but is not
yet caught up with its log end. The order is then a function of the logs, not of fetch
timing: a replay of the same history processes the same sequence. Pure: no Kafka here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import groupby
from operator import attrgetter
from typing import Any

TopicPartition = tuple[str, int]

_topic_partition = attrgetter("topic", "partition")


class Merger:
    """Buffers records per topic-partition and releases them in timestamp order.

    ``topics`` are the co-partitioned input topics, in tie-break order (events before
    labels before control when timestamps are equal). ``max_buffered`` bounds memory and
    ``max_idle_s`` a stall (nothing releasable, e.g. a member whose end stays unknown):
    past either, records are released anyway and ordering is best effort.
    """

    def __init__(
        self, topics: Sequence[str], *, max_buffered: int = 50_000, max_idle_s: float = 5.0
    ) -> None:
        self.topics = tuple(topics)
        self.max_idle_s = max_idle_s
        self._stalled_since: float | None = None
        self._rank = {t: i for i, t in enumerate(self.topics)}
        self.max_buffered = max_buffered
        self._buffers: dict[TopicPartition, deque] = {}
        self.buffered = 0

    def push(self, records: Iterable[Any]) -> None:
        # A poll returns runs of one topic-partition: each run is appended in one go.
        buffers = self._buffers
        total = self.buffered
        for tp, run in groupby(records, _topic_partition):
            buf = buffers.get(tp)
            if buf is None:
                buf = buffers[tp] = deque()
            n = len(buf)
            buf.extend(run)
            total += len(buf) - n
        self.buffered = total

    def pop_ready(self, caught_up: Callable[[TopicPartition], bool], now: float = 0.0) -> list[Any]:
        """Every record that can go now, in order; ``caught_up(tp)`` says whether an empty
        member has nothing more to read at the moment; ``now`` (monotonic seconds) times
        a stall: only when *nothing* could go for ``max_idle_s`` is order given up."""
        out = self._release(caught_up, force=self.buffered > self.max_buffered)
        if out or not self.buffered:
            self._stalled_since = None
        elif self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= self.max_idle_s:
            out = self._release(caught_up, force=True)
            self._stalled_since = None
        self.buffered -= len(out)
        return out

    def _release(self, caught_up: Callable[[TopicPartition], bool], force: bool) -> list[Any]:
        out: list[Any] = []
        partitions = {p for (_, p), buf in self._buffers.items() if buf}
        for partition in sorted(partitions):
            group = [(t, self._buffers.get((t, partition))) for t in self.topics]
            full = [buf for _, buf in group if buf]
            waiting = [t for t, buf in group if not buf and not caught_up((t, partition))]
            if len(full) == 1 and not waiting:
                out.extend(full[0])  # the common case: one topic flowing, the rest idle
                full[0].clear()
                continue
            while True:
                heads = [buf for _, buf in group if buf]
                if not heads:
                    break
                if not force and any(not buf and not caught_up((t, partition)) for t, buf in group):
                    break  # a member may still hold earlier records: wait for them
                best = min(heads, key=self._order)
                out.append(best.popleft())
        return out

    def _order(self, buf: deque) -> tuple:
        rec = buf[0]
        return (rec.timestamp_ms or 0, self._rank.get(rec.topic, 99), rec.offset)

    def drop(self, tps: Iterable[TopicPartition]) -> None:
        """Forget buffered records of revoked partitions (they were not processed)."""
        for tp in tps:
            buf = self._buffers.pop(tp, None)
            if buf:
                self.buffered -= len(buf)

    def pending(self) -> int:
        return self.buffered
