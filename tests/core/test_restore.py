"""Restore planning on the in-memory checkpoint store: every branch of plan_restore."""

from __future__ import annotations

import pytest

from stream_learner.core.checkpoints import MemoryCheckpointStore, _fetch, chunk_key
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import Learner
from stream_learner.core.restore import (
    Note,
    keep_none,
    partition_record,
    plan_restore,
    restore_want,
)
from stream_learner.core.snapshot import SnapshotMeta
from tests.core.specs import LINEAR, TREE

SIGNING = b"restore-plan-test-key-0123"
EVENTS, LABELS, CONTROL = "p.events", "p.labels", "p.control"
INPUTS = [EVENTS, LABELS, CONTROL]


def _offsets(partition: int, events: int, labels: int = 0, control: int = 0) -> dict:
    return {EVENTS: {partition: events}, LABELS: {partition: labels}, CONTROL: {partition: control}}


def _snapshot(store, key, partition, offsets, *, spec=LINEAR, state=None, events=EVENTS, **extra):
    learner = Learner(key, spec)
    meta = SnapshotMeta(
        key=key,
        lineage=extra.pop("lineage", spec.lineage),
        model_version=extra.pop("version", 1),
        trigger="periodic",
        offsets=offsets,
        extra={"partition": partition, "events_topic": events, **extra},
    )
    store.publish(KeyState(learner) if state is None else state(learner), meta)
    return learner


def _round(store, partition, offsets):
    record = {t: {str(p): o for p, o in by.items()} for t, by in offsets.items()}
    store.publish_record(partition_record(EVENTS, partition), {"offsets": record, "keys": 1})


def _plan(store, owned, lineage=LINEAR.lineage):
    """The one-pass plan, after checking that the two-pass one (the service's: headers
    first, then each chosen snapshot's bytes fetched) decides the same in every branch."""
    catalog = store.read(want=restore_want(owned, EVENTS))
    plan = plan_restore(catalog, owned, EVENTS, INPUTS, lineage)
    two = plan_restore(
        store.read(want=keep_none), owned, EVENTS, INPUTS, lineage, fetch=store.fetch
    )
    assert _same(two) == _same(plan)
    return plan


def _same(plan):
    """What two plans must share; keys are adopted in log order when fetched."""
    restored = sorted(
        (r.key, r.partition, r.header, r.state.learner.version, r.state.learner.index)
        for r in plan.restored
    )
    notes = sorted(repr(n) for n in plan.notes)
    rejections = sorted(repr(r) for r in plan.rejections)
    return restored, plan.starts, plan.lost, plan.claimed, notes, rejections


def _store() -> MemoryCheckpointStore:
    return MemoryCheckpointStore(signing_key=SIGNING)


def test_a_partition_never_checkpointed_starts_at_zero():
    plan = _plan(_store(), [0, 2])
    assert plan.restored == () and plan.notes == () and plan.lost == frozenset()
    assert plan.starts == {(t, p): 0 for t in INPUTS for p in (0, 2)}


def test_starts_are_the_round_positions_moved_back_to_each_restored_keys_own():
    store = _store()
    _snapshot(store, "a", 0, _offsets(0, 40, 10, 1))
    _snapshot(store, "b", 0, _offsets(0, 70, 30, 2))
    _round(store, 0, _offsets(0, 70, 30, 2))
    plan = _plan(store, [0])
    assert [(r.key, r.partition) for r in plan.restored] == [("a", 0), ("b", 0)]
    assert plan.starts == {(EVENTS, 0): 40, (LABELS, 0): 10, (CONTROL, 0): 1}
    restored = plan.restored[0]
    assert isinstance(restored.state, KeyState) and restored.state.learner.key == "a"
    assert restored.header["offsets"] == {
        t: {"0": o} for t, o in zip(INPUTS, (40, 10, 1), strict=True)
    }
    assert plan.notes == () and plan.rejections == ()


def test_with_adopt_each_key_is_handed_over_as_it_is_loaded_and_not_kept():
    """A runtime with a million keys cannot hold every restored state at once: it adopts
    (and, under a key budget, evicts) each as the plan loads it."""
    store = _store()
    _snapshot(store, "a", 0, _offsets(0, 40, 10, 1))
    _snapshot(store, "b", 0, _offsets(0, 70, 30, 2))
    _snapshot(store, "c", 1, _offsets(1, 9))
    _round(store, 0, _offsets(0, 70, 30, 2))
    kept = _plan(store, [0, 1])
    handed, live = [], []

    def adopt(restored):
        handed.append((restored.key, restored.partition, restored.header["offsets"]))
        live.append(restored.state.learner.key)

    catalog = store.read(want=restore_want([0, 1], EVENTS))
    plan = plan_restore(catalog, [0, 1], EVENTS, INPUTS, LINEAR.lineage, adopt=adopt)
    assert plan.restored == ()
    assert handed == [(r.key, r.partition, r.header["offsets"]) for r in kept.restored]
    assert live == ["a", "b", "c"]
    assert (plan.starts, plan.notes, plan.lost, plan.claimed) == (
        kept.starts, kept.notes, kept.lost, kept.claimed
    )  # fmt: skip


def test_keys_of_other_partitions_or_another_events_topic_are_left_alone():
    store = _store()
    _snapshot(store, "mine", 1, _offsets(1, 5))
    _snapshot(store, "theirs", 0, _offsets(0, 3))
    _snapshot(store, "elsewhere", 1, _offsets(1, 2), events="other.events")
    _round(store, 1, _offsets(1, 9, 9, 9))
    catalog = store.read(want=restore_want([1], EVENTS))
    plan = plan_restore(catalog, [1], EVENTS, INPUTS, LINEAR.lineage)
    assert [r.key for r in plan.restored] == ["mine"]
    assert plan.starts == {(EVENTS, 1): 5, (LABELS, 1): 0, (CONTROL, 1): 0}
    assert 0 < catalog.payload_bytes < store.read().payload_bytes  # the owned key's only
    with pytest.raises(LookupError):
        catalog.load("theirs")


def test_a_changed_lineage_starts_fresh_and_says_so():
    store = _store()
    _snapshot(store, "a", 0, _offsets(0, 4), spec=TREE)
    _round(store, 0, _offsets(0, 8, 8, 8))
    plan = _plan(store, [0])
    assert plan.restored == ()
    assert plan.starts == {(EVENTS, 0): 8, (LABELS, 0): 8, (CONTROL, 0): 8}  # not moved back
    assert plan.notes == (
        Note(
            "checkpoint_lineage_changed",
            {
                "key": "a",
                "old": TREE.lineage,
                "new": LINEAR.lineage,
                "action": "starting a new lineage fresh",
            },
        ),
    )


def test_an_adopted_lineage_is_kept_while_the_config_names_the_one_it_replaced():
    store = _store()
    adopted = _snapshot(store, "a", 0, _offsets(0, 4), spec=TREE, adopted_from=LINEAR.lineage)
    assert adopted.lineage == TREE.lineage
    plan = _plan(store, [0])
    (restored,) = plan.restored
    assert restored.state.learner.lineage == TREE.lineage
    (note,) = plan.notes
    assert note.event == "adopted_lineage_kept" and note.warning
    assert note.fields["lineage"] == TREE.lineage and note.fields["configured"] == LINEAR.lineage


def test_a_learner_whose_lineage_the_config_names_now_drops_adopted_from():
    store = _store()

    def adopted(learner):
        learner.adopted_from = "the-lineage-it-was-built-with"
        return KeyState(learner)

    _snapshot(store, "a", 0, _offsets(0, 4), spec=TREE, state=adopted)
    (restored,) = _plan(store, [0], lineage=TREE.lineage).restored
    assert restored.state.learner.adopted_from is None


def test_a_key_with_no_valid_snapshot_loses_its_partition_and_the_rejection_is_noted():
    store = _store()
    _snapshot(store, "a", 0, _offsets(0, 4))
    _snapshot(store, "b", 0, _offsets(0, 6))
    _round(store, 0, _offsets(0, 9, 9, 9))
    chunk = store.log[chunk_key("b", 0, 0)]
    store.log[chunk_key("b", 0, 0)] = chunk[:-1] + bytes([chunk[-1] ^ 1])  # one bit flipped
    plan = _plan(store, [0])
    assert [r.key for r in plan.restored] == ["a"]
    assert plan.lost == {0}
    assert plan.starts == {(t, 0): 0 for t in INPUTS}  # rebuilt from the log's start
    assert [r.reason for r in plan.rejections] == ["checksum_mismatch"]
    assert [(n.event, n.warning) for n in plan.notes] == [
        ("checkpoint_rejected", True),
        ("checkpoint_lost", True),
    ]
    assert plan.notes[0].fields["key"] == "b" and plan.notes[0].fields["reason"] == (
        "checksum_mismatch"
    )
    assert plan.notes[1].fields["partition"] == 0


def test_an_older_dict_shaped_snapshot_restores_as_a_key_state():
    store = _store()

    def old(learner):
        return {"learner": learner, "pending": ("a job", 120), "paused": True}

    _snapshot(store, "a", 0, _offsets(0, 4), state=old)
    (restored,) = _plan(store, [0]).restored
    assert restored.state == KeyState(restored.state.learner, ("a job", 120), True)


def test_a_staged_snapshot_is_not_restored():
    store = _store()
    _snapshot(store, "a", 0, _offsets(0, 4))
    learner = Learner("a", LINEAR)
    meta = SnapshotMeta(
        key="a",
        lineage=LINEAR.lineage,
        model_version=2,
        trigger="rebuild",
        offsets=_offsets(0, 50),
        extra={"partition": 0, "events_topic": EVENTS},
    )
    store.publish(KeyState(learner), meta, staged=True)
    (restored,) = _plan(store, [0]).restored
    assert restored.header["model_version"] == 1
    assert restored.header["trigger"] == "periodic"


@pytest.mark.parametrize(
    ("header", "wanted"),
    [
        ({"extra": {"partition": 1, "events_topic": EVENTS}}, True),
        ({"extra": {"partition": 2, "events_topic": EVENTS}}, False),
        ({"extra": {"partition": 1, "events_topic": "x"}}, False),
        ({"extra": {"partition": [1], "events_topic": EVENTS}}, False),  # unhashable
        ({"extra": "not a dict"}, False),
        ({}, False),
    ],
)
def test_restore_want_accepts_the_owned_partitions_snapshots_only(header, wanted):
    assert restore_want([0, 1], EVENTS)(header) is wanted


def test_an_eviction_snapshot_newer_than_the_round_is_what_a_restart_restores():
    """A key evicted after a round (its snapshot written by the evicted-key store, trigger
    ``evict``) restores from that snapshot, at the positions of its eviction."""
    from stream_learner.keystore import CheckpointTier, EvictedKeys

    store = _store()
    first = _snapshot(store, "k", 0, _offsets(0, 100))
    _round(store, 0, _offsets(0, 100))
    first.index = 41  # what the key learned after the round, before it was evicted

    def meta(key, partition, state):
        return SnapshotMeta(
            key=key, lineage=LINEAR.lineage, model_version=1, trigger="evict",
            offsets=_offsets(partition, 150),
            extra={"partition": partition, "events_topic": EVENTS},
        )  # fmt: skip

    evicted = EvictedKeys(CheckpointTier(store), meta, cache_bytes=0)
    evicted.save("k", 0, KeyState(first))
    plan = _plan(store, [0])
    [restored] = plan.restored
    assert restored.header["trigger"] == "evict" and restored.state.learner.index == 41
    assert restored.header["offsets"][EVENTS] == {"0": 150}
    assert plan.starts[EVENTS, 0] == 100  # the round's record: no key needs less


def test_fetched_payloads_restore_multi_chunk_snapshots_and_skip_superseded_bytes():
    """The service's two passes: a snapshot of several chunks is joined as its last one
    streams by, and an older snapshot's chunk still in the (not yet compacted) log under
    the same record key is passed over by its SHA-256."""
    store = MemoryCheckpointStore(signing_key=SIGNING, chunk_bytes=1024)
    big = _snapshot(store, "big", 0, _offsets(0, 5), spec=TREE)
    _snapshot(store, "small", 0, _offsets(0, 7))
    catalog = store.read(want=keep_none)
    [info] = catalog.candidates("big")
    assert info.header["chunk_count"] > 1
    stale = [(k, v) for k, v in store.log.items() if k.startswith("small\x1f")]
    log = [*stale, *store.log.items()]  # an old copy first, as an uncompacted log holds it
    older = Learner("small", LINEAR)
    older.index = 99
    other = MemoryCheckpointStore(signing_key=SIGNING)
    meta = SnapshotMeta(key="small", lineage=LINEAR.lineage, model_version=1,
                        trigger="periodic", offsets=_offsets(0, 3),
                        extra={"partition": 0, "events_topic": EVENTS})  # fmt: skip
    other.publish(KeyState(older), meta)
    log = [*other.log.items(), *log]  # another snapshot's bytes under the same record keys
    chosen = {key: catalog.candidates(key)[0] for key in ("big", "small")}
    fetched = {info.key: catalog.decode(info, payload) for info, payload in _fetch(log, chosen)}
    assert sorted(fetched) == ["big", "small"]
    assert fetched["big"][1].learner.key == "big" and fetched["big"][1].learner.spec == big.spec
    assert fetched["small"][1].learner.index != 99  # the chosen snapshot, not the stale one


def test_a_fetched_snapshot_that_does_not_decode_falls_back_to_the_next_one_in_a_new_pass():
    store = _store()
    _snapshot(store, "a", 0, _offsets(0, 4))
    _snapshot(store, "b", 0, _offsets(0, 6))
    meta = SnapshotMeta(key="a", lineage=LINEAR.lineage, model_version=2,
                        trigger="periodic", offsets=_offsets(0, 8),
                        extra={"partition": 0, "events_topic": EVENTS})  # fmt: skip
    store.publish_encoded([store.encode_pickled(b"not a pickle", meta)])  # signed, undecodable
    _round(store, 0, _offsets(0, 9, 9, 9))
    passes = []

    def fetch(chosen):
        passes.append(sorted((k, i.model_version) for k, i in chosen.items()))
        return store.fetch(chosen)

    catalog = store.read(want=keep_none)
    plan = plan_restore(catalog, [0], EVENTS, INPUTS, LINEAR.lineage, fetch=fetch)
    assert passes == [[("a", 2), ("b", 1)], [("a", 1)]]  # a second pass for "a" alone
    restored = sorted((r.key, r.header["model_version"]) for r in plan.restored)
    assert restored == [("a", 1), ("b", 1)]
    assert [(r.reason, r.key, r.model_version) for r in plan.rejections] == [
        ("undecodable", "a", 2)
    ]
    assert plan.starts[EVENTS, 0] == 4 and plan.lost == frozenset()
    assert _same(plan) == _same(_plan(store, [0]))
    assert catalog.keys() == []  # each key forgotten once adopted: read for this alone
