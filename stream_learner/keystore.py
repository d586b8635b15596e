"""Where evicted keys wait: a bounded local cache of their encoded snapshots in front of a
second tier — the checkpoint topic in the service, a spill file in a replay.

The core's :class:`~stream_learner.core.processor.Processor` decides which key leaves
memory and when it comes back (``service.max_keys``); :class:`EvictedKeys` is the
:class:`~stream_learner.core.processor.KeyStore` it hands them to. An evicted key's whole
:class:`~stream_learner.core.keystate.KeyState` is pickled, with the snapshot header it
will have (input positions as of the eviction), and kept in the cache, most recently
evicted last: a pickle and an unpickle are all an eviction and a reload from the cache
cost (compressing, checksumming and signing are for what leaves the process). The cache
is bounded in bytes (``service.evicted_cache_mb``): past it, the oldest entries go to the
second tier — written there first if they were not yet — and leave memory. The topic
tier writes them in the signed snapshot format (``core/snapshot.py``), so a restart
restores them as any snapshot. A reload takes the entry from the cache when it is there
(``source="cache"``), else reads it from the tier (``"topic"`` / ``"disk"``).

The service writes behind: an eviction only encodes into the cache, and
:meth:`EvictedKeys.flush` writes the partition's not-yet-written entries to the topic
in one go before a checkpoint round's partition record (the record says every key of the
partition is on the topic as of its positions). A crash loses at most what the last
round did not write, which a restart re-learns from the log, as for resident keys.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from stream_learner.core.keystate import KeyState
from stream_learner.core.snapshot import PICKLE_PROTOCOL, SnapshotMeta

__all__ = ["CheckpointTier", "Entry", "EvictedKeys", "Observer", "SpillFile", "Tier"]

_OVERHEAD = 512  # bytes an entry costs beside its payload (header dict, bookkeeping)


@dataclass(slots=True)
class Entry:
    """One evicted key's state, pickled, and what its snapshot's header will say;
    ``written``: already in the second tier."""

    key: str
    partition: int
    pickled: bytes
    meta: SnapshotMeta
    written: bool = False

    @property
    def size(self) -> int:
        return len(self.pickled)


class Tier(Protocol):
    """The second tier: ``put`` writes entries (all at once), ``get`` returns a key's
    decoded state (``LookupError`` when it holds none), ``discard`` forgets keys."""

    name: str

    def put(self, entries: list[Entry]) -> None: ...
    def get(self, key: str) -> object: ...
    def discard(self, keys: Iterable[str]) -> None: ...


class Observer(Protocol):
    """Metrics: ``evicted(bytes)`` per eviction, ``reloaded(source, seconds)`` per reload,
    ``written(bytes)`` per entry written to the tier, ``cached(bytes, entries)`` after
    each change of the cache."""

    def evicted(self, size: int) -> None: ...
    def reloaded(self, source: str, seconds: float) -> None: ...
    def written(self, size: int) -> None: ...
    def cached(self, size: int, entries: int) -> None: ...


class EvictedKeys:
    """The :class:`~stream_learner.core.processor.KeyStore` of a runtime; see the module
    docstring. ``meta(key, partition, state)`` says what the key's snapshot header holds
    (input positions as of the eviction, trigger ``evict``)."""

    def __init__(
        self,
        tier: Tier,
        meta: Callable[[str, int, KeyState], SnapshotMeta],
        *,
        cache_bytes: int,
        observer: Observer | None = None,
        trim_on_save: bool = True,
    ) -> None:
        self.tier = tier
        self.meta = meta
        self.cache_bytes = cache_bytes
        self.observer = observer
        # False: the caller calls trim() when writing to the tier is safe (the service:
        # after a batch's outputs are delivered and its offsets committed, as for any
        # snapshot); until then the cache may pass its bound by that batch's evictions.
        self.trim_on_save = trim_on_save
        self.cache: OrderedDict[str, Entry] = OrderedDict()
        self.bytes = 0  # held by the cache, overhead included
        self.written_bytes = 0  # snapshot bytes written to the tier
        self.evicted_bytes = 0  # snapshot bytes encoded
        self.reloads: dict[str, int] = {"cache": 0, tier.name: 0}
        self._unwritten: Counter[int] = Counter()  # entries not in the tier, by partition
        # While set, saved states are copies of what the tier holds (a restore that
        # evicts restored keys to keep the budget): they are never written again.
        self.restoring = False

    # -- the KeyStore protocol -----------------------------------------------------------
    def save(self, key: str, partition: int, state: KeyState) -> None:
        pickled = pickle.dumps(state, protocol=PICKLE_PROTOCOL)
        size = len(pickled)
        self._drop(key)
        meta = self.meta(key, partition, state)
        self.cache[key] = Entry(key, partition, pickled, meta, written=self.restoring)
        if not self.restoring:
            self._unwritten[partition] += 1
        self.bytes += size + _OVERHEAD
        self.evicted_bytes += size
        if self.observer is not None:
            self.observer.evicted(size)
        if self.trim_on_save and self.bytes > self.cache_bytes:
            self.trim()
        elif self.observer is not None:
            self.observer.cached(self.bytes, len(self.cache))

    def load(self, key: str) -> KeyState:
        started = time.perf_counter()
        entry = self._drop(key)
        if entry is not None:
            state, source = pickle.loads(entry.pickled), "cache"
        else:
            state, source = self.tier.get(key), self.tier.name
        self.reloads[source] += 1
        if self.observer is not None:
            self.observer.reloaded(source, time.perf_counter() - started)
            self.observer.cached(self.bytes, len(self.cache))
        return KeyState.of(state)

    def discard(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self._drop(key)
        self.tier.discard(keys)
        if self.observer is not None:
            self.observer.cached(self.bytes, len(self.cache))

    def _drop(self, key: str) -> Entry | None:
        """Take ``key``'s entry out of the cache (``None`` when it holds none)."""
        entry = self.cache.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size + _OVERHEAD
            if not entry.written:
                self._unwritten[entry.partition] -= 1
        return entry

    # -- the tiers -----------------------------------------------------------------------
    def flush(self, partition: int | None = None) -> int:
        """Write the entries not yet in the tier (of ``partition``, or all); how many."""
        if partition is not None and not self._unwritten[partition]:
            return 0
        todo = [
            e
            for e in self.cache.values()
            if not e.written and (partition is None or e.partition == partition)
        ]
        self._write(todo)
        return len(todo)

    def unwritten(self, partition: int) -> bool:
        """Whether an entry of ``partition`` is not in the tier yet."""
        return self._unwritten[partition] > 0

    def _write(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self.tier.put(entries)
        for entry in entries:
            entry.written = True
            self._unwritten[entry.partition] -= 1
            self.written_bytes += entry.size
            if self.observer is not None:
                self.observer.written(entry.size)

    def trim(self) -> None:
        """Move the oldest entries out until the cache is within its bound (writing the
        ones not written yet, together)."""
        if self.bytes <= self.cache_bytes:
            return
        out, freed = [], 0
        for entry in self.cache.values():
            if self.bytes - freed <= self.cache_bytes:
                break
            out.append(entry)
            freed += entry.size + _OVERHEAD
        self._write([e for e in out if not e.written])
        for entry in out:
            del self.cache[entry.key]
        self.bytes -= freed
        if self.observer is not None:
            self.observer.cached(self.bytes, len(self.cache))


class CheckpointTier:
    """The checkpoint topic as the second tier (the service): entries are published with
    the slot rules of any snapshot (trigger ``evict``), so a restart restores an evicted
    key's newest state like any other; a reload reads the topic keeping only that key's
    bytes (a read of the topic's compacted size: the cache is what keeps this rare)."""

    name = "topic"

    def __init__(self, store: Any) -> None:
        self.store = store  # a LogStore: encode_pickled, publish_encoded, read

    def put(self, entries: list[Entry]) -> None:
        encode = self.store.encode_pickled
        self.store.publish_encoded([encode(e.pickled, e.meta) for e in entries])

    def get(self, key: str) -> object:
        catalog = self.store.read(want=lambda header: header.get("key") == key)
        loaded = catalog.load(key)
        if loaded is None:
            raise LookupError(f"key {key!r}: no valid snapshot on the checkpoint topic")
        return loaded[1]

    def discard(self, keys: Iterable[str]) -> None:
        pass  # the topic keeps them: the next owner restores them


class SpillFile:
    """A local file as the second tier (a replay, which has no topic): pickles appended,
    compressed, with an index of (offset, length) per key; the file is removed on
    :meth:`close`. It holds only what this process wrote, so entries are read back without
    a signature check. Space is not reused: the file grows by every entry spilled."""

    name = "disk"

    def __init__(self, directory: str | None = None) -> None:
        fd, self.path = tempfile.mkstemp(prefix="stream-learner-evicted-", dir=directory)
        self._file = os.fdopen(fd, "w+b")
        self.index: dict[str, tuple[int, int]] = {}
        self.size = 0

    def put(self, entries: list[Entry]) -> None:
        f = self._file
        f.seek(0, os.SEEK_END)
        for entry in entries:
            payload = zlib.compress(entry.pickled, 1)
            self.index[entry.key] = (f.tell(), len(payload))
            f.write(payload)
        self.size = f.tell()

    def get(self, key: str) -> object:
        at, length = self.index.pop(key)  # KeyError is a LookupError
        f = self._file
        f.flush()
        f.seek(at)
        return pickle.loads(zlib.decompress(f.read(length)))

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.index.pop(key, None)

    def close(self) -> None:
        self._file.close()
        os.unlink(self.path)
