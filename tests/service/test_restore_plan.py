"""The pure restore plan reproduces what ``Service.restore`` does with the same catalog.

No broker: the checkpoint store is the in-memory one, and the source only answers
``committed`` (nothing committed) and ``assignment``, the two things a restore asks it.
"""

from __future__ import annotations

from stream_learner.core.checkpoints import MemoryCheckpointStore, chunk_key
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import LearnerConfig
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.restore import plan_restore, restore_want
from stream_learner.core.retrain import RetrainConfig
from stream_learner.metrics import ServiceMetrics
from stream_learner.service.retrainer import Retrainer
from stream_learner.service.runtime import LearnerFactory, Service, Topics
from tests.core.specs import LINEAR, TREE
from tests.core.test_restore import SIGNING, _offsets, _round, _snapshot

TOPICS = Topics.from_prefix("p.")


class _Committed:
    """A source that has nothing committed (the plan leaves committed offsets out)."""

    assignment: set = set()
    lag: dict = {}

    def committed(self, tps):
        return {}


def _scenario() -> MemoryCheckpointStore:
    store = MemoryCheckpointStore(signing_key=SIGNING)
    _snapshot(store, "a", 0, _offsets(0, 40, 10, 1))
    _snapshot(store, "b", 0, _offsets(0, 70, 30, 2), state=lambda lr: {"learner": lr})
    _round(store, 0, _offsets(0, 70, 30, 2))
    _snapshot(store, "c", 1, _offsets(1, 5), spec=TREE)  # lineage changed
    _snapshot(store, "d", 1, _offsets(1, 3), spec=TREE, adopted_from=LINEAR.lineage)
    _round(store, 1, _offsets(1, 9, 9, 9))
    _snapshot(store, "e", 2, _offsets(2, 6), state=lambda lr: KeyState(lr, None, True))
    _snapshot(store, "f", 2, _offsets(2, 8))
    _round(store, 2, _offsets(2, 9, 9, 9))
    chunk = store.log[chunk_key("f", 0, 0)]
    store.log[chunk_key("f", 0, 0)] = chunk[:-1] + bytes([chunk[-1] ^ 1])  # f is lost
    _snapshot(store, "g", 5, _offsets(5, 1))  # not owned
    return store


def test_the_plan_gives_the_services_starts_and_keys():
    store = _scenario()
    service = Service(
        factory=LearnerFactory(LINEAR, LearnerConfig(), PolicyConfig(), RetrainConfig()),
        topics=TOPICS,
        source=_Committed(),
        sink=None,
        metrics=ServiceMetrics(),
        retrainer=Retrainer(workers=0),
        store=store,
    )
    owned = [0, 1, 2, 3]
    starts = service.restore([(t, p) for t in TOPICS.inputs for p in owned])
    catalog = store.read(want=restore_want(owned, TOPICS.events))
    plan = plan_restore(catalog, owned, TOPICS.events, TOPICS.inputs, LINEAR.lineage)
    assert plan.starts == starts
    keys = service.processor
    assert {r.key: r.partition for r in plan.restored} == keys.partitions
    assert {r.key for r in plan.restored if r.state.paused} == keys.paused == {"e"}
    assert {r.key: r.state.learner.lineage for r in plan.restored} == {
        k: learner.lineage for k, learner in keys.learners.items()
    }
    assert plan.lost == {2}
    assert [n.event for n in plan.notes] == [
        "checkpoint_lineage_changed",
        "adopted_lineage_kept",
        "checkpoint_rejected",
        "checkpoint_lost",
    ]
