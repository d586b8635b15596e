"""The typed per-key snapshot state, and the dict-shaped snapshots written before it."""

from __future__ import annotations

import pickle

import pytest

from stream_learner.core.checkpoints import MemoryCheckpointStore
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import Learner
from stream_learner.core.snapshot import SnapshotMeta
from stream_learner.errors import SnapshotError
from tests.core.specs import LINEAR

SIGNING = b"keystate-test-signing-key"


def _meta(version: int) -> SnapshotMeta:
    return SnapshotMeta(key="k", lineage=LINEAR.lineage, model_version=version, trigger="t")


def test_a_key_state_round_trips_through_a_signed_snapshot():
    store = MemoryCheckpointStore(signing_key=SIGNING)
    learner = Learner("k", LINEAR)
    store.publish(KeyState(learner, None, True), _meta(1))
    _, state = store.read().load("k")
    assert isinstance(state, KeyState) and KeyState.of(state) is state
    assert state.paused and state.pending is None and state.learner.key == "k"


@pytest.mark.parametrize(
    ("old", "pending", "paused"),
    [
        ({"pending": None, "paused": False}, None, False),
        ({"pending": ("job", 42), "paused": True}, ("job", 42), True),
        ({}, None, False),  # the oldest snapshots held the learner alone
    ],
)
def test_a_dict_shaped_snapshot_already_on_a_topic_still_restores(old, pending, paused):
    store = MemoryCheckpointStore(signing_key=SIGNING)
    store.publish({"learner": Learner("k", LINEAR), **old}, _meta(1))
    _, raw = store.read().load("k")
    state = KeyState.of(raw)
    assert (state.learner.key, state.pending, state.paused) == ("k", pending, paused)


@pytest.mark.parametrize("raw", [None, [1], {"model": 1}, {"learner": 1, "other": 2}])
def test_anything_else_is_not_a_key_state(raw):
    with pytest.raises(SnapshotError, match="not a KeyState"):
        KeyState.of(raw)


def test_it_reads_like_the_dict_it_replaced_and_pickles():
    state = KeyState("learner", ("job", 3), False)
    assert state["learner"] == "learner" and state.get("pending") == ("job", 3)
    assert state.get("missing", 7) == 7
    with pytest.raises(KeyError):
        state["missing"]
    assert pickle.loads(pickle.dumps(state)) == state
