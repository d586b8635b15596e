"""The checkpoint store, on the real broker and in memory: the same tests run on both.

Tampering goes around the store: records are produced straight to the topic (or put
straight into the in-memory log), the way a broken or hostile writer would.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import orjson
import pytest

from stream_learner.core.checkpoints import (
    STAGING_SLOT,
    Catalog,
    MemoryCheckpointStore,
    _slot_map,
    chunk_key,
    manifest_key,
)
from stream_learner.core.snapshot import SnapshotMeta, encode_snapshot
from stream_learner.errors import BrokerError, ConfigError
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.topics import load_topics

TOPICS_FILE = Path(__file__).resolve().parents[2] / "topics" / "topics.toml"
KEY = b"checkpoint-test-signing-key"
SMALL_CHUNKS = 2048


def _compact_config() -> dict[str, str]:
    return dict(load_topics(TOPICS_FILE).topic("checkpoints").config)


class Backend:
    """Stores on one topic (or one in-memory log), plus a raw writer that bypasses them."""

    def __init__(self, kind: str, bootstrap: str | None = None, topic: str | None = None):
        self.kind, self.bootstrap, self.topic = kind, bootstrap, topic
        self._memory: MemoryCheckpointStore | None = None
        self._stores: list[CheckpointStore] = []

    def store(self, **options) -> CheckpointStore | MemoryCheckpointStore:
        options.setdefault("signing_key", KEY)
        options.setdefault("chunk_bytes", SMALL_CHUNKS)
        if self.kind == "memory":
            fresh = MemoryCheckpointStore(**options)
            if self._memory is not None:
                fresh.log = self._memory.log  # a new store instance on the same "topic"
            self._memory = fresh
            return fresh
        store = CheckpointStore(self.bootstrap, self.topic, **options)
        self._stores.append(store)
        return store

    def raw(self, key: str, value: bytes | None) -> None:
        if self.kind == "memory":
            assert self._memory is not None
            self._memory.log.pop(key, None)
            if value is not None:
                self._memory.log[key] = value
            return
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": self.bootstrap, "message.max.bytes": 8_388_608})
        producer.produce(self.topic, value, key=key, partition=0)
        assert producer.flush(30) == 0

    def close(self) -> None:
        for store in self._stores:
            store.close()


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
def backend(request):
    if request.param == "memory":
        yield Backend("memory")
        return
    bootstrap = request.getfixturevalue("bootstrap")
    topic = request.getfixturevalue("topic_factory")("checkpoints", config=_compact_config())
    backend = Backend("kafka", bootstrap, topic)
    yield backend
    backend.close()


def _meta(version: int, key: str = "fraud", **changes) -> SnapshotMeta:
    fields = {
        "key": key,
        "lineage": "fraud-lr-1",
        "model_version": version,
        "trigger": "interval",
        "metrics": {"accuracy": 0.5 + version / 100},
        "offsets": {"stream-learner.events": {0: 100 * version, 1: 90 * version}},
        "created": 1718000000.0 + version,
    }
    fields.update(changes)
    return SnapshotMeta(**fields)


def _state(version: int, size: int = 5000) -> dict:
    """A few incompressible kilobytes: several chunks of SMALL_CHUNKS each."""
    return {"version": version, "blob": os.urandom(size)}


def _publish(store, versions, key="fraud") -> dict[int, dict]:
    states = {}
    for version in versions:
        states[version] = _state(version)
        header = store.publish(states[version], _meta(version, key))
        assert header["model_version"] == version and header["chunk_count"] > 1
    return states


def _slot(catalog, key: str, version: int) -> int:
    (info,) = [i for i in catalog.versions(key) if i.model_version == version]
    return info.slot


# --------------------------------------------------------------------------- happy paths


def test_publish_three_versions_and_read_back_the_newest(backend):
    writer = backend.store()
    states = _publish(writer, [1, 2, 3])
    catalog = backend.store().read()  # a fresh instance, as after a restart
    assert catalog.keys() == ["fraud"]
    assert [(i.model_version, i.valid, i.reason) for i in catalog.versions("fraud")] == [
        (1, True, None),
        (2, True, None),
        (3, True, None),
    ]
    header, state = catalog.load("fraud")
    assert state == states[3]
    assert header["offsets"] == {"stream-learner.events": {"0": 300, "1": 270}}
    assert header["metrics"] == {"accuracy": 0.53} and header["signature"]
    newest = catalog.versions("fraud")[-1]
    assert (newest.lineage, newest.trigger, newest.offsets) == (
        "fraud-lr-1",
        "interval",
        header["offsets"],
    )
    assert catalog.load("fraud", 1)[1] == states[1]
    assert catalog.load("nobody") is None and catalog.rejections == []


def test_keep_versions_bounds_what_is_readable(backend):
    store = backend.store(keep_versions=2)
    states = _publish(store, range(1, 6))
    catalog = backend.store(keep_versions=2).read()
    assert [i.model_version for i in catalog.versions("fraud")] == [4, 5]
    assert catalog.load("fraud", 3) is None
    assert catalog.load("fraud")[1] == states[5]
    assert catalog.rejections == []
    if backend.kind == "memory":  # what compaction leaves: 2 versions × (chunks + manifest)
        chunks = catalog.versions("fraud")[0].header["chunk_count"]
        assert len(backend._memory.log) == 2 * (chunks + 1)


def test_republishing_a_version_keeps_its_previous_snapshot_until_the_new_one_is_complete(
    backend,
):
    store = backend.store(keep_versions=1)
    store.publish(_state(1), _meta(1))
    first = _slot(store.read(), "fraud", 1)
    newer = _state(1)
    store.publish(newer, _meta(1, offsets={"stream-learner.events": {0: 777}}))
    catalog = store.read()
    assert _slot(catalog, "fraud", 1) != first  # written beside it, then the old one removed
    assert [i.model_version for i in catalog.versions("fraud")] == [1]
    header, state = catalog.load("fraud")
    assert state == newer and header["offsets"] == {"stream-learner.events": {"0": 777}}


def test_a_rollback_republished_as_an_old_version_is_what_a_restart_restores(backend):
    store = backend.store()
    states = _publish(store, [1, 2, 3])
    # As the service writes it: at the input positions it reached when it rolled back.
    at = {"stream-learner.events": {0: 301, 1: 271}}
    store.publish(states[2], _meta(2, extra={"rollback_of": 3}, offsets=at))
    catalog = backend.store().read()
    header, state = catalog.load("fraud")
    assert state == states[2] and header["extra"] == {"rollback_of": 3}
    assert [i.model_version for i in catalog.versions("fraud")] == [1, 3, 2]


def test_keys_are_independent_and_records_live_beside_snapshots(backend):
    store = backend.store(keep_versions=1)
    a = _publish(store, [1, 2], key="a")
    b = _publish(store, [7], key="b")
    store.publish_record("__partition__\x1fevents\x1f0", {"offsets": {"0": 12}, "keys": {"a": 2}})
    store.publish_record("__partition__\x1fevents\x1f1", {"offsets": {"1": 5}})
    store.publish_record("__partition__\x1fevents\x1f1", None)  # deleted
    catalog = backend.store(keep_versions=1).read()
    assert catalog.keys() == ["a", "b"]
    assert catalog.load("a")[1] == a[2] and catalog.load("b")[1] == b[7]
    assert catalog.records() == {
        "__partition__\x1fevents\x1f0": {"offsets": {"0": 12}, "keys": {"a": 2}}
    }


# --------------------------------------------------------------------------- staging


def _live(backend, store) -> set[str]:
    """The record keys the topic still holds a value for (what compaction keeps)."""
    latest: dict[str, bytes | None] = {}
    for key, value in store._scan(30.0):
        latest[key] = value
    return {key for key, value in latest.items() if value is not None}


def test_the_writer_never_reuses_or_retires_the_staging_slot(backend):
    service = backend.store(keep_versions=2)
    states = _publish(service, [1, 2])  # the service's view of the slots is now cached
    staged = _state(3)
    header = backend.store(keep_versions=2).publish(staged, _meta(3), staged=True)
    assert header["model_version"] == 3
    # The service, with its stale view, cycles through all its slots and retires old ones;
    # then a fresh writer that did read the staged snapshot does the same.
    states |= _publish(service, [2, 4, 5, 6])
    fresh = backend.store(keep_versions=2)
    fresh.read()
    states |= _publish(fresh, [7, 8])

    catalog = backend.store(keep_versions=2).read()
    info = catalog.staged("fraud")
    assert (info.model_version, info.valid, info.slot, info.staged) == (3, True, STAGING_SLOT, True)
    assert info.header["sha256"] == header["sha256"]
    assert catalog.load("fraud", 3)[1] == staged  # loadable by version, as a rollback does
    # What a restart restores ignores the staged snapshot: the key's own newest.
    assert [i.model_version for i in catalog.versions("fraud")] == [7, 8]
    assert catalog.load("fraud")[1] == states[8]
    assert catalog.keys() == ["fraud"] and catalog.rejections == []
    live = _live(backend, fresh)
    assert manifest_key("fraud", STAGING_SLOT) in live
    assert all(chunk_key("fraud", STAGING_SLOT, i) in live for i in range(header["chunk_count"]))


def test_a_staged_load_is_the_staged_snapshot_when_the_service_wrote_its_version_too(backend):
    """The rebuild was staged as v2 while the service, not yet checkpointed, had promoted
    its own v2: the adoption's rollback command (``staged``) must get the rebuild."""
    cli, service = backend.store(), backend.store()
    rebuilt = _state(2)
    cli.publish(rebuilt, _meta(2, lineage="rebuilt"), staged=True)
    own = _publish(service, [2])[2]  # written after the staged one: newest in log order
    catalog = backend.store().read()
    assert catalog.load("fraud", 2)[1] == own
    header, state = catalog.load("fraud", 2, staged=True)
    assert state == rebuilt and header["lineage"] == "rebuilt"
    assert catalog.load("fraud", 1, staged=True) is None  # no staged v1: never another


def test_a_newer_staged_publish_replaces_the_older_and_its_leftover_chunks(backend):
    service = backend.store()
    states = _publish(service, [1])
    cli = backend.store()
    big = cli.publish(_state(2, size=15_000), _meta(2, lineage="rebuilt"), staged=True)
    small_state = _state(3, size=100)
    small = cli.publish(small_state, _meta(3, lineage="rebuilt"), staged=True)
    assert (big["chunk_count"], small["chunk_count"]) == (8, 1)

    catalog = backend.store().read()
    info = catalog.staged("fraud")
    assert (info.model_version, info.lineage, info.valid) == (3, "rebuilt", True)
    assert catalog.load("fraud", 2) is None  # replaced: gone
    assert catalog.load("fraud", 3)[1] == small_state
    assert catalog.load("fraud")[1] == states[1] and catalog.rejections == []
    staging = {k for k in _live(backend, cli) if k.startswith(f"fraud\x1f{STAGING_SLOT}\x1f")}
    assert staging == {chunk_key("fraud", STAGING_SLOT, 0), manifest_key("fraud", STAGING_SLOT)}


# --------------------------------------------------------------------------- reading some keys


def _listing(catalog, key: str) -> list[tuple]:
    return [
        (i.model_version, i.valid, i.reason, i.slot, i.position, i.header)
        for i in catalog.versions(key)
    ]


def _only(key: str):
    return lambda header: header["key"] == key


def test_a_read_with_want_keeps_the_bytes_of_wanted_keys_only(backend):
    store = backend.store()
    states = {key: _publish(store, [1, 2, 3], key=key) for key in ("a", "b", "c")}
    full = backend.store().read()
    catalog = backend.store().read(want=_only("b"))

    sizes = {k: sum(i.header["payload_size"] for i in full.versions(k)) for k in "abc"}
    assert full.payload_bytes == sum(sizes.values())
    assert catalog.payload_bytes == sizes["b"] > 0  # a's and c's bytes went by, not kept
    assert catalog.load("b")[1] == states["b"][3]
    assert catalog.load("b", 1)[1] == states["b"][1]
    # Everything else is what a full read says: listing, positions, the writer's view.
    assert catalog.keys() == full.keys() == ["a", "b", "c"]
    for key in "abc":
        assert _listing(catalog, key) == _listing(full, key)
        assert [i.valid for i in catalog.versions(key)] == [True, True, True]
    assert catalog._states == full._states
    assert catalog.rejections == full.rejections == []
    with pytest.raises(LookupError, match="'a' was not wanted"):
        catalog.load("a")
    assert catalog.load("nobody") is None


def test_after_a_read_with_want_the_writer_keeps_the_versions_of_unwanted_keys(backend):
    store = backend.store(keep_versions=2)
    states = {key: _publish(store, [1, 2, 3], key=key) for key in ("a", "b")}
    writer = backend.store(keep_versions=2)
    writer.read(want=_only("b"))  # as a rollback of b does; then the writer goes on with a
    states["a"] |= _publish(writer, [4], key="a")  # keeps v3: known complete, not wiped
    states["b"] |= _publish(writer, [4], key="b")

    catalog = backend.store(keep_versions=2).read()
    assert [i.model_version for i in catalog.versions("a")] == [3, 4]
    assert [i.model_version for i in catalog.versions("b")] == [3, 4]
    for key, version in [("a", 3), ("a", 4), ("b", 3), ("b", 4)]:
        assert catalog.load(key, version)[1] == states[key][version]
    assert catalog.rejections == []


def test_a_headers_only_read_then_fetch_yields_each_chosen_snapshot_whole(backend):
    """A restart's two passes: a read that keeps no bytes, then a second pass that hands
    over the chosen snapshots (several chunks each), which decode to what was published;
    a key or version not chosen is not fetched."""
    store = backend.store()
    states = {key: _publish(store, [1, 2, 3], key=key) for key in ("a", "b", "c")}
    catalog = backend.store().read(want=lambda header: False)
    assert catalog.payload_bytes == 0 and catalog.keys() == ["a", "b", "c"]
    chosen = {"a": catalog.candidates("a")[0], "c": catalog.candidates("c")[-1]}
    assert (chosen["a"].model_version, chosen["c"].model_version) == (3, 1)
    fetched = {}
    for info, payload in backend.store().fetch(chosen):
        fetched[info.key] = catalog.decode(info, payload)
    assert sorted(fetched) == ["a", "c"]
    assert fetched["a"][1] == states["a"][3] and fetched["c"][1] == states["c"][1]
    assert fetched["a"][0]["chunk_count"] > 1 and catalog.rejections == []


def test_a_snapshot_whose_bytes_were_dropped_is_still_checked(backend):
    """A corrupt chunk written in order is caught by the checksum fed as chunks stream by;
    one rewritten later cannot be: that snapshot is listed ``unverified`` and kept."""
    store = backend.store()
    states = _publish(store, [1], key="b")
    chunks = encode_snapshot(_state(2), _meta(2, "a"), KEY, chunk_bytes=SMALL_CHUNKS)
    header = {k: v for k, v in chunks[0].header.items() if k != "chunk_index"}
    corrupt = bytearray(chunks[1].to_bytes())
    corrupt[-10] ^= 0x01
    for chunk in chunks:  # in order, as a writer would, into slot 0 of key a
        value = bytes(corrupt) if chunk.header["chunk_index"] == 1 else chunk.to_bytes()
        backend.raw(chunk_key("a", 0, chunk.header["chunk_index"]), value)
    backend.raw(manifest_key("a", 0), orjson.dumps(header))

    full = backend.store().read()
    catalog = backend.store().read(want=_only("b"))
    for read in (full, catalog):
        assert [(i.model_version, i.valid, i.reason) for i in read.versions("a")] == [
            (2, False, "checksum_mismatch")
        ]
        assert [(r.key, r.reason) for r in read.rejections] == [("a", "checksum_mismatch")]
        assert _slot_map(read._states["a"])[0].complete is False  # broken: the writer reuses it
    b = catalog.versions("b")[0].header["payload_size"]
    assert catalog.payload_bytes == b and catalog.load("b")[1] == states[1]

    # The same chunk rewritten correctly after the manifest: out of order.
    backend.raw(chunk_key("a", 0, 1), chunks[1].to_bytes())
    full = backend.store().read()
    catalog = backend.store().read(want=_only("b"))
    assert [(i.valid, i.reason) for i in full.versions("a")] == [(True, None)]
    assert [(i.valid, i.reason) for i in catalog.versions("a")] == [(False, "unverified")]
    assert catalog.rejections == full.rejections == []  # not refused: not examined
    assert catalog._states == full._states  # complete: never overwritten on a guess
    assert catalog.load("b")[1] == states[1]


def _history(keys: int, versions: int, size: int, keep: int = 3):
    """A checkpoint log as written, not compacted: each key cycles through its slots, so
    later snapshots supersede earlier ones; values are made only when asked for."""
    rng = random.Random(7)
    for version in range(1, versions + 1):
        for k in range(keys):
            meta = _meta(version, f"k{k:02d}", extra={"partition": k % 8})
            state = {"blob": rng.randbytes(size)}
            chunks = encode_snapshot(state, meta, KEY, chunk_bytes=64 * 1024)
            slot = version % (keep + 1)
            for chunk in chunks:
                yield chunk_key(meta.key, slot, chunk.header["chunk_index"]), chunk.to_bytes()
            header = {k: v for k, v in chunks[0].header.items() if k != "chunk_index"}
            yield manifest_key(meta.key, slot), orjson.dumps(header)


def test_a_catalog_holds_the_bytes_of_wanted_keys_only_while_the_log_streams_by():
    """The log is a generator: what the catalog holds at its peak is what it kept, not
    the topic (tracemalloc counts the Python heap, so the bound is deterministic)."""
    keys, versions, size = 40, 6, 100_000  # 24 MB written, 16 MB live
    full = Catalog(_history(keys, versions, size), signing_key=KEY)
    wanted = [f"k{k:02d}" for k in range(keys) if k % 8 == 1]  # one partition of eight

    tracemalloc.start()
    try:
        catalog = Catalog(
            _history(keys, versions, size),
            signing_key=KEY,
            want=lambda header: header["extra"].get("partition") == 1,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert full.payload_bytes > keys * 4 * size  # every live snapshot: 4 slots per key
    kept = sum(i.header["payload_size"] for k in wanted for i in full.versions(k))
    assert catalog.payload_bytes == kept
    # At its peak: what it kept, plus one snapshot in the making and the headers of the
    # rest, far below the live topic (the old catalog held every live value at once).
    assert peak < kept + full.payload_bytes / 4
    for k in range(keys):
        assert _listing(catalog, f"k{k:02d}") == _listing(full, f"k{k:02d}")
    assert catalog._states == full._states and catalog.rejections == []
    assert catalog.load(wanted[0])[1]["blob"] and catalog.records_read == keys * versions * 3


# --------------------------------------------------------------------------- refusals


def test_a_tampered_chunk_is_refused_and_the_previous_version_restored(backend):
    store = backend.store()
    states = _publish(store, [1, 2])
    meta = _meta(3)
    header = store.publish(states.setdefault(3, _state(3)), meta)
    slot = _slot(store.read(), "fraud", 3)
    chunks = encode_snapshot(states[3], meta, KEY, chunk_bytes=SMALL_CHUNKS)
    assert chunks[0].header["sha256"] == header["sha256"]  # the same bytes as published
    raw = bytearray(chunks[1].to_bytes())
    raw[-10] ^= 0x01  # one payload byte
    backend.raw(chunk_key("fraud", slot, 1), bytes(raw))

    catalog = backend.store().read()
    info = catalog.versions("fraud")[-1]
    assert (info.model_version, info.valid, info.reason) == (3, False, "checksum_mismatch")
    header, state = catalog.load("fraud")
    assert header["model_version"] == 2 and state == states[2]
    assert [(r.key, r.model_version, r.reason) for r in catalog.rejections] == [
        ("fraud", 3, "checksum_mismatch")
    ]
    assert catalog.load("fraud", 3) is None  # an explicit version is never swapped


def test_a_truncated_chunk_set_is_refused(backend):
    store = backend.store()
    states = _publish(store, [1, 2])
    slot = _slot(store.read(), "fraud", 2)
    backend.raw(chunk_key("fraud", slot, 1), None)  # tombstone: compaction drops the chunk
    catalog = backend.store().read()
    assert [(r.model_version, r.reason) for r in catalog.rejections] == [(2, "incomplete")]
    assert catalog.load("fraud")[1] == states[1]


def test_snapshots_from_another_key_or_signer_are_refused(backend):
    store = backend.store()
    states = _publish(store, [1])
    store.publish(_state(2), _meta(2, key="other"))
    # Replay "other"'s signed manifest under "fraud": the header names its real key.
    other = store.read().versions("other")[0]
    backend.raw(manifest_key("fraud", 3), orjson.dumps(other.header))
    catalog = backend.store().read()
    assert ("fraud", "key_mismatch") in [(r.key, r.reason) for r in catalog.rejections]
    assert catalog.load("fraud")[1] == states[1]

    stranger = backend.store(signing_key=b"a-different-signing-key").read()
    assert stranger.load("fraud") is None
    reasons = {(r.key, r.model_version, r.reason) for r in stranger.rejections}
    assert {("fraud", 1, "bad_signature"), ("other", 2, "bad_signature")} <= reasons
    unsigned_reader = backend.store(signing_key=None).read()  # checksum only
    assert unsigned_reader.load("fraud")[1] == states[1]


def test_a_write_interrupted_before_its_manifest_is_never_restored(backend):
    store = backend.store()
    states = _publish(store, [1, 2])
    real_write = store._write

    def crash_after_the_chunks(records):
        if any(key.endswith("\x1fm") for key, _ in records):
            raise BrokerError("simulated crash before the manifest")
        real_write(records)

    store._write = crash_after_the_chunks
    with pytest.raises(BrokerError, match="simulated"):
        store.publish(_state(3), _meta(3))

    catalog = backend.store().read()
    info = catalog.versions("fraud")[-1]
    assert (info.model_version, info.valid, info.reason) == (3, False, "no_manifest")
    assert catalog.load("fraud")[1] == states[2]
    assert [(r.model_version, r.reason) for r in catalog.rejections] == [(3, "no_manifest")]

    # The next writer reuses the broken slot and leaves nothing broken behind.
    survivor = backend.store()
    survivor.read()
    survivor.publish(_state(4, size=100), _meta(4))
    catalog = backend.store().read()
    assert [i.model_version for i in catalog.versions("fraud")] == [1, 2, 4]
    assert catalog.rejections == []


def test_a_crash_between_chunks_over_an_old_occupant_refuses_both(backend):
    """A slot holding v1 gets the first chunk of v9 and nothing more (a stale writer)."""
    store = backend.store(keep_versions=1)
    states = _publish(store, [0])
    store.publish(_state(1), _meta(1))
    slot = _slot(store.read(), "fraud", 1)
    intruder = encode_snapshot(_state(9), _meta(9), KEY, chunk_bytes=SMALL_CHUNKS)
    backend.raw(chunk_key("fraud", slot, 0), intruder[0].to_bytes())
    catalog = backend.store().read()
    assert [(r.model_version, r.reason) for r in catalog.rejections] == [(1, "incomplete")]
    assert catalog.load("fraud") is None  # keep_versions=1: v0 was already removed
    assert states  # v0 was published, then retired when v1 completed


def test_a_fresh_writer_learns_the_slots_before_its_first_publish(backend):
    backend.store(keep_versions=1).publish(_state(1), _meta(1))
    fresh = backend.store(keep_versions=1)  # never read: publish reads first
    fresh.publish(_state(2), _meta(2))
    catalog = backend.store(keep_versions=1).read()
    assert [i.model_version for i in catalog.versions("fraud")] == [2]
    assert _slot(catalog, "fraud", 2) == 1  # beside v1, not over it


def test_a_reused_slot_gets_tombstones_for_its_leftover_chunks(backend):
    store = backend.store(keep_versions=1)
    store.publish(_state(1), _meta(1))
    # A big write into the other slot dies before its manifest: 8 orphan chunks.
    orphans = encode_snapshot(_state(2, size=15_000), _meta(2), KEY, chunk_bytes=SMALL_CHUNKS)
    assert len(orphans) == 8
    for chunk in orphans:
        backend.raw(chunk_key("fraud", 1, chunk.header["chunk_index"]), chunk.to_bytes())
    backend.raw(chunk_key("fraud", 1, 99_999_999), orphans[0].to_bytes())  # only that key dies
    writer = backend.store(keep_versions=1)
    writer.read()
    header = writer.publish(_state(3, size=100), _meta(3))  # one chunk, into the broken slot
    assert header["chunk_count"] == 1
    catalog = backend.store(keep_versions=1).read()
    assert [(i.model_version, i.slot) for i in catalog.versions("fraud")] == [(3, 1)]
    assert catalog.rejections == []
    if backend.kind == "memory":  # all that compaction keeps: one chunk and its manifest
        assert sorted(backend._memory.log) == [chunk_key("fraud", 1, 0), manifest_key("fraud", 1)]


# --------------------------------------------------------------------------- size


def test_a_20_mb_state_round_trips(backend):
    store = backend.store(chunk_bytes=1_048_576)
    big = {"weights": os.urandom(20 * 1024 * 1024)}  # random: zlib cannot shrink it
    header = store.publish(big, _meta(1))
    assert header["payload_size"] > 20 * 1024 * 1024 and header["chunk_count"] == 21
    store.publish(_state(2, size=100), _meta(2))
    catalog = backend.store(chunk_bytes=1_048_576).read(timeout=60)
    assert catalog.load("fraud", 1)[1] == big
    assert catalog.load("fraud")[0]["model_version"] == 2


# --------------------------------------------------------------------------- configuration


def test_bad_store_settings_are_config_errors():
    for options, message in [
        ({"keep_versions": 0}, "keep_versions: must be a positive integer"),
        ({"chunk_bytes": 100}, "chunk_bytes: must be an integer from 1024"),
        ({"chunk_bytes": 8 * 1024 * 1024}, "chunk_bytes: must be an integer from 1024"),
        ({"signing_key": b"short"}, "signing_key: must be None or at least 16 bytes"),
        ({"signing_key": "a str, not bytes, long enough"}, "signing_key: must be None"),
    ]:
        with pytest.raises(ConfigError, match=message):
            MemoryCheckpointStore(**options)
    store = MemoryCheckpointStore()
    with pytest.raises(ConfigError, match="model key"):
        store.publish({}, _meta(1, key="a\x1fb"))
    with pytest.raises(ConfigError, match="record"):
        store.publish_record("", {})
    with pytest.raises(ConfigError, match="JSON object"):
        store.publish_record("x", [1])  # type: ignore[arg-type]


def test_the_signing_key_is_not_in_store_reprs():
    secret = b"do-not-print-this-key-0123"
    for store in (
        MemoryCheckpointStore(signing_key=secret),
        CheckpointStore("127.0.0.1:1", "t", signing_key=secret),  # no network in __init__
    ):
        assert secret.decode() not in repr(store) and "signed=True" in repr(store)


@pytest.mark.kafka
def test_reading_a_missing_topic_is_a_broker_error(bootstrap, unique_name):
    store = CheckpointStore(bootstrap, unique_name("absent"), signing_key=None)
    with pytest.raises(BrokerError, match="cannot read checkpoint topic"):
        store.read(timeout=10)


@pytest.mark.kafka
def test_an_empty_topic_reads_as_an_empty_catalog(bootstrap, topic_factory):
    store = CheckpointStore(bootstrap, topic_factory("empty", config=_compact_config()),
                            signing_key=KEY)  # fmt: skip
    catalog = store.read(timeout=10)
    assert catalog.keys() == [] and catalog.records() == {} and catalog.rejections == []
