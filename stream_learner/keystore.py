"""Where evicted keys wait: a bounded local cache of their encoded snapshots in front of a
second tier — the checkpoint topic in the service, a spill file in a replay.

The core's :class:`~stream_learner.core.processor.Processor` decides which key leaves
memory and when it comes back (``service.max_keys``); :class:`EvictedKeys` is the
:class:`~stream_learner.core.processor.KeyStore` it hands them to. An evicted key's whole
:class:`~stream_learner.core.keystate.KeyState` is pickled, with the snapshot header it
will have (input positions as of the eviction), and kept in the cache, most recently
evicted last: a pickle and an unpickle are all an eviction and a reload from the cache
cost (compressing, checksumming and signing are for what leaves the process). With a
:class:`~stream_learner.core.codec.KeyCodec` the pickles refer to the objects every key
shares by number (this process's bytes only: what is written to the checkpoint topic is
made a standard, self-contained pickle first, :meth:`KeyCodec.standalone`). The cache
is bounded in bytes (``service.evicted_cache_mb``): past it, the oldest entries go to the
second tier — written there first if they were not yet — and leave memory. The topic
tier writes them in the signed snapshot format (``core/snapshot.py``), so a restart
restores them as any snapshot. A reload takes the entry from the cache when it is there
(``source="cache"``), else reads it from the tier (``"topic"`` / ``"disk"``).

Reading one key back from the topic means reading the topic (769 ms at 10,000 snapshots:
it grows with every key the topic holds), so the service keeps a *local* copy of what
left the cache, in a :class:`SpillFile` (``source="disk"``): the topic is what a restart
or the next owner of a partition reads, the file what this process reads. What a restore
evicts to keep the budget is on the topic already, and goes to that file at once.

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
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from stream_learner.core import pickling
from stream_learner.core.codec import KeyCodec
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
    meta: SnapshotMeta | None  # None: the store keeps no headers (see EvictedKeys)
    written: bool = False

    @property
    def size(self) -> int:
        return len(self.pickled)


class Tier(Protocol):
    """The second tier: ``put`` writes entries (all at once), ``get`` returns a key's
    decoded state (``LookupError`` when it holds none), ``discard`` forgets keys;
    ``headers``: whether it writes each entry's snapshot header."""

    name: str
    headers: bool

    def put(self, entries: list[Entry]) -> None: ...
    def get(self, key: str) -> object: ...
    def discard(self, keys: Iterable[str]) -> None: ...


class _Pickle:
    """The codec without a :class:`KeyCodec`: standard pickles."""

    @staticmethod
    def dumps(state: KeyState) -> bytes:
        return pickling.dumps(state, PICKLE_PROTOCOL)

    loads = staticmethod(pickle.loads)

    @staticmethod
    def standalone(data: bytes) -> bytes:
        return data


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
    (input positions as of the eviction, trigger ``evict``); ``None`` for a tier that
    writes no header (the spill file): an eviction then makes none. ``codec``: how states
    are pickled (a :class:`KeyCodec`, whose bytes the tier must know too; default:
    standard pickles).

    Past its bound, the cache sheds its oldest entries down to :data:`SLACK` of the bound
    below it, written to the tier in one go: a long tail of keys, each evicted after
    every input, would otherwise write one entry per eviction, each a call of its own."""

    #: The fraction of the cache's bound it is trimmed below the bound.
    SLACK = 1 / 64
    #: Bytes of cached entries written to the tier per delivery, about (see _write()).
    WRITE_BYTES = 4 * 1024 * 1024

    def __init__(
        self,
        tier: Tier,
        meta: Callable[[str, int, KeyState], SnapshotMeta] | None,
        *,
        cache_bytes: int,
        observer: Observer | None = None,
        trim_on_save: bool = True,
        codec: KeyCodec | None = None,
        local: SpillFile | None = None,
    ) -> None:
        if meta is None and tier.headers:
            raise ValueError(f"the {tier.name} tier writes snapshot headers: give meta")
        self.codec: KeyCodec | _Pickle = _Pickle() if codec is None else codec
        self.tier = tier
        # Entries the tier holds already, kept where this process reads them back without
        # asking the tier (the service's: see the module docstring); with the cache's codec.
        self.local = local
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
        if local is not None:
            self.reloads[local.name] = 0
        self._unwritten: Counter[int] = Counter()  # entries not in the tier, by partition
        # While set, saved states are copies of what the tier holds (a restore that
        # evicts restored keys to keep the budget): they are never written again.
        self.restoring = False

    # -- the KeyStore protocol -----------------------------------------------------------
    def save(self, key: str, partition: int, state: KeyState) -> None:
        pickled = self.codec.dumps(state)
        size = len(pickled)
        self._drop(key)
        if self.restoring and self.local is not None:
            # On the tier already: to the local file at once, not into the cache (a
            # restore evicts as it adopts, and writes nothing until its first batch ends).
            self.local.put([Entry(key, partition, pickled, None, written=True)])
            self.evicted_bytes += size
            if self.observer is not None:
                self.observer.evicted(size)
            return
        meta = None if self.meta is None else self.meta(key, partition, state)
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
        observer = self.observer
        started = 0.0 if observer is None else time.perf_counter()
        entry = self._drop(key)
        local = self.local
        if entry is not None:
            state, source = self.codec.loads(entry.pickled), "cache"
        elif local is not None and key in local.index:
            state, source = local.get(key), local.name
        else:
            state, source = self.tier.get(key), self.tier.name
        self.reloads[source] += 1
        if observer is not None:
            observer.reloaded(source, time.perf_counter() - started)
            observer.cached(self.bytes, len(self.cache))
        return KeyState.of(state)

    def discard(self, keys: Iterable[str]) -> None:
        keys = list(keys)
        for key in keys:
            self._drop(key)
        if self.local is not None:
            self.local.discard(keys)
        self.tier.discard(keys)
        if self.observer is not None:
            self.observer.cached(self.bytes, len(self.cache))

    def close(self) -> None:
        """Remove the local file (the tier is its owner's to close)."""
        if self.local is not None:
            self.local.close()

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
        """Write ``entries`` to the tier in deliveries of about :data:`WRITE_BYTES` each: a
        flush of the whole cache (a checkpoint round, a shutdown) would otherwise hold
        every entry's encoded snapshot, its records and the client's copies at once."""
        batch, size = [], 0
        for entry in entries:
            batch.append(entry)
            size += entry.size
            if size >= self.WRITE_BYTES:
                self._deliver(batch)
                batch, size = [], 0
        if batch:
            self._deliver(batch)

    def _deliver(self, entries: list[Entry]) -> None:
        self.tier.put(entries)
        for entry in entries:
            entry.written = True
            self._unwritten[entry.partition] -= 1
            self.written_bytes += entry.size
            if self.observer is not None:
                self.observer.written(entry.size)

    def trim(self) -> None:
        """Past the cache's bound, move the oldest entries out until it is :data:`SLACK`
        below (writing the ones not written yet, together, before they leave it; to the
        local file, with one)."""
        if self.bytes <= self.cache_bytes:
            return
        out, freed, over = [], 0, self.bytes - int(self.cache_bytes * (1 - self.SLACK))
        for entry in self.cache.values():
            if freed >= over:
                break
            out.append(entry)
            freed += entry.size + _OVERHEAD
        self._write([e for e in out if not e.written])
        if self.local is not None:
            self.local.put(out)
        popitem = self.cache.popitem
        for _ in out:
            popitem(last=False)
        self.bytes -= freed
        if self.observer is not None:
            self.observer.cached(self.bytes, len(self.cache))


class CheckpointTier:
    """The checkpoint topic as the second tier (the service): entries are published with
    the slot rules of any snapshot (trigger ``evict``), so a restart restores an evicted
    key's newest state like any other; a reload reads the topic keeping only that key's
    bytes (a read of the topic's compacted size: the cache is what keeps this rare).
    ``codec``: the cache's (its bytes are made standard pickles before they are signed
    and published: the topic's format is that of any snapshot)."""

    name = "topic"
    headers = True

    def __init__(self, store: Any, codec: KeyCodec | None = None) -> None:
        self.store = store  # a LogStore: encode_pickled, publish_encoded, read
        self.codec = codec

    def put(self, entries: list[Entry]) -> None:
        encode = self.store.encode_pickled
        standalone = (lambda b: b) if self.codec is None else self.codec.standalone
        self.store.publish_encoded([encode(standalone(e.pickled), e.meta) for e in entries])

    def get(self, key: str) -> object:
        catalog = self.store.read(want=lambda header: header.get("key") == key)
        loaded = catalog.load(key)
        if loaded is None:
            raise LookupError(f"key {key!r}: no valid snapshot on the checkpoint topic")
        return loaded[1]

    def discard(self, keys: Iterable[str]) -> None:
        pass  # the topic keeps them: the next owner restores them


_FIELD = 1 << 40  # a length or slot below 1 TiB


def _packed(at: int, length: int, slot: int) -> int:
    """A spill file entry's place as one number.

    >>> _unpacked(_packed(3 << 41, 1500, 2048))
    (6597069766656, 1500, 2048)
    """
    return (at * _FIELD + slot) * _FIELD + length


def _unpacked(packed: int) -> tuple[int, int, int]:
    """``(offset, length, slot)`` of :func:`_packed`."""
    rest, length = divmod(packed, _FIELD)
    at, slot = divmod(rest, _FIELD)
    return at, length, slot


class SpillFile:
    """A local file as the second tier (a replay, which has no topic), or as the service's
    local copy of what the topic holds: each entry's bytes as they are (a
    :class:`KeyCodec`'s, or standard pickles), uncompressed, in a slot of the file, with an
    index of (offset, length, slot size) per key. The file has no name (unlinked once
    opened): it goes on :meth:`close` or with the process, however that ends. A slot is
    freed when its key is read back or discarded, and reused by a later entry that fits
    it, so the file grows to the most entries spilled at once, not by every entry. Slots
    are sized in steps of :data:`SLOT` bytes, a new one with a quarter more room than its
    entry needs: a key's next pickle is usually a little larger (a young key's grow ~100
    bytes an event), and a slot it outgrew would stay free for entries of its size only
    (the full-size long tail's file grew from 2 to 4.3 GB so). An entry takes the smallest
    free slot that fits it, up to that roomy size. The file holds only what this process
    wrote, so entries are read back without a signature check."""

    name = "disk"
    headers = False
    SLOT = 1024

    def __init__(self, directory: str | None = None, codec: KeyCodec | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="stream-learner-evicted-", dir=directory)
        os.unlink(path)  # no name: the file goes with the process, however it ends
        self._fd = fd
        self.codec: KeyCodec | _Pickle = _Pickle() if codec is None else codec
        # key -> offset, length and slot size in one number (see _packed): 137 bytes a
        # key with its name and dict entry against a tuple's 221, and the file indexes
        # every evicted key.
        self.index: dict[str, int] = {}
        self._free: dict[int, list[int]] = {}  # slot size -> offsets of free slots
        self.size = 0  # the file's end

    def _slot(self, length: int) -> int:
        return -(-max(length, 1) // self.SLOT) * self.SLOT

    def put(self, entries: list[Entry]) -> None:
        index, free, fd = self.index, self._free, self._fd
        for entry in entries:
            data = entry.pickled
            self._release(entry.key)
            slot, roomy = self._slot(len(data)), self._slot(len(data) + len(data) // 4)
            while slot < roomy and not free.get(slot):  # the smallest free slot that fits
                slot += self.SLOT
            slots = free.get(slot)
            if slots:
                at = slots.pop()
            else:  # a new slot with room for the entry to grow: a key's next one is larger
                at = self.size
                self.size += slot
            done = os.pwrite(fd, data, at)
            if done < len(data):  # a short write (rare): the rest
                view = memoryview(data)
                while done < len(data):
                    done += os.pwrite(fd, view[done:], at + done)
            index[entry.key] = _packed(at, len(data), slot)

    def get(self, key: str) -> object:
        at, length, _ = _unpacked(self.index[key])  # KeyError is a LookupError
        data = os.pread(self._fd, length, at)
        while len(data) < length:  # a short read (rare): the rest
            more = os.pread(self._fd, length - len(data), at + len(data))
            if not more:
                raise LookupError(f"key {key!r}: the spill file ends before its entry")
            data += more
        self._release(key)
        return self.codec.loads(data)

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._release(key)

    def _release(self, key: str) -> None:
        held = self.index.pop(key, None)
        if held is not None:
            at, _, slot = _unpacked(held)
            self._free.setdefault(slot, []).append(at)

    def close(self) -> None:
        os.close(self._fd)
