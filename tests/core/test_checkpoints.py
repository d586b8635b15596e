"""The checkpoint format's pure parts with no broker: the writer's slot rules and the
catalog over :class:`MemoryCheckpointStore` (tests/kafka/test_checkpoints.py runs the
store's behaviour on both the in-memory log and the real topic)."""

from __future__ import annotations

import random

import orjson
import pytest

from stream_learner.core.checkpoints import (
    STAGING_SLOT,
    Catalog,
    LogStore,
    MemoryCheckpointStore,
    _choose_slot,
    _protected,
    _SlotState,
    chunk_key,
    manifest_key,
    record_key,
)
from stream_learner.core.restore import keep_none
from stream_learner.core.snapshot import SnapshotMeta, encode_snapshot
from stream_learner.errors import ConfigError

KEY = b"core-checkpoint-test-key"


def _state(version: int | None, position: int, complete: bool = True) -> _SlotState:
    return _SlotState(version, position, complete, frozenset({0}))


def _meta(version: int, key: str = "k") -> SnapshotMeta:
    return SnapshotMeta(key=key, lineage="l1", model_version=version, trigger="t", created=1.0)


def test_the_key_scheme():
    assert chunk_key("fraud", 2, 7) == "fraud\x1f2\x1f7"
    assert manifest_key("fraud", STAGING_SLOT) == "fraud\x1f-1\x1fm"
    assert record_key("__partition__") == "\x1e__partition__"


def test_protected_is_the_newest_of_the_version_and_of_keep_minus_one_other_versions():
    slots = {
        0: _state(1, 10),
        1: _state(2, 20),
        2: _state(3, 30),
        3: _state(3, 40),  # the newest snapshot of v3
    }
    assert _protected(slots, 3, keep=2) == {3, 1}  # v3's newest, and v2 (the newest other)
    assert _protected(slots, 4, keep=2) == {3}  # v4 has none yet: v3's newest only
    assert _protected(slots, 1, keep=3) == {0, 3, 1}


def test_an_incomplete_slot_is_never_protected():
    slots = {0: _state(1, 10), 1: _state(None, 20, complete=False)}
    assert _protected(slots, 2, keep=3) == {0}


def test_choose_slot_prefers_empty_then_broken_then_oldest():
    keep = 2  # slots 0..2
    assert _choose_slot({0: _state(1, 10)}, 2, keep) == 1  # an empty slot first
    broken = {0: _state(1, 10), 1: _state(None, 5, complete=False), 2: _state(2, 20)}
    assert _choose_slot(broken, 3, keep) == 1  # no empty slot: the broken one
    full = {0: _state(1, 10), 1: _state(2, 15), 2: _state(3, 20)}
    assert _choose_slot(full, 4, keep) == 0  # v3 protected; the oldest unprotected
    # Republishing v3 keeps v3's previous snapshot until the new one is complete.
    assert _choose_slot(full, 3, keep) == 0
    assert 2 in _protected(full, 3, keep)


def test_the_memory_store_holds_keep_versions_and_never_touches_the_staging_slot():
    store = MemoryCheckpointStore(signing_key=KEY, keep_versions=2, chunk_bytes=1024)
    store.publish({"v": 9}, _meta(9), staged=True)
    for version in range(1, 6):
        store.publish({"v": version}, _meta(version))
    reader = MemoryCheckpointStore(signing_key=KEY)  # another instance on the same log
    reader.log = store.log
    read = reader.read()
    assert [v.model_version for v in read.versions("k")] == [4, 5]
    assert {int(k.split("\x1f")[1]) for k in store.log} <= {STAGING_SLOT, 0, 1, 2}
    assert read.staged("k").model_version == 9 and read.load("k", 9)[1] == {"v": 9}
    assert read.load("k")[1] == {"v": 5} and read.rejections == []


def test_a_catalog_keeps_service_records_and_rejects_bad_ones():
    store = MemoryCheckpointStore(signing_key=KEY)
    store.publish_record("round", {"offsets": {}})
    store.log[record_key("bad")] = b"[1, 2]"
    store.log["not a key"] = b"x"
    catalog = store.read()
    assert catalog.records() == {"round": {"offsets": {}}}
    assert sorted(r.reason for r in catalog.rejections) == ["bad_key", "bad_record"]
    store.publish_record("round", None)
    assert store.read().records() == {}


@pytest.mark.parametrize("chunk_bytes", [1023, 8 * 1024 * 1024])
def test_chunk_bytes_is_bounded_by_the_record_size(chunk_bytes):
    with pytest.raises(ConfigError, match="chunk_bytes"):
        MemoryCheckpointStore(chunk_bytes=chunk_bytes)


def _at(version: int, events_offset: int, key: str = "k") -> SnapshotMeta:
    return SnapshotMeta(
        key=key, lineage="l1", model_version=version, trigger="t", created=1.0,
        offsets={"in.events": {"0": events_offset}, "in.labels": {"0": events_offset // 2}},
    )  # fmt: skip


def test_newest_is_the_furthest_into_the_inputs_so_a_late_stale_write_never_wins():
    store = MemoryCheckpointStore(signing_key=KEY, keep_versions=3)
    store.publish({"v": 1}, _at(1, 500))
    store.publish({"v": 2}, _at(2, 900))  # the new owner's, further in
    store.publish({"v": 1, "stale": True}, _at(1, 700))  # a stale owner's, landing last
    read = store.read()
    assert read.load("k")[1] == {"v": 2}
    assert [v.model_version for v in read.versions("k")] == [1, 2]
    assert read.versions("k")[0].header["offsets"]["in.events"]["0"] == 700
    # A rollback is written with the positions it was taken at: it is the newest.
    store.publish({"v": 1, "rollback": True}, _at(1, 950))
    assert store.read().load("k")[1] == {"v": 1, "rollback": True}
    # Without positions (offline tools) log order decides, as before.
    plain = MemoryCheckpointStore(signing_key=KEY)
    plain.publish({"v": 2}, _meta(2))
    plain.publish({"v": 1}, _meta(1))
    assert plain.read().load("k")[1] == {"v": 1}


def test_positions_that_are_not_numbers_never_make_a_snapshot_the_newest():
    store = MemoryCheckpointStore(keep_versions=3)  # unsigned: any header is read
    store.publish({"v": 1}, _at(1, 500))
    store.publish({"v": 2}, _meta(2))
    store.publish({"v": 3}, _at(3, 900))
    slot = store.read().versions("k")[-1].slot
    for record in (chunk_key("k", slot, 0), manifest_key("k", slot)):  # a foreign writer's
        store.log[record] = store.log[record].replace(b'{"0":900}', b"9", 1)
    read = store.read()
    assert [v.model_version for v in read.versions("k")] == [3, 2, 1]
    assert read.load("k")[1] == {"v": 1}


def test_a_catalog_keeps_each_header_deflated_and_gives_back_the_bytes_written():
    store = MemoryCheckpointStore(signing_key=KEY)
    for key in ("a", "b"):
        store.publish({"v": key}, _meta(1, key))
    read = store.read()
    for key in ("a", "b"):
        (info,) = read.versions(key)
        assert info.json == store.log[manifest_key(key, info.slot)]
        assert info.header["key"] == key
    # Packed against the first manifest: the second key's header is a fraction of itself.
    (info,) = read.versions("b")
    assert len(info.raw) < len(info.json) / 2


def test_a_writer_that_may_no_longer_write_stops_between_records():
    from stream_learner.errors import FencedError

    store = MemoryCheckpointStore(signing_key=KEY, keep_versions=1)
    store.publish({"v": 1}, _at(1, 100))
    answers = iter([True, False])  # the chunks go; the process stood still before the manifest
    store.may_write = lambda: next(answers)
    with pytest.raises(FencedError):
        store.publish({"v": 2}, _at(2, 200))
    store.may_write = None
    read = MemoryCheckpointStore(signing_key=KEY)
    read.log = store.log
    catalog = read.read()
    assert catalog.load("k")[1] == {"v": 1}  # the half-written snapshot is never restored
    store.may_write = lambda: False
    with pytest.raises(FencedError):
        store.publish_record("round", {"offsets": {}})
    assert read.read().records() == {}


class _Uncompacted(LogStore):
    """A log as a topic holds it before compaction: every record ever written, in order."""

    def __init__(self, log: list, **options) -> None:
        super().__init__(signing_key=KEY, keep_versions=2, chunk_bytes=1024, **options)
        self.log = log

    def _write(self, records):
        self.log.extend(records)

    def _scan(self, timeout):
        return iter(list(self.log))


class _Unsealed(Catalog):
    """Every slot judged once the log has ended, as before slots were sealed."""

    def _seal(self, where, content):
        return None


def _history(seed: int) -> list:
    """Publishes of three keys into an uncompacted log, with crashes mid-publish (a fresh
    writer reads the log after each), duplicates, tombstones, garbage and tampering."""
    rng = random.Random(seed)
    log: list = []
    store = _Uncompacted(log)
    for _ in range(40):
        roll = rng.random()
        key = rng.choice(["a", "b", "c"])
        if roll < 0.55 or not log:
            size = rng.choice([10, 3000])  # one chunk, or several of 1,024 bytes
            meta = SnapshotMeta(
                key=key,
                lineage="l1",
                model_version=rng.randint(1, 3),
                trigger="t",
                created=float(len(log)),
                offsets={"ev": {"0": len(log)}},
                extra={"partition": rng.randint(0, 1)},
            )
            before = len(log)
            store.publish({"blob": rng.randbytes(size)}, meta, staged=rng.random() < 0.1)
            if rng.random() < 0.2:  # a crash part way: what was written after is lost
                del log[rng.randint(before, len(log) - 1) :]
                store = _Uncompacted(log)
        elif roll < 0.7:
            log.append(rng.choice(log))  # a record delivered again later
        elif roll < 0.8:
            log.append((rng.choice(log)[0], None))
        elif roll < 0.9:
            record_key, value = rng.choice(log)
            if value:
                flipped = bytearray(value)
                flipped[-1] ^= 1  # a payload (or a manifest) byte changed
                log.append((record_key, bytes(flipped)))
        elif roll < 0.95:
            log.append((chunk_key(key, rng.randint(0, 2), 0), b"not a chunk"))
        else:  # a copy under a record key of the same slot the writer never writes
            record_key, value = rng.choice(log)
            model_key, slot, tail = record_key.split("\x1f")
            log.append(("\x1f".join([model_key, "0" + slot.lstrip("-"), tail]), value))
    return log


def _decided(catalog: Catalog) -> tuple:
    return (
        catalog._infos,
        catalog._states,
        catalog._payloads,
        catalog._wanted,
        catalog.rejections,
        catalog.records(),
    )


def _records(created: float) -> list:
    """A one-chunk snapshot of one state in slot 0 of key "a": its chunk, its manifest."""
    meta = SnapshotMeta(key="a", lineage="l1", model_version=1, trigger="t", created=created)
    (chunk,) = encode_snapshot({"state": 1}, meta, KEY, chunk_bytes=1024)
    header = {k: v for k, v in chunk.header.items() if k != "chunk_index"}
    return [(chunk_key("a", 0, 0), chunk.to_bytes()), (manifest_key("a", 0), orjson.dumps(header))]


def _edges() -> list:
    (chunk, manifest), (_, other) = _records(1.0), _records(2.0)
    return [
        # The chunk under a record key the writer never writes, then a tombstone of the
        # key it does write: still whole.
        [(chunk[0].replace("\x1f0\x1f", "\x1f00\x1f"), chunk[1]), manifest,
         (chunk[0], None)],
        # A manifest of the same snapshot written at another time (another header), then
        # gone: the chunk is described by its own header.
        [chunk, other, (manifest[0], None)],
    ]  # fmt: skip


@pytest.mark.parametrize("log", [*range(40), *_edges()])
def test_sealing_slots_as_their_manifests_stream_by_decides_what_judging_at_the_end_does(log):
    log = _history(log) if isinstance(log, int) else log
    sealed = Catalog(iter(log), signing_key=KEY)
    assert _decided(sealed) == _decided(_Unsealed(iter(log), signing_key=KEY))
    for want in (keep_none, lambda header: header.get("extra", {}).get("partition") == 1):
        sealed = Catalog(iter(log), signing_key=KEY, want=want)
        assert _decided(sealed) == _decided(_Unsealed(iter(log), signing_key=KEY, want=want))
