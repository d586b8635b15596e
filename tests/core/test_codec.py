"""The codec of evicted keys (``core/codec.py``): a key that goes through it — made from
the prototype, pickled against the shared table and back at every input — serves, decides
and ends exactly like one that never did; what it hands to a snapshot needs no table."""

from __future__ import annotations

import io
import pickle
import pickletools
import random
import struct
import types
from collections import deque
from collections.abc import Iterator

import pytest

from stream_learner.core.codec import KeyCodec
from stream_learner.core.events import Event
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import Learner
from stream_learner.core.processor import PAUSED, InlineRunner, Processor
from stream_learner.core.snapshot import (
    SnapshotMeta,
    SnapshotRejected,
    assemble,
    decode_snapshot,
    encode_pickled,
)
from tests.core.specs import LINEAR, TREE
from tests.core.test_eviction import _factory, _inputs, _step

SIGNING = b"s" * 32
_CODE = (types.FunctionType, types.BuiltinFunctionType)


class CodecStore:
    """A KeyStore keeping the codec's bytes (what EvictedKeys caches)."""

    def __init__(self, codec: KeyCodec) -> None:
        self.codec = codec
        self.states: dict[str, bytes] = {}

    def save(self, key, partition, state):
        self.states[key] = self.codec.dumps(state)

    def load(self, key):
        return self.codec.loads(self.states.pop(key))

    def discard(self, keys):
        for key in keys:
            self.states.pop(key, None)


def _same(a, b, seen=None) -> bool:
    """Equal object graphs, value by value (floats bit for bit), whatever objects are
    shared: an equal string may be one object in one graph and two in the other."""
    seen = set() if seen is None else seen
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, types.MethodType):
        return a.__func__ is b.__func__ and _same(a.__self__, b.__self__, seen)
    if a is None or isinstance(a, (bool, int, str, bytes, type, *_CODE)):
        return a == b
    if (id(a), id(b)) in seen:
        return True
    seen.add((id(a), id(b)))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k], seen) for k in a)
    if isinstance(a, (list, tuple, deque)):
        return len(a) == len(b) and all(_same(u, v, seen) for u, v in zip(a, b, strict=True))
    if isinstance(a, (set, frozenset)):
        return a == b
    reduced = [a.__reduce_ex__(5), b.__reduce_ex__(5)]
    reduced = [[list(part) if isinstance(part, Iterator) else part for part in r] for r in reduced]
    return _same(reduced[0][1:], reduced[1][1:], seen)


def _run(spec, inputs, max_keys: int):
    factory = _factory(spec)
    if max_keys:
        codec = KeyCodec(factory)
        proc = Processor(codec.fresh, InlineRunner(40), max_keys=max_keys, store=CodecStore(codec))
    else:
        proc = Processor(factory, InlineRunner(40))
    served, refused = [], []
    for item in inputs:
        out = _step(proc, item, refused)
        if out is not None and out is not PAUSED:
            served.append((item.id, out.y_pred, out.version, out.proba, out.loss))
        proc.effects.clear()
    learners = dict(proc.learners)
    for key in proc.evicted:
        learners[key] = proc.store.load(key).learner
    return proc, served, refused, {k: learners[k] for k in sorted(learners)}


@pytest.mark.parametrize("spec", [LINEAR, TREE], ids=["linear", "tree"])
def test_keys_through_the_codec_serve_decide_and_end_as_keys_that_never_left(spec):
    inputs = _inputs()
    _, served, refused, learners = _run(spec, inputs, 0)
    proc, served_c, refused_c, learners_c = _run(spec, inputs, 1)
    assert proc.evictions > 500 and proc.reloads > 500
    assert served_c == served
    assert refused_c == refused
    assert list(learners_c) == list(learners)
    for key, learner in learners.items():
        other = learners_c[key]
        assert list(other.decisions) == list(learner.decisions)
        assert other.evaluator.values() == learner.evaluator.values()
        assert (other.index, other.version, other.learned) == (
            learner.index,
            learner.version,
            learner.learned,
        )
        if spec is LINEAR:  # (a tree's leaves hold unseeded generators)
            assert _same(other, learner)


def test_a_fresh_key_from_the_prototype_is_the_factorys_learner():
    factory = _factory(LINEAR)
    codec = KeyCodec(factory)
    assert codec.prototype is not None
    made, built = codec.fresh("merchant-7"), factory("merchant-7")
    assert made.key == "merchant-7" and made.policy.key == "merchant-7"
    assert made.model._plan is not None  # River's execution plan comes built
    for learner in (made, built):  # ... as the first event builds it for the factory's
        learner.learn(Event("1", "merchant-7", {"u": 0.5, "v": 1.0}, True, 1.0))
    assert pickle.dumps(made, protocol=5) == pickle.dumps(built, protocol=5)
    assert made.spec is codec.shared[codec.shared.index(made.spec)]  # the shared spec
    assert codec.fresh("a") is not codec.fresh("a")  # every key its own learner


def test_a_factory_the_prototype_cannot_stand_for_is_called():
    factory = _factory(LINEAR)

    def keyed(key: str) -> Learner:  # derives something from the key
        learner = factory(key)
        learner.tag = key.upper()
        return learner

    def noisy(key: str) -> Learner:  # an unseeded random draw
        learner = factory(key)
        learner.noise = random.random()
        return learner

    def unpicklable(key: str) -> Learner:  # the service builds a codec even so
        learner = factory(key)
        learner.hook = lambda: key
        return learner

    for odd in (keyed, noisy, unpicklable):
        codec = KeyCodec(odd)
        assert codec.prototype is None
        assert codec.fresh("k").key == "k"
    assert KeyCodec(keyed).fresh("k").tag == "K"
    assert KeyCodec(unpicklable).fresh("k").hook() == "k"


def _learned(events: int, every: int) -> tuple[KeyCodec, Learner]:
    """A codec of the linear spec and its fresh key ``k`` after ``events`` labelled events
    (``True`` every ``every``-th)."""
    codec = KeyCodec(_factory(LINEAR))
    learner = codec.fresh("k")
    for i in range(events):
        learner.learn(Event(str(i), "k", {"u": i / events, "v": 1.0}, i % every == 0, float(i)))
    return codec, learner


def test_the_codecs_bytes_hold_only_the_keys_own_and_need_its_table():
    codec, learner = _learned(20, every=3)
    state = KeyState(learner, paused=True)
    data = codec.dumps(state)
    assert len(data) < 0.7 * len(pickle.dumps(state, protocol=5))
    assert b"LogisticRegression" not in data and b"river" not in data  # classes: the table's
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)  # references to the table's places in the memo: this process's
    back = codec.loads(data)
    assert back.paused and back.learner.spec is learner.spec
    assert pickle.dumps(back, protocol=5) == pickle.dumps(state, protocol=5)


def test_the_table_seeds_the_unpicklers_memo_in_one_read_and_both_ways_load_alike():
    """Unframed, an unpickler reads its file one opcode at a time (a ``read`` call each):
    the table's prelude, four opcodes per shared object, was most of a young key's load.
    The quick way (the memo copied) is proven at construction; the sure way (the prelude)
    is what any other unpickler gets, and loads the same."""
    codec, learner = _learned(3, every=2)
    seeder = codec._seeder
    assert seeder.quick  # CPython's unpickler: proven
    data = codec.dumps(KeyState(learner))
    reads = []

    class Counted(io.BytesIO):
        def read(self, n: int = -1) -> bytes:
            reads.append(n)
            return super().read(n)

    for prelude in (seeder._prelude, seeder._places):
        reads.clear()
        unpickler = pickle.Unpickler(Counted(prelude))
        unpickler.persistent_load = codec.shared.__getitem__
        assert unpickler.load() is None
        # PROTO and its byte, FRAME and its length, then the frame: not one per object
        assert len(codec.shared) > 100 and len(reads) <= 5
    quick = (codec.loads(data), codec.fresh("k2"))
    seeder.quick = False
    sure = (codec.loads(data), codec.fresh("k2"))
    assert _same(quick, sure) and _same(quick[0], KeyState(learner))
    for made in (quick[1], sure[1]):
        assert made.key == "k2" and made.spec is learner.spec  # the table's, by identity
        assert made.window.key == "k2"


def test_the_quick_way_is_not_taken_when_it_does_not_load_what_the_sure_way_does(monkeypatch):
    """An unpickler whose memo copy counts its places (not CPython's) fails the proof:
    the codec then loads with the prelude, and still right."""
    real = pickle.Unpickler

    class Counting(real):
        @property
        def memo(self):
            return real.memo.__get__(self)

        @memo.setter
        def memo(self, value):
            pass  # a copy this unpickler ignores: the quick way loads wrong references

    monkeypatch.setattr(pickle, "Unpickler", Counting)
    codec, learner = _learned(3, every=2)
    assert not codec._seeder.quick and codec.prototype is not None
    assert _same(codec.loads(codec.dumps(KeyState(learner))), KeyState(learner))
    assert codec.fresh("k2").key == "k2"


def test_the_table_holds_what_a_fresh_key_refers_to_and_nothing_held_past_it():
    codec, learner = _learned(3, every=2)
    refs = {
        arg
        for op, arg, _ in pickletools.genops(codec.dumps(KeyState(codec.fresh("k2"))))
        if op.name in ("BINGET", "LONG_BINGET") and arg < len(codec.shared)
    }
    assert refs == set(range(len(codec.shared) - 1))  # all but the codec's own reduction
    assert len(codec.shared) < 256  # every reference to it a 2-byte BINGET
    # The spec is the table's; a string inside it is not, and is pickled as a value.
    name = learner.spec.pipeline[0].estimator
    assert learner.spec in codec.shared and not any(obj is name for obj in codec.shared)
    spec, copied = codec.loads(codec.dumps((learner.spec, name)))
    assert spec is learner.spec and copied == name


def test_a_standalone_snapshot_restores_without_the_table_and_is_verified():
    codec, learner = _learned(50, every=2)
    data = codec.dumps(KeyState(learner))
    meta = SnapshotMeta("k", learner.lineage, learner.version, "evict", created=0.0)
    chunks = encode_pickled(codec.standalone(data), meta, SIGNING, chunk_bytes=1 << 20)
    header, payload = assemble(chunks)
    restored = decode_snapshot(header, payload, SIGNING)  # plain pickle.loads inside
    assert isinstance(restored, KeyState)
    assert _same(restored, KeyState(learner))
    event = Event("next", "k", {"u": 0.3, "v": 1.0}, True, 99.0)
    assert restored.learner.learn(event) == learner.learn(event)
    with pytest.raises(SnapshotRejected, match="bad_signature"):
        decode_snapshot(header, payload, b"another key, long enough!")


def test_a_young_tree_key_holds_no_random_generator_state():
    codec = KeyCodec(_factory(TREE))
    learner = codec.fresh("k")
    for i in range(30):  # leaves with a Gaussian per feature and class, all unseeded
        learner.learn(Event(str(i), "k", {"u": i / 30, "v": float(i % 3)}, i % 2 == 0, float(i)))
    state = KeyState(learner)
    standard = pickle.dumps(state, protocol=5)  # 625 numbers per generator
    data = codec.dumps(state)
    assert b"Random" in standard and b"Random" not in data
    assert len(data) < 0.3 * len(standard)
    back = codec.loads(data).learner
    for i in range(30, 60):  # and the key goes on as the one that never left
        event = Event(str(i), "k", {"u": i / 60, "v": float(i % 3)}, i % 3 == 0, float(i))
        assert back.learn(event) == learner.learn(event)
