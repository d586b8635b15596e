"""The checkpoint format: key scheme, catalog and the writer's slot rules, with no broker.

A checkpoint store keeps the last ``keep_versions`` versions of every model key, bounded
under compaction, and never restores a snapshot that was only partly written. Everything
here works on a log of ``(record key, value)`` records, in order, the way a compacted topic
holds them: :class:`LogStore` writes and reads such a log through two transport methods,
:class:`MemoryCheckpointStore` keeps it in a dict (pure tests, offline tools), and
:class:`~stream_learner.kafka.checkpoints.CheckpointStore` puts it on partition 0 of the
checkpoints topic (declared with one partition, so a snapshot's chunks always precede its
manifest in the log).

Record keys (``\\x1f`` and ``\\x1e`` are not printable, so no model key contains them)::

    {model_key}\\x1f{slot}\\x1f{chunk_index}   a chunk of the snapshot in ``slot``
                                             (value: header JSON, newline, payload slice)
    {model_key}\\x1f{slot}\\x1fm               the slot's manifest: the signed header,
                                             written only after every chunk is delivered
    {model_key}\\x1f-1\\x1f{chunk_index}, ...\\x1fm  the key's staging slot (see Staging)
    \\x1e{record_key}                          a JSON record of the service (value: object)

Slots. A model key owns ``keep_versions + 1`` slots. A new snapshot goes to a slot that
holds neither the newest snapshot of its own version nor one of the ``keep_versions - 1``
newest other versions (an empty slot if there is one, and after every publish there is).
Once its manifest is delivered, every slot outside that set is deleted with tombstones
(manifest first, then chunks): older versions, the version's previous snapshot, and
broken leftovers. So the topic holds ``keep_versions`` versions per key, and a crash
mid-write never touches a snapshot that is still wanted, not even the current version's
previous snapshot. When a slot is reused with fewer chunks than it held, the leftover
chunk keys get tombstones too.

Reading. A slot is *complete* when its manifest names exactly ``chunk_count`` chunks of
the same snapshot and their checksum matches, and *valid* (restorable) when, with a
signing key, its signature verifies too (see :mod:`stream_learner.core.snapshot`).
After a crash between chunks, a slot may hold the new snapshot's first chunks and the
old one's manifest and remaining chunks: the old snapshot is ``incomplete``, the new one
has ``no_manifest``; both are refused and :meth:`Catalog.load` returns the newest valid
snapshot in another slot. The writer keeps complete snapshots it cannot verify (a
reader with another key must not wipe them) and deletes only broken ones.

"Newest" means last written (log order), not the highest ``model_version``: a rollback
that republishes an older version is then what a restart restores.

Staging. Slot ``-1`` (:data:`STAGING_SLOT`) of a key is its staging slot, where another
program offers a snapshot to the service: ``publish(..., staged=True)`` (``replay
--rebuild --publish``) writes there with the same chunk, manifest and signature rules,
and a newer staged snapshot of the key replaces the older one (leftover chunks get
tombstones). The key's own slots ``0..keep_versions`` have one writer, the service, and
the staging slot has another, so neither overwrites nor deletes the other's snapshot
whatever their cached views of the topic: the service's writer never chooses slot -1 and
never retires it. A staged snapshot is offered, not served: :meth:`Catalog.load` with a
version finds it like any other snapshot of that version (the service adopts it on a
``rollback`` command to that version), while :meth:`Catalog.versions`,
:meth:`Catalog.keys` and ``load(key)`` without a version (what a restart restores) see
only the key's own slots. So a restart restores what the service last served, never a
staged snapshot it did not adopt; once adopted, the service's next snapshot of the
adopted learner is the newest. The staged snapshot stays (at most one per key) until the
next staged publish of the key replaces it, so a rollback command read again after a
crash still finds it.

The writer learns which slots are taken from :meth:`read` (done lazily before the first
publish): call ``read()`` after gaining ownership of a key that another instance wrote.

Memory. :class:`Catalog` takes the log one record at a time and holds only the last value
of each record key (a tombstone drops it), so a read never holds superseded values.
``read(want=...)`` keeps less: ``want`` is a predicate over a snapshot header (each chunk's
and manifest's as they stream by, not yet verified, so it must expect any JSON and not
raise; ``header["key"]`` is the model key), and payload bytes are kept only of the chunks
it accepts; the rest are dropped at once, keeping their headers, sizes and positions. A
model key is *wanted* when ``want`` accepted any of its live records. A snapshot whose
bytes were dropped is judged all the same (chunk identities, count and total size; the
signature, which needs only the header; the checksum from a SHA-256 fed chunk by chunk
as they stream by), so listing and the writer's view of every key's slots are what a full
read gives. The writer writes a snapshot's chunks in index order, one after the other;
when a slot's final chunk set did not stream by that way (a chunk rewritten later:
someone else wrote to the slot), its checksum is unknown: such a snapshot counts as
``complete`` for the writer (a snapshot that may be good is not overwritten on a guess)
and is listed as not valid with reason ``unverified``, without a rejection; a full read
decides it. :meth:`Catalog.load` never returns a snapshot whose bytes were dropped: for a
key that was not wanted it raises ``LookupError`` (the caller left it out; ``None`` would
claim nothing is restorable), and for a wanted key it passes over such a snapshot as if
absent. Without ``want`` every payload is kept and verified.

A restore of a million keys cannot hold their bytes at once either: the service reads
the headers only (``want`` keeping none), chooses each key's snapshot from that catalog,
then :meth:`LogStore.fetch` reads the log a second time and hands over each chosen
snapshot's bytes as its last chunk streams by, to be verified, unpickled and adopted
(or evicted) at once. While a log streams by, the catalog keeps each record's header as
JSON bytes, never parsed dicts; a slot whose manifest completes a whole, valid snapshot
is decided there and then (sealed: its verdict replaces its records until a later record
of the slot, if any, streams by); and each version keeps its header deflated (see
:class:`VersionInfo`). Per young key, a headers-only read peaks at ~1 KB.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import orjson

from stream_learner.core import snapshot
from stream_learner.core.snapshot import (
    Chunk,
    SnapshotMeta,
    SnapshotRejected,
    check_header,
    decode_snapshot,
    encode_pickled,
    encode_snapshot,
    join_pieces,
    parse_chunk,
    snapshot_identity,
    verify_signature,
    verify_snapshot,
)
from stream_learner.errors import ConfigError, FencedError

__all__ = [
    "MAX_CHUNK_BYTES",
    "REASONS",
    "STAGING_SLOT",
    "Catalog",
    "LogStore",
    "MemoryCheckpointStore",
    "Rejection",
    "VersionInfo",
    "Want",
    "chunk_key",
    "manifest_key",
    "record_key",
]

SEP = "\x1f"
RECORD_PREFIX = "\x1e"
MANIFEST = "m"
STAGING_SLOT = -1  # a key's staging slot (see the module docstring); its own are 0..keep
# A chunk travels as one record: 7 MiB leaves room for its header below the 8 MiB
# max.message.bytes the checkpoints topic is declared with (topics/topics.toml).
MAX_CHUNK_BYTES = 7 * 1024 * 1024

REASONS = (
    *snapshot.REASONS,
    "no_manifest",  # chunks without a manifest: a write that never finished
    "key_mismatch",  # the header names another model key than the record key
    "bad_key",  # a record key that fits none of the forms above
    "bad_record",  # a service record whose value is not a JSON object
    "unverified",  # bytes dropped by want, checksum unknown: listed, never a rejection
)

Want = Callable[[Mapping[str, Any]], bool]  # which snapshots' bytes a read keeps


def chunk_key(model_key: str, slot: int, index: int) -> str:
    return f"{model_key}{SEP}{slot}{SEP}{index}"


def manifest_key(model_key: str, slot: int) -> str:
    return f"{model_key}{SEP}{slot}{SEP}{MANIFEST}"


def record_key(key: str) -> str:
    """The Kafka key of a service record named ``key``."""
    return RECORD_PREFIX + key


# --------------------------------------------------------------------------- catalog


# How a catalog packs the headers it keeps: raw deflate with a 1 KiB window, primed with
# the read's first manifest as a preset dictionary (the headers of one service differ in
# little but their key, numbers and hashes: ~620 -> ~180 bytes, in ~10 us).
_WBITS = -10


def _packer(zdict: bytes) -> Any:
    """A compressor primed with ``zdict``, to be copied for each header (see _deflate)."""
    return zlib.compressobj(6, zlib.DEFLATED, _WBITS, 4, zlib.Z_DEFAULT_STRATEGY, zdict)


def _deflate(data: bytes, packer: Any) -> bytes:
    if packer is None:
        return data
    packer = packer.copy()  # cheaper than priming a new one
    return packer.compress(data) + packer.flush()


def _inflate(data: bytes, zdict: bytes | None) -> bytes:
    if zdict is None:
        return data
    unpacker = zlib.decompressobj(_WBITS, zdict=zdict)
    return unpacker.decompress(data) + unpacker.flush()


def _progress(header: Mapping[str, Any]) -> int:
    """The sum of a header's input offsets (see :attr:`VersionInfo.recency`); -1, never
    the newest, when they are not numbers."""
    try:
        return sum(int(o) for by in header["offsets"].values() for o in by.values())
    except (AttributeError, KeyError, TypeError, ValueError):
        return -1


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One snapshot found on the topic; ``header`` is its (signed) header.

    The header is kept as JSON bytes, deflated against the read's first manifest
    (``zdict``), and parsed on each read of :attr:`header` (a new dict each time; read a
    field once where it is used often): a restore's catalog holds one per key and
    version, and parsed it was ~2 KB, as JSON ~0.6 KB, deflated ~0.2 KB."""

    key: str
    model_version: int
    valid: bool
    reason: str | None
    slot: int
    position: int  # order of the manifest (or last chunk) in the log: higher is newer
    raw: bytes = field(repr=False)  # the header's JSON, deflated when zdict is given
    progress: int = field(default=0, repr=False)  # see recency
    zdict: bytes | None = field(default=None, repr=False)

    @property
    def json(self) -> bytes:
        """The header as the JSON bytes it was written as."""
        return _inflate(self.raw, self.zdict)

    @property
    def header(self) -> dict[str, Any]:
        return orjson.loads(self.json)

    @property
    def staged(self) -> bool:
        """In the key's staging slot: offered to the service, not (yet) served by it."""
        return self.slot == STAGING_SLOT

    @property
    def lineage(self) -> str:
        return self.header.get("lineage", "")

    @property
    def created(self) -> float | str | None:
        return self.header.get("created")

    @property
    def trigger(self) -> str:
        return self.header.get("trigger", "")

    @property
    def decision(self) -> str | None:
        return self.header.get("decision")

    @property
    def metrics(self) -> dict[str, float | None]:
        return self.header.get("metrics", {})

    @property
    def offsets(self) -> dict[str, dict[str, int]]:
        return self.header.get("offsets", {})

    @property
    def extra(self) -> dict[str, Any]:
        return self.header.get("extra", {})

    @property
    def recency(self) -> tuple[int, int]:
        """What "newest" compares: first how far into its inputs the snapshot is (the sum
        of its input offsets, which only grow for one key), then log order. So a snapshot
        that reached the topic late from an instance that had lost the key (a stale owner,
        see service/stall.py) never wins over the new owner's newer state, while a
        rollback, written with the positions it was taken at, still does."""
        return self.progress, self.position


@dataclass(frozen=True, slots=True)
class Rejection:
    """A snapshot or record refused while reading; log it, count it by ``reason``."""

    reason: str
    detail: str
    key: str | None = None
    model_version: int | None = None
    slot: int | None = None


#: The chunk indexes of a one-chunk snapshot (nearly every key's), shared: a frozenset
#: costs ~200 bytes, and the writer and a catalog hold one per key and slot.
_ONE_CHUNK = frozenset({0})


def _chunk_set(indexes: Iterable[int]) -> frozenset[int]:
    held = frozenset(indexes)
    return _ONE_CHUNK if held == _ONE_CHUNK else held


@dataclass(slots=True)
class _SlotState:
    """What the writer needs to know about a slot."""

    version: int | None
    position: int
    complete: bool  # manifest + every chunk + checksum (signature aside)
    indexes: frozenset[int]  # chunk keys present in the slot


#: A key's slots as the writer (and a catalog, for it) holds them: ``(slot, state, slot,
#: state, ...)``, ~60 bytes for one slot against a dict's ~220; a million keys are held
#: for as long as the service runs.
Slots = tuple


def _slot_map(slots: Slots) -> dict[int, _SlotState]:
    return dict(zip(slots[::2], slots[1::2], strict=True))


def _slots_of(states: Mapping[int, _SlotState]) -> Slots:
    return tuple(x for item in states.items() for x in item)


@dataclass(slots=True)
class _Piece:
    """A chunk as the catalog keeps it while reading: what judging its slot needs, and its
    header as JSON bytes (parsed again only to describe a slot without a manifest). A
    parsed header is ~2 KB of dicts against ~0.5 KB as bytes, and a read holds one per
    chunk and manifest of every slot until the log ends. Once the slot's manifest streams
    by with the same header, ``raw`` is the manifest's bytes (see :func:`_share_header`)."""

    identity: tuple  # (key, model version, SHA-256, chunk count), as its header says
    index: int
    payload: bytes  # b"" when want dropped it
    raw: bytes = field(repr=False)  # its header, ``chunk_index`` included or not


@dataclass(slots=True)
class _Entry:
    """The live value of one record key of a slot, as far as the catalog keeps it."""

    position: int
    index: str | None  # the record key's chunk index; None for the manifest
    raw: bytes | None = None  # a manifest that reads as a header: its JSON (checked)
    error: SnapshotRejected | None = None  # a manifest that does not
    piece: _Piece | None = None  # a parsed chunk; None: unparseable
    size: int = 0  # the chunk's payload size, kept or not
    wanted: bool = True  # ``want`` accepted its header: a chunk's payload is kept


@dataclass(slots=True)
class _Run:
    """SHA-256 of a slot's chunks fed in index order as they stream by, for snapshots
    whose bytes are dropped (see want in the module docstring). Once the last chunk is
    fed, the hash object goes (it holds OpenSSL's state, outside Python's heap) and its
    hex digest stays: a restore reads a million slots."""

    identity: tuple
    digest: Any  # the running hash; None once ``sha256`` is known
    positions: list[int] = field(default_factory=list)
    sha256: str | None = None


@dataclass(slots=True)
class _Slot:
    entries: dict[str, _Entry] = field(default_factory=dict)  # by record key, in log order
    run: _Run | None = None
    key: str = ""  # the model key, the string the read's dict of slots is keyed by


@dataclass(slots=True)
class _Verdict:
    """What the catalog files for a slot once it is decided (see :meth:`Catalog._file`)."""

    state: _SlotState
    info: VersionInfo | None
    payload: bytes | None  # the snapshot's bytes, kept
    rejection: Rejection | None
    wanted: bool  # want accepted one of the slot's records


@dataclass(slots=True)
class _Sealed(_Verdict):
    """A slot decided as its manifest streamed by: a whole, valid snapshot (its chunks in
    index order, then the manifest, record keys as the writer writes them, nothing else).
    A read holds this in place of the slot's entries, ~0.3 KB against ~1.3 KB (a restore
    of a million keys holds one per key until the log ends), and rebuilds the entries
    (:meth:`Catalog._unseal`) should a later record of the slot stream by."""

    start: int  # position of the first chunk
    chunks: tuple  # per chunk in index order: position, payload size, wanted (flat)
    manifest_wanted: bool


class Catalog:
    """Everything restorable from the topic as it was read: snapshots and records.

    Validity is decided here without unpickling; :meth:`load` unpickles one snapshot.
    The payloads of valid snapshots (those ``want`` accepted, when given) are held in
    memory until the catalog is dropped.
    """

    def __init__(
        self,
        log: Iterable[tuple[str, bytes | None]],
        *,
        signing_key: bytes | None = None,
        want: Want | None = None,
    ) -> None:
        self._signing_key = signing_key
        self._want = want
        self._zdict: bytes | None = None  # the first manifest (see VersionInfo)
        self._packer: Any = None
        self._wanted: set[str] = set()
        self.rejections: list[Rejection] = []
        self._records: dict[str, dict] = {}
        # By model key, in filing order; a tuple (~50 bytes against a list's ~110): a
        # restore's catalog holds one per key, most of one version.
        self._infos: dict[str, tuple[VersionInfo, ...]] = {}
        self._payloads: dict[tuple[str, int], bytes] = {}
        self._states: dict[str, Slots] = {}
        # Compaction: the last value of a record key wins, a tombstone deletes it. Service
        # records and bad keys (small) by record key, snapshot records by slot.
        others: dict[str, tuple[int, dict | Rejection]] = {}
        slots: dict[tuple[str, int], _Slot | _Sealed] = {}
        self.records_read = 0  # tombstones and superseded records included
        for position, (key, value) in enumerate(log):
            self._take(position, key, value, others, slots)
            self.records_read = position + 1
        for key, (_, outcome) in others.items():  # in the order of their last write
            if isinstance(outcome, Rejection):
                self.rejections.append(outcome)
            else:
                self._records[key[len(RECORD_PREFIX) :]] = outcome
        # By model key, then slot, in the order their oldest live record was written.
        first: dict[str, int] = {}
        for (model_key, _), content in slots.items():
            start = _start(content)
            first[model_key] = min(first.get(model_key, start), start)
        order = sorted(slots, key=lambda s: (first[s[0]], _start(slots[s])))
        for model_key, slot in order:
            content = slots.pop((model_key, slot))  # bytes freed per slot
            if type(content) is _Sealed:
                self._file(model_key, slot, content)
            else:
                self._file(model_key, slot, self._verdict(model_key, slot, content)[0])

    # -- building ---------------------------------------------------------------
    def _take(
        self,
        position: int,
        key: str,
        value: bytes | None,
        others: dict[str, tuple[int, dict | Rejection]],
        slots: dict[tuple[str, int], _Slot | _Sealed],
    ) -> None:
        """File one log record, replacing what its record key held."""
        parts = key.rsplit(SEP, 2)
        if key.startswith(RECORD_PREFIX) or (
            len(parts) != 3
            or not (parts[1].isdecimal() or parts[1] == str(STAGING_SLOT))
            or not (parts[2] == MANIFEST or parts[2].isdecimal())
        ):
            others.pop(key, None)
            if value is not None:
                others[key] = (position, self._other(key, value))
            return
        where = (parts[0], int(parts[1]))
        content = slots.get(where)
        if type(content) is _Sealed:  # a later record of a slot decided already
            content = slots[where] = self._unseal(where[1], content)
        if content is not None:
            content.entries.pop(key, None)
        if value is None:
            if content is not None and not content.entries:
                del slots[where]
            return
        if content is None:
            content = slots[where] = _Slot(key=where[0])
        entry = content.entries[key] = self._entry(position, parts[2], value, content)
        if entry.raw is not None:  # a manifest that reads as a header
            # The slot's own key string: one per model key, not one per record, is kept.
            sealed = self._seal((content.key, where[1]), content)
            if sealed is not None:
                slots[where] = sealed

    def _other(self, key: str, value: bytes) -> dict | Rejection:
        if not key.startswith(RECORD_PREFIX):
            return Rejection("bad_key", f"unrecognised record key {key!r}")
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = None
        if isinstance(record, dict):
            return record
        return Rejection("bad_record", f"{key[1:]!r}: not a JSON object")

    def _entry(self, position: int, tail: str, value: bytes, content: _Slot) -> _Entry:
        if tail == MANIFEST:
            try:
                header = check_header(orjson.loads(value))
            except orjson.JSONDecodeError:
                error = SnapshotRejected("bad_header", "manifest is not JSON")
                return _Entry(position, None, error=error, wanted=False)
            except SnapshotRejected as exc:
                return _Entry(position, None, error=exc, wanted=False)
            if self._zdict is None:  # what every header this read keeps is packed against
                self._zdict, self._packer = value, _packer(value)
            for entry in content.entries.values():
                if entry.piece is not None:
                    _share_header(entry.piece, value)
            return _Entry(position, None, raw=value, wanted=self._wants(header))
        try:
            chunk = parse_chunk(value)
        except SnapshotRejected:  # counts as a chunk key present, never as a chunk
            return _Entry(position, tail, wanted=False)
        header = chunk.header
        wanted = self._wants(header)
        if self._want is not None:
            self._feed(content, chunk, position)
        size = len(chunk.payload)
        piece = _Piece(
            snapshot_identity(header),
            header["chunk_index"],
            chunk.payload if wanted else b"",  # the bytes go now
            value[: value.index(b"\n")],
        )
        return _Entry(position, tail, piece=piece, size=size, wanted=wanted)

    def _wants(self, header: dict[str, Any]) -> bool:
        return self._want is None or bool(self._want(MappingProxyType(header)))

    @staticmethod
    def _feed(content: _Slot, chunk: Chunk, position: int) -> None:
        """Hash the slot's chunks in index order: a chunk 0 starts over, the next index of
        the same snapshot goes on, the same snapshot out of order breaks the run."""
        h = chunk.header
        identity = (h["key"], h["model_version"], h["sha256"], h["chunk_count"])
        run = content.run
        if h["chunk_index"] == 0:
            run = content.run = _Run(identity, hashlib.sha256())
        elif run is None or run.identity != identity:
            return
        elif h["chunk_index"] != len(run.positions):
            content.run = None
            return
        run.digest.update(chunk.payload)
        run.positions.append(position)
        if len(run.positions) == identity[3]:
            run.sha256, run.digest = run.digest.hexdigest(), None

    def _seal(self, where: tuple[str, int], content: _Slot) -> _Sealed | None:
        """``content``'s verdict with what rebuilds its entries, when its manifest (the
        record just filed) completes a whole, valid snapshot in the writer's shape."""
        model_key, slot = where
        items = list(content.entries.items())
        raw = items[-1][1].raw
        if items[-1][0] != manifest_key(model_key, slot):
            return None
        chunks = [entry for _, entry in items[:-1]]
        for index, (key, entry) in enumerate(items[:-1]):
            if (
                entry.piece is None
                or entry.piece.index != index
                or entry.piece.raw is not raw  # its header is the manifest's
                or key != chunk_key(model_key, slot, index)
            ):
                return None
        verdict, header = self._verdict(model_key, slot, content)
        info = verdict.info
        if verdict.rejection is not None or info is None or not info.valid or header is None:
            return None
        run = content.run  # fed when want is given: whole and matching, to be rebuilt as such
        if self._want is not None and (
            run is None
            or run.positions != [entry.position for entry in chunks]
            or run.sha256 != header["sha256"]
        ):
            return None
        return _Sealed(
            state=verdict.state,
            info=info,
            payload=verdict.payload,
            rejection=None,
            wanted=verdict.wanted,
            start=chunks[0].position,
            chunks=tuple(x for e in chunks for x in (e.position, e.size, e.wanted)),
            manifest_wanted=items[-1][1].wanted,
        )

    def _unseal(self, slot: int, sealed: _Sealed) -> _Slot:
        """The slot's entries as they were when it was sealed."""
        info = sealed.info
        assert info is not None  # a sealed slot holds a valid snapshot
        model_key = info.key
        raw = info.json
        identity = snapshot_identity(orjson.loads(raw))
        content = _Slot(key=model_key)
        payload, at, positions = sealed.payload, 0, []
        flat = sealed.chunks
        for index in range(len(flat) // 3):
            position, size, wanted = flat[3 * index : 3 * index + 3]
            part = payload[at : at + size] if payload is not None else b""
            at += size
            piece = _Piece(identity, index, part, raw)
            content.entries[chunk_key(model_key, slot, index)] = _Entry(
                position, str(index), piece=piece, size=size, wanted=wanted
            )
            positions.append(position)
        content.entries[manifest_key(model_key, slot)] = _Entry(
            info.position, None, raw=raw, wanted=sealed.manifest_wanted
        )
        if self._want is not None:  # the run was whole and matched (see _seal)
            content.run = _Run(identity, None, positions, identity[2])
        return content

    def _file(self, model_key: str, slot: int, verdict: _Verdict) -> None:
        if verdict.wanted:
            self._wanted.add(model_key)
        self._states[model_key] = (*self._states.get(model_key, ()), slot, verdict.state)
        if verdict.rejection is not None:
            self.rejections.append(verdict.rejection)
        elif verdict.payload is not None:
            self._payloads[(model_key, slot)] = verdict.payload
        if verdict.info is not None:
            self._infos[model_key] = (*self._infos.get(model_key, ()), verdict.info)

    def _verdict(
        self, model_key: str, slot: int, content: _Slot
    ) -> tuple[_Verdict, dict[str, Any] | None]:
        """Decide a slot, and the header it was judged by. ``complete`` (manifest, all
        chunks, checksum) is what the writer keeps or reuses; restorable also needs the
        signature. A reader with the wrong key therefore refuses snapshots without
        counting them as garbage to overwrite."""
        entries = list(content.entries.values())  # in log order
        manifest, manifest_error, chunks, indexes = None, None, [], set()
        for entry in entries:
            if entry.index is None:
                if entry.error is not None:
                    manifest_error = entry.error
                else:
                    manifest = entry.raw
            else:
                indexes.add(int(entry.index))
                if entry.piece is not None:
                    chunks.append(entry)
        position = entries[-1].position
        header = orjson.loads(manifest) if manifest is not None else None  # checked on entry
        payload, complete, unverified, rejected = None, False, False, None
        try:
            if manifest_error is not None:
                raise manifest_error
            if header is None:
                if chunks:
                    header = orjson.loads(chunks[0].piece.raw)
                    header.pop("chunk_index", None)  # a shared manifest's has none
                raise SnapshotRejected("no_manifest", "chunks without a manifest (unfinished)")
            if header["key"] != model_key:
                raise SnapshotRejected("key_mismatch", f"header is for key {header['key']!r}")
            wanted = snapshot_identity(header)
            pieces = [e for e in chunks if e.piece.identity[1:3] == wanted[1:3]]
            payload = join_pieces(
                (e.piece.identity, e.piece.index, e.piece.payload) for e in pieces
            )
            if all(e.wanted for e in pieces):
                verify_snapshot(header, payload, None)
            else:
                payload = None
                unverified = not _streamed_checksum(header, pieces, content.run)
            complete = True
            if self._signing_key:
                verify_signature(header, self._signing_key)
        except SnapshotRejected as exc:
            rejected = exc
        version = header.get("model_version") if isinstance(header, dict) else None
        state = _SlotState(version if complete else None, position, complete, _chunk_set(indexes))
        rejection, info = None, None
        if rejected is not None:
            rejection = Rejection(rejected.reason, rejected.detail, model_key, version, slot)
        if isinstance(version, int) and isinstance(header, dict):
            reason = rejected.reason if rejected is not None else None
            info = VersionInfo(
                model_key,
                version,
                rejected is None and not unverified,
                "unverified" if unverified and reason is None else reason,
                slot,
                position,
                # A header dumped from a chunk's is copied to bytes of its own size when
                # it is not deflated (orjson's buffer keeps its capacity).
                _deflate(manifest or memoryview(orjson.dumps(header)).tobytes(), self._packer),
                _progress(header),
                self._zdict,
            )
        wanted = any(entry.wanted for entry in entries)
        verdict = _Verdict(state, info, payload if rejection is None else None, rejection, wanted)
        return verdict, header if isinstance(header, dict) else None

    # -- reading ----------------------------------------------------------------
    def keys(self) -> list[str]:
        """Model keys with at least one snapshot in their own slots, valid or not (a staged
        snapshot alone does not make a key: nobody serves it)."""
        return sorted(k for k, infos in self._infos.items() if any(not i.staged for i in infos))

    def versions(self, key: str) -> list[VersionInfo]:
        """One entry per model version in the key's own slots, oldest first: its newest
        valid snapshot, else its newest invalid one (with ``reason``). A staged snapshot
        is not among them: see :meth:`staged`."""
        best: dict[int, VersionInfo] = {}
        for info in self._infos.get(key, ()):
            if info.staged:
                continue
            current = best.get(info.model_version)
            if current is None or (info.valid, info.recency) > (current.valid, current.recency):
                best[info.model_version] = info
        return sorted(best.values(), key=lambda i: i.recency)

    def staged(self, key: str) -> VersionInfo | None:
        """The snapshot in ``key``'s staging slot, valid or not; ``None`` when it is empty."""
        return next((i for i in self._infos.get(key, ()) if i.staged), None)

    def load(
        self, key: str, version: int | None = None, *, staged: bool = False
    ) -> tuple[dict[str, Any], object] | None:
        """The newest valid snapshot of ``key`` (of ``version`` when given), unpickled.

        Without ``version``, only the key's own slots count (what a restart restores);
        with one, a staged snapshot of that version counts too (the newest wins), and
        with ``staged`` only the staged one does (its version number may also be one the
        service wrote after the rebuild was staged).
        Snapshots that fail are skipped and end up in :attr:`rejections`; ``None`` when
        nothing restorable is left. A ``version`` that cannot be restored is never
        replaced by another version.

        After ``read(want=...)``: a key ``want`` did not accept raises ``LookupError``
        when it has a valid snapshot (read it with a ``want`` that accepts it), and a
        snapshot whose bytes were dropped is passed over as if absent.
        """
        candidates = self.candidates(key, version, staged=staged)
        if candidates and self._want is not None and key not in self._wanted:
            raise LookupError(
                f"checkpoint key {key!r} was not wanted by this read: its snapshots' bytes "
                "were not kept"
            )
        for info in candidates:
            payload = self._payloads.get((key, info.slot))
            if payload is None:  # valid, but want dropped its bytes
                continue
            loaded = self.decode(info, payload)
            if loaded is not None:
                return loaded
        return None

    def candidates(
        self, key: str, version: int | None = None, *, staged: bool = False
    ) -> list[VersionInfo]:
        """The valid snapshots :meth:`load` tries for these arguments, in its order (the
        first that decodes is the one it returns); a restore reading in two passes
        (:meth:`LogStore.fetch`) tries them in the same order."""
        found = [
            info
            for info in self._infos.get(key, ())
            if info.valid
            and (info.model_version == version if version is not None else not info.staged)
            and (info.staged or not staged)
        ]
        return sorted(found, key=_newest_first(version), reverse=True)

    def decode(self, info: VersionInfo, payload: bytes) -> tuple[dict[str, Any], object] | None:
        """``info``'s header and its ``payload`` verified and unpickled; ``None`` when that
        fails, with the reason added to :attr:`rejections`."""
        try:
            header = info.header  # parsed anew: the caller's own (decoding reads it)
            return header, decode_snapshot(header, payload, self._signing_key)
        except SnapshotRejected as exc:
            self.rejections.append(
                Rejection(exc.reason, exc.detail, info.key, info.model_version, info.slot)
            )
        return None

    def forget(self, key: str) -> None:
        """Drop what this catalog holds of ``key``'s snapshots (the writer's view of its
        slots stays): a restore of a million keys lets go of each as it is adopted."""
        for info in self._infos.pop(key, ()):
            self._payloads.pop((key, info.slot), None)

    def records(self) -> dict[str, dict]:
        """The service's JSON records, by the key given to ``publish_record``."""
        return dict(self._records)

    @property
    def payload_bytes(self) -> int:
        """Snapshot payload bytes this catalog holds (what :meth:`load` can unpickle)."""
        return sum(len(payload) for payload in self._payloads.values())


def _streamed_checksum(header: Mapping[str, Any], pieces: list[_Entry], run: _Run | None) -> bool:
    """Check size and SHA-256 of a snapshot whose bytes were dropped: ``True`` when they
    match, ``False`` when the SHA-256 is unknown (the chunks that remain did not stream
    by in index order); raises ``checksum_mismatch`` like :func:`verify_snapshot`."""
    size = sum(piece.size for piece in pieces)
    if size != header["payload_size"]:
        raise SnapshotRejected(
            "checksum_mismatch", f"payload is {size} bytes, header says {header['payload_size']}"
        )
    at = {p.piece.index: p.position for p in pieces if p.piece is not None}
    if run is None or run.positions != [at[i] for i in range(len(at))]:
        return False
    if run.sha256 != header["sha256"]:
        raise SnapshotRejected("checksum_mismatch", "payload SHA-256 differs from the header")
    return True


def _start(content: _Slot | _Sealed) -> int:
    """The position of a slot's oldest live record."""
    if type(content) is _Sealed:
        return content.start
    return next(iter(content.entries.values())).position


def _share_header(piece: _Piece, manifest: bytes) -> None:
    """Let ``piece`` hold ``manifest``'s bytes in place of its own header when the two say
    the same (the writer writes a chunk's header as its manifest's plus ``chunk_index``):
    a headers-only read then holds one header per slot, not one per chunk and manifest."""
    raw = piece.raw
    end = len(manifest) - 1
    if (
        raw is not manifest
        and raw[end:] == b',"chunk_index":%d}' % piece.index
        and raw[:end] == manifest[:end]
    ):
        piece.raw = manifest


def _fetch(
    log: Iterable[tuple[str, bytes | None]], chosen: Mapping[str, VersionInfo]
) -> Iterator[tuple[VersionInfo, bytes]]:
    """:meth:`LogStore.fetch` over ``log``."""
    pieces: dict[str, dict[int, bytes]] = {}  # model key -> chunk index -> payload slice
    done: set[str] = set()  # yielded and still chosen (a caller drops what it adopted)
    for record_key, value in log:
        if value is None:
            continue
        model_key, _, rest = record_key.rpartition(SEP)
        if rest == MANIFEST or not rest.isdecimal():
            continue
        model_key, _, slot = model_key.rpartition(SEP)
        info = chosen.get(model_key)
        if info is None or slot != str(info.slot) or model_key in done:
            continue
        try:
            chunk = parse_chunk(value)
        except SnapshotRejected:
            continue
        header, want = chunk.header, info.header
        identity = snapshot_identity(want)
        if snapshot_identity(header) != identity:
            continue  # an older snapshot in the slot, superseded later in the log
        got = pieces.setdefault(model_key, {})
        got[header["chunk_index"]] = chunk.payload  # a repeat is the same bytes (SHA-256)
        if len(got) < identity[3]:
            continue
        del pieces[model_key]
        payload = join_pieces((identity, index, part) for index, part in got.items())
        yield info, payload
        if model_key in chosen:  # a copy further on in a log not compacted yet: not again
            done.add(model_key)


# --------------------------------------------------------------------------- stores


def _protected(slots: Mapping[int, _SlotState], version: int, keep: int) -> set[int]:
    """The newest complete slot of ``version`` and of each of the ``keep - 1`` newest others."""
    newest: dict[int, int] = {}
    for slot, state in slots.items():
        if state.complete and (
            state.version not in newest or state.position > slots[newest[state.version]].position
        ):
            newest[state.version] = slot
    own = newest.pop(version, None)
    others = sorted(newest.values(), key=lambda s: slots[s].position, reverse=True)[: keep - 1]
    return set(others) | ({own} if own is not None else set())


def _newest_first(version: int | None) -> Callable[[VersionInfo], tuple]:
    """How :meth:`Catalog.load` orders candidates: what a restart restores by
    :attr:`VersionInfo.recency`; the snapshots of one asked-for version (a rollback's
    target, staged ones included) by log order, the newest offered last."""
    if version is None:
        return lambda info: info.recency
    return lambda info: (info.position,)


def _choose_slot(slots: Mapping[int, _SlotState], version: int, keep: int) -> int:
    """An unprotected slot: an empty one, else a broken one, else the oldest."""
    protected = _protected(slots, version, keep)

    def preference(slot: int) -> tuple:
        state = slots.get(slot)
        return (state is not None, state is not None and state.complete,
                state.position if state else -1, slot)  # fmt: skip

    return min((s for s in range(keep + 1) if s not in protected), key=preference)


class LogStore:
    """Snapshot publishing and catalog reading over a log of ``(key, value)`` records.

    The slot rules live here; a subclass is only the transport: ``_write`` delivers
    records in order (raising ``BrokerError`` when it cannot) and ``_scan`` yields the
    log as compacted so far, oldest first (a ``None`` value is a tombstone)."""

    def __init__(self, *, signing_key: bytes | None, keep_versions: int, chunk_bytes: int) -> None:
        if type(keep_versions) is not int or keep_versions < 1:
            raise ConfigError(f"keep_versions: must be a positive integer, got {keep_versions!r}")
        if type(chunk_bytes) is not int or not 1024 <= chunk_bytes <= MAX_CHUNK_BYTES:
            raise ConfigError(
                f"chunk_bytes: must be an integer from 1024 to {MAX_CHUNK_BYTES}, "
                f"got {chunk_bytes!r}"
            )
        if signing_key is not None and (
            not isinstance(signing_key, bytes) or len(signing_key) < snapshot.MIN_KEY_BYTES
        ):
            raise ConfigError(
                f"signing_key: must be None or at least {snapshot.MIN_KEY_BYTES} bytes "
                "(see load_signing_key)"
            )
        self._signing_key = signing_key
        self.keep_versions = keep_versions
        self.chunk_bytes = chunk_bytes
        self._slots: dict[str, Slots] | None = None
        self._position = 0
        #: Asked before every write; ``False`` refuses it with :class:`FencedError`. The
        #: service answers whether it may still be the owner (see service/stall.py), so a
        #: publish that was under way when the process stood still stops between records.
        self.may_write: Callable[[], bool] | None = None

    def _guarded(self, records: list[tuple[str, bytes | None]]) -> None:
        if self.may_write is not None and not self.may_write():
            raise FencedError("checkpoint write refused: this instance may no longer own it")
        self._write(records)

    # transport: subclasses deliver records in order (raising BrokerError) and replay them
    def _write(self, records: list[tuple[str, bytes | None]]) -> None:
        raise NotImplementedError

    def _scan(self, timeout: float) -> Iterable[tuple[str, bytes | None]]:
        raise NotImplementedError

    def read(self, timeout: float = 30.0, *, want: Want | None = None) -> Catalog:
        """Read the whole topic (as compacted so far) into a :class:`Catalog`, keeping
        payload bytes only of snapshots whose header ``want`` accepts, when given (see
        the module docstring); the writer learns every key's slots either way."""
        catalog = Catalog(self._scan(timeout), signing_key=self._signing_key, want=want)
        self._slots = catalog._states  # the writer's now: the catalog never reads them again
        self._position = catalog.records_read
        return catalog

    def fetch(
        self, chosen: Mapping[str, VersionInfo], timeout: float = 30.0
    ) -> Iterator[tuple[VersionInfo, bytes]]:
        """Read the log once more and yield each ``chosen`` snapshot (a catalog's
        :class:`VersionInfo`, by model key) with its payload as soon as its last chunk
        streams by, in log order: the second pass of a restore that must not hold every
        key's bytes at once (``read(want=...)`` keeping none, then a choice, then this).
        A chunk counts when its record key is the chosen slot's and its header names the
        chosen snapshot; the payload is not verified here (:meth:`Catalog.decode` does).
        A chosen snapshot that never streams by whole is not yielded."""
        return _fetch(self._scan(timeout), chosen)

    def publish(self, state: object, meta: SnapshotMeta, *, staged: bool = False) -> dict[str, Any]:
        """Write a snapshot of ``state``; return its header once every record is delivered.

        With ``staged``, into the key's staging slot, replacing what it held and touching
        no other slot (see the module docstring); otherwise into one of the key's own
        slots, retiring the ones no longer kept (never the staging slot)."""
        key = meta.key
        if not (isinstance(key, str) and key and key.isprintable()):
            raise ConfigError(f"model key: {key!r} must be a non-empty printable string")
        chunks = encode_snapshot(state, meta, self._signing_key, chunk_bytes=self.chunk_bytes)
        return self.publish_encoded([chunks], staged=staged)[0]

    def encode_pickled(self, pickled: bytes, meta: SnapshotMeta) -> list[Chunk]:
        """A state pickled already, as the chunks :meth:`publish` would write (signed with
        this store's key), for :meth:`publish_encoded`."""
        return encode_pickled(pickled, meta, self._signing_key, chunk_bytes=self.chunk_bytes)

    def publish_encoded(
        self, snapshots: list[list[Chunk]], *, staged: bool = False
    ) -> list[dict[str, Any]]:
        """Write snapshots already encoded (by :meth:`encode`), at most one per model key,
        with the slot rules of :meth:`publish`, in three deliveries whatever their number:
        every chunk, then every manifest, then the retired slots' tombstones. A crash
        between them leaves each key's previous snapshots intact (chunks without a
        manifest are refused). Returns the headers, in order."""
        if self._slots is None:
            self.read()
        assert self._slots is not None
        chunk_records: list[tuple[str, bytes | None]] = []
        placed = []
        for chunks in snapshots:
            header = {k: v for k, v in chunks[0].header.items() if k != "chunk_index"}
            key, version = header["key"], header["model_version"]
            slots = _slot_map(self._slots.get(key, ()))
            own = {s: held for s, held in slots.items() if s != STAGING_SLOT}
            slot = STAGING_SLOT if staged else _choose_slot(own, version, self.keep_versions)
            written = _chunk_set(range(len(chunks)))
            leftovers = sorted(slots[slot].indexes - written) if slot in slots else []
            slots[slot] = _SlotState(None, self._tick(), False, _chunk_set([*written, *leftovers]))
            self._slots[key] = _slots_of(slots)
            chunk_records += [
                (chunk_key(key, slot, c.header["chunk_index"]), c.to_bytes()) for c in chunks
            ]
            chunk_records += [(chunk_key(key, slot, i), None) for i in leftovers]
            placed.append((key, slot, header, written))
        self._guarded(chunk_records)
        self._guarded([(manifest_key(key, slot), orjson.dumps(h)) for key, slot, h, _ in placed])
        tombstones: list[tuple[str, bytes | None]] = []
        for key, slot, header, written in placed:
            slots = _slot_map(self._slots[key])
            version = header["model_version"]
            slots[slot] = _SlotState(version, self._tick(), True, written)
            if not staged:
                own = {s: held for s, held in slots.items() if s != STAGING_SLOT}
                kept = _protected(own, version, self.keep_versions)
                retired = [s for s in own if s not in kept]  # older versions, garbage
                tombstones += [(manifest_key(key, s), None) for s in retired]
                for s in retired:
                    indexes = sorted(slots.pop(s).indexes)
                    tombstones += [(chunk_key(key, s, i), None) for i in indexes]
            self._slots[key] = _slots_of(slots)
        if tombstones:
            self._guarded(tombstones)
        return [header for _, _, header, _ in placed]

    def publish_record(self, key: str, value: dict | None) -> None:
        """Write (or, with ``None``, delete) a small JSON record next to the snapshots."""
        if not isinstance(key, str) or not key:
            raise ConfigError(f"record key: {key!r} must be a non-empty string")
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"record {key!r}: value must be a JSON object or None")
        self._guarded([(record_key(key), None if value is None else orjson.dumps(value))])

    def _tick(self) -> int:
        self._position += 1
        return self._position


class MemoryCheckpointStore(LogStore):
    """The store without a broker, for pure tests and offline replay.

    ``log`` is what a fully compacted topic would hold: record key → value, in the
    order of their last write.
    """

    def __init__(
        self,
        *,
        signing_key: bytes | None = None,
        keep_versions: int = 3,
        chunk_bytes: int = 1_048_576,
    ) -> None:
        super().__init__(
            signing_key=signing_key, keep_versions=keep_versions, chunk_bytes=chunk_bytes
        )
        self.log: dict[str, bytes] = {}

    def _write(self, records: list[tuple[str, bytes | None]]) -> None:
        for key, value in records:
            self.log.pop(key, None)
            if value is not None:
                self.log[key] = value

    def _scan(self, timeout: float) -> Iterable[tuple[str, bytes | None]]:
        return list(self.log.items())

    def __repr__(self) -> str:
        signed = self._signing_key is not None
        return f"MemoryCheckpointStore(records={len(self.log)}, signed={signed})"
