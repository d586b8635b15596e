"""The core's pickles (``core/pickling.py``): standard pickles that leave out what nothing
can reproduce (unseeded generators), reduce containers to their items and plain objects to
attributes set one by one, and that load into the same model."""

from __future__ import annotations

import copyreg
import dataclasses
import io
import itertools
import pickle
from collections import Counter, OrderedDict, deque

from river import tree
from river.datasets import synth
from river.proba import Gaussian
from river.proba.base import Distribution

from stream_learner.core import pickling
from stream_learner.core.codec import _reachable


def _distributions(obj) -> list[Distribution]:
    return [o for o in _reachable(obj).values() if isinstance(o, Distribution)]


def _grown_tree(events: int):
    model = tree.HoeffdingTreeClassifier(grace_period=50, delta=0.01)
    stream = synth.Hyperplane(seed=3, n_features=5)
    for x, y in itertools.islice(stream, events):
        model.learn_one(x, y)
    return model, stream


def test_a_grown_tree_pickles_without_its_generators_and_goes_on_as_before():
    model, stream = _grown_tree(3000)
    own = _distributions(model)
    assert len({id(d._rng) for d in own}) == len(own) >= 20  # one generator each
    standard = pickle.dumps(model, protocol=5)
    data = pickling.dumps(model)
    assert len(data) < 0.15 * len(standard)
    back = pickle.loads(data)  # a standard unpickler reads it
    assert all(d._rng is pickling.SHARED_RNG for d in _distributions(back))
    # Pickling also gave the live model the shared generator: one left, not one each.
    assert all(d._rng is pickling.SHARED_RNG for d in _distributions(model))
    for x, y in itertools.islice(stream, 500):
        assert back.predict_proba_one(x) == model.predict_proba_one(x)
        model.learn_one(x, y)
        back.learn_one(x, y)
    assert back.n_active_leaves == model.n_active_leaves


def test_a_seeded_distribution_keeps_its_generator_mid_sequence():
    seeded = Gaussian(seed=3)
    for v in (0.5, 1.5, 2.0):
        seeded.update(v)
    seeded.sample()
    back = pickle.loads(pickling.dumps(seeded))
    assert back._rng is not pickling.SHARED_RNG and seeded._rng is not pickling.SHARED_RNG
    assert [back.sample() for _ in range(3)] == [seeded.sample() for _ in range(3)]


def test_containers_come_back_with_their_class_items_and_attributes():
    ordered = OrderedDict(b=1, a=2)
    ordered.note = "kept"
    ring = deque([1, 2, 3], maxlen=4)
    counts = Counter(x=2, y=1)
    back = pickle.loads(pickling.dumps((counts, ordered, ring, ordered)))
    assert type(back[0]) is Counter and back[0] == counts
    assert type(back[1]) is OrderedDict and list(back[1].items()) == [("b", 1), ("a", 2)]
    assert back[1].note == "kept" and back[1] is back[3]
    assert type(back[2]) is deque and list(back[2]) == [1, 2, 3] and back[2].maxlen == 4


class _Plain:
    def __init__(self) -> None:
        self.a = 1
        self.items = [1, 2]


class _Described:
    """An instance attribute named like a property of its class (set through __dict__)."""

    value = property(lambda self: self.__dict__["value"] * 10)


class _OwnState:
    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.loaded = True


@dataclasses.dataclass(frozen=True)
class _Frozen:
    a: int = 1


def test_plain_objects_load_attribute_by_attribute_and_the_others_as_pickle_does():
    pickler = pickling.Pickler(io.BytesIO())
    plain = _Plain()
    plain.me = plain
    assert pickler.reducer_override(plain) == (
        copyreg.__newobj__,
        (_Plain,),
        (None, {"a": 1, "items": [1, 2], "me": plain}),
    )
    back = pickle.loads(pickling.dumps(plain))
    assert (back.a, back.items, back.me is back) == (1, [1, 2], True)
    described = _Described()
    described.__dict__["value"] = 3
    own = _OwnState()
    own.x = 5
    others = (described, own, _Frozen(2), _Plain, len, pickling.dumps, Counter(a=1))
    assert all(pickler.reducer_override(obj) is NotImplemented for obj in others)
    back = pickle.loads(pickling.dumps(others))
    assert back[0].value == 30 and (back[1].x, back[1].loaded) == (5, True)
    assert back[2] == _Frozen(2) and back[3:6] == (_Plain, len, pickling.dumps)


def test_a_young_learners_empty_logs_and_joiner_pickle_as_none_and_come_back_as_built():
    from stream_learner.core.events import Event
    from stream_learner.core.learner import Learner
    from tests.core.specs import LINEAR

    learner = Learner("k", LINEAR)
    learner.learn(Event("e1", "k", {"u": 0.5}, True, 1.0))
    learner.predict(Event("e2", "k", {"u": 0.7}, None, 2.0))  # a prediction waits
    state = learner.__getstate__()
    assert [state[n] for n in ("decisions", "decision_counts", "pool", "race_promotions")] == [
        None
    ] * 4
    joined = learner.joiner.__getstate__()
    assert joined["_parked"] is None and joined["_pending"] is not None  # only the empty one
    back = pickle.loads(pickling.dumps(learner))
    built = Learner("k", LINEAR)
    for name in ("decisions", "decision_counts", "pool", "race_promotions"):
        made, want = getattr(back, name), getattr(built, name)
        assert type(made) is type(want) and not made
        assert getattr(made, "maxlen", None) == getattr(want, "maxlen", None)
    assert type(back.joiner._parked) is OrderedDict and back.joiner.pending == 1
    empty = pickle.loads(pickling.dumps(built.joiner))
    assert (empty._pending, empty._parked, empty._packer.kinds) == (OrderedDict(), {}, [])
    assert type(empty._pending) is OrderedDict
    # ... and a learner that has decided keeps its log
    learner.decisions.append("a decision")
    assert list(pickle.loads(pickling.dumps(learner)).decisions) == ["a decision"]
