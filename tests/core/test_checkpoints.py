"""The checkpoint format's pure parts with no broker: the writer's slot rules and the
catalog over :class:`MemoryCheckpointStore` (tests/kafka/test_checkpoints.py runs the
store's behaviour on both the in-memory log and the real topic)."""

from __future__ import annotations

import pytest

from stream_learner.core.checkpoints import (
    STAGING_SLOT,
    MemoryCheckpointStore,
    _choose_slot,
    _protected,
    _SlotState,
    chunk_key,
    manifest_key,
    record_key,
)
from stream_learner.core.snapshot import SnapshotMeta
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
