"""How a key's state is encoded while it waits evicted in this process (``service.max_keys``).

An evicted key's state is pickled, and pickled back when its next input comes. A pickle of
a whole River object graph per key is what a key budget costs (the classes by name, every
attribute name, the model spec and configs every key refers to), so :class:`KeyCodec`
makes each key's bytes hold only what is the key's own:

- **a table of shared objects**: the objects that every fresh learner of the factory
  refers to, the same object in each (the model spec, the learner, policy and retrain
  configs, class objects, attribute and metric names), are found once, by building two
  learners for two keys, and kept when a fresh key's pickle refers to them (not the
  strings inside the spec: it is one reference). A key's pickle refers to them by their
  place in the pickler's memo, which starts seeded with the table as if they had been
  pickled already: a reference is a memo lookup in C (a 2-5-byte ``BINGET``), not a
  Python call for every object pickled, which is what pickle's persistent ids cost (3x
  the time of a tree's dump). Unpickling seeds its memo alike (see :class:`_Seeder`).
  A learner round-tripped through the codec refers to the very objects a never-evicted
  one does;
- **fresh keys from a prototype**: a new key's learner is made by unpickling a fresh
  learner pickled once (its key given at load, its pipeline's execution plan built), which
  is cheaper than running the model factory and building the plan on the first event; the
  service makes every new key so, and a replay with a key budget. But only
  when that was proven to give what the factory gives: at construction, for two probe
  keys, the prototype's learner and the factory's (plan built) must pickle to the same
  bytes. Otherwise (an unseeded random generator somewhere, a factory that derives
  something from the key) :meth:`KeyCodec.fresh` calls the factory;
- **the core's reductions** (``core/pickling.py``): River's unseeded distributions
  without their generator, ``OrderedDict``, ``deque`` and ``Counter`` as their items,
  plain objects' attributes set one by one on load (so they stay inline).

The bytes depend on this process's table: they never leave it. :meth:`KeyCodec.standalone`
turns them into a standard, self-contained pickle of the state (what
``core/snapshot.py`` signs and publishes), so the checkpoint topic's format is unchanged
and a restore never needs the table.

Pure: no Kafka, no clock, no logging.

>>> from stream_learner.core.learner import Learner
>>> from stream_learner.core.models import ModelSpec
>>> spec = ModelSpec.from_dict({"task": "binary", "pipeline": [
...     {"estimator": "linear_model.LogisticRegression"}]})
>>> codec = KeyCodec(lambda key: Learner(key, spec))
>>> codec.prototype is not None  # a fresh learner unpickles as the factory builds it
True
>>> learner = codec.fresh("fraud")
>>> learner.key, learner.spec is spec
('fraud', True)
>>> state = codec.loads(codec.dumps(KeyState(learner, paused=True)))
>>> state.learner.key, state.paused, state.learner.spec is spec
('fraud', True, True)
>>> pickle.loads(codec.standalone(codec.dumps(state))).learner.spec == spec
True
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import pickle
import pickletools
import types
from collections.abc import Callable
from typing import Any

from stream_learner.core import pickling
from stream_learner.core.keystate import KeyState

__all__ = ["KeyCodec"]

#: Kept by the codec's pickles: snapshots', out-of-band buffers unused.
PROTOCOL = pickling.PROTOCOL
#: Keys no real key is: the factory builds the probes with them.
_PROBES = ("\x00stream-learner/probe/a", "\x00stream-learner/probe/bb")
_CHECKS = ("\x00stream-learner/probe/ccc", "\x00stream-learner/probe/d")
#: The persistent id of the key in the prototype's bytes.
_KEY = "key"

_ATOMS = (str, bytes, int, float, complex, bool, type(None))
_CODE = (type, types.FunctionType, types.BuiltinFunctionType, types.MethodDescriptorType)


def _immutable(obj: Any) -> bool:
    """Whether ``obj`` may be shared by reference: it cannot change (a string, a class, a
    function, a frozen dataclass, an enum member, a tuple of such)."""
    if isinstance(obj, (*_ATOMS, *_CODE, enum.Enum)):
        return True
    if type(obj) in (tuple, frozenset):
        return all(_immutable(item) for item in obj)
    params = getattr(type(obj), "__dataclass_params__", None)
    return params is not None and dataclasses.is_dataclass(obj) and params.frozen


def _reachable(obj: Any) -> dict[int, Any]:
    """Every object a pickle of ``obj`` visits, by id."""
    seen: dict[int, Any] = {}

    def record(item: Any) -> None:
        seen[id(item)] = item

    pickler = pickle.Pickler(io.BytesIO(), protocol=PROTOCOL)
    pickler.persistent_id = record  # returns None: everything is pickled as usual
    pickler.dump(obj)
    return seen


class KeyCodec:
    """Encodes the states of evicted keys for this process, and makes fresh keys; see the
    module docstring. ``factory(key)`` builds a key's fresh learner."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        self.factory = factory
        try:
            first, second = (KeyState(_planned(factory(key))) for key in _PROBES)
            seen, other = _reachable(first), _reachable(second)
        except Exception:  # learners that do not pickle: no table, and the factory makes keys
            seen, other = {}, {}
        shared = [
            obj
            for ident, obj in seen.items()
            if other.get(ident) is obj
            and _immutable(obj)
            and not isinstance(obj, (int, float, complex, bool, type(None)))
        ]
        # Learners the core's pickler refuses keep the whole table: the prototype check fails.
        with contextlib.suppress(Exception):
            shared = _referenced(shared, first) if shared else shared
        #: The objects every key refers to (held here, so their ids stay theirs), and
        #: what the codec's own reductions refer to.
        self.shared: list[Any] = [*shared, pickling.unseeded]
        self._memo = _memo(self.shared)
        self._seeder = _Seeder(self.shared, self._memo)
        #: A fresh learner pickled against the table, its key a persistent id
        #: (``None``: not proven to be the factory's, or no table).
        self.prototype: bytes | None = self._prototype() if shared else None

    # -- encoding ----------------------------------------------------------------------

    def dumps(self, state: KeyState) -> bytes:
        """``state`` pickled against the shared table (for :meth:`loads` in this process)."""
        return _dump(state, self._memo)

    def loads(self, data: bytes) -> KeyState:
        """The state of :meth:`dumps`' bytes."""
        return self._seeder.load(data)

    def copy(self, state: KeyState) -> KeyState:
        """``state`` in new objects (pickled and unpickled here): what a renewed key holds
        (``Processor.renew``), its objects' attributes inline again."""
        return self.loads(self.dumps(state))

    def standalone(self, data: bytes) -> bytes:
        """:meth:`dumps`' bytes as a standard pickle (:func:`pickling.dumps`) of the
        state, which needs no table: what a snapshot holds."""
        return pickling.dumps(self.loads(data))

    def fresh(self, key: str) -> Any:
        """A fresh learner for ``key``: from the prototype when proven, else the factory's."""
        if self.prototype is None:
            return self.factory(key)
        return self._seeder.load(self.prototype, {_KEY: key}.__getitem__)

    # -- helpers -----------------------------------------------------------------------

    def _prototype(self) -> bytes | None:
        """The prototype's bytes, when unpickling them gives, for other keys, learners
        that pickle to the very bytes of the factory's (else ``None``). The key is a
        persistent id (a C call per reference on load), given at load."""
        probe = _PROBES[0]
        try:
            learner = _planned(self.factory(probe))
            data = _dump(learner, self._memo, lambda obj: _KEY if obj is probe else None)
            for key in _CHECKS:
                made = self._seeder.load(data, {_KEY: key}.__getitem__)
                built = _planned(self.factory(key))
                if pickle.dumps(made, protocol=PROTOCOL) != pickle.dumps(built, protocol=PROTOCOL):
                    return None
        except Exception:  # a factory whose learners do not pickle: the factory it is
            return None
        return data


def _planned(learner: Any) -> Any:
    """``learner`` with its pipeline's execution plan built, as its first event would build
    it (River reads each step's method signatures for it: on a long tail of new keys,
    about a tenth of the time). The prototype carries it, so new keys start with it."""
    build = getattr(getattr(learner, "model", None), "_build_plan", None)
    if callable(build):
        build()
    return learner


def _referenced(table: list[Any], state: KeyState) -> list[Any]:
    """The objects of ``table`` that a pickle of ``state`` (a fresh learner, its plan built
    by :func:`_planned`) refers to, in order: one held by another (a string in the model
    spec) is never reached past it, and every place of the table costs each load and dump
    its own (the unpickler's and the pickler's memo copies), as well as a 5-byte
    reference past 256 places. An object left out that an older key does refer to is
    pickled as a value there."""
    refs = {
        arg
        for op, arg, _ in pickletools.genops(_dump(state, _memo(table)))
        if op.name in ("BINGET", "LONG_BINGET")
    }
    return [obj for place, obj in enumerate(table) if place in refs]


def _memo(table: list[Any]) -> Any:
    """A pickler memo holding ``table``'s objects at places 0, 1, ... (a copy of it seeds
    each dump)."""
    pickler = pickle.Pickler(io.BytesIO(), protocol=PROTOCOL)
    pickler.memo = {id(obj): (i, obj) for i, obj in enumerate(table)}
    return pickler.memo


class _Seeder:
    """Unpickles the codec's bytes with the table in the unpickler's memo, at the places
    :func:`_memo` gives it in the pickler's.

    The sure way is a prelude, loaded first, that stores the table's objects in the memo
    one by one (four opcodes and a ``persistent_load`` call each: 7 of a young key's 36
    us of unpickling). The quick way copies a seeded unpickler's memo into each new one
    (``unpickler.memo = seeded.memo``: one C loop). But the C unpickler numbers each
    ``MEMOIZE`` by a count of the places it has filled itself, which that copy leaves as
    it was, so a prelude of bare ``MEMOIZE`` opcodes (one byte each) fills the table's
    places first. This counts on how CPython's unpickler works, so the quick way is
    taken only when, at construction, it loads a probe of the table and of shared
    objects of its own exactly as the sure way does; otherwise the sure way it is.
    """

    def __init__(self, table: list[Any], memo: Any) -> None:
        self.table = table
        self._prelude = _frame(
            b"".join(
                pickle.BININT + i.to_bytes(4, "little") + pickle.BINPERSID + pickle.MEMOIZE
                + pickle.POP
                for i in range(len(table))
            )
        )  # fmt: skip
        self._places = _frame(pickle.NONE + pickle.MEMOIZE * len(table) + pickle.POP)
        seeded = pickle.Unpickler(io.BytesIO(self._prelude))
        seeded.persistent_load = table.__getitem__
        seeded.load()
        self._seeded = seeded  # held: its memo is what each quick load copies
        self.quick = False
        with contextlib.suppress(Exception):
            self.quick = self._proven(memo)

    def load(self, data: bytes, persistent_load: Callable[[Any], Any] | None = None) -> Any:
        """The object of :func:`_dump`'s ``data``; ``persistent_load`` resolves the
        persistent ids of ``data`` (other than the table's)."""
        quick = self.quick
        unpickler = pickle.Unpickler(io.BytesIO((self._places if quick else self._prelude) + data))
        if quick:
            unpickler.load()  # the table's places taken
            unpickler.memo = self._seeded.memo  # ... and filled
            if persistent_load is not None:
                unpickler.persistent_load = persistent_load
        else:
            table = self.table
            unpickler.persistent_load = (
                table.__getitem__
                if persistent_load is None
                else lambda pid: table[pid] if type(pid) is int else persistent_load(pid)
            )
            unpickler.load()
        return unpickler.load()

    def _proven(self, memo: Any) -> bool:
        """Whether the quick way loads what the sure way does: every object of the table
        by identity, and objects of the probe's own, referred to twice, as one."""
        own = [1.5, "own"]
        probe = [*self.table, own, own, (own,), own]
        data = _dump(probe, memo)
        self.quick = True
        quick = [self.load(data) for _ in range(2)]  # twice: the seeded memo unchanged
        self.quick = False
        sure = self.load(data)
        return all(
            len(got) == len(probe)
            and all(a is b for a, b in zip(got, self.table, strict=False))
            and got[-4] == own
            and got[-4] is got[-3] is got[-2][0] is got[-1]
            for got in (*quick, sure)
        )


def _frame(body: bytes) -> bytes:
    """``body`` as a pickle that loads as ``None``, in one ``FRAME``: unframed, the
    unpickler reads a file one opcode at a time, a ``read`` call each."""
    body += pickle.NONE + pickle.STOP
    frame = pickle.FRAME + len(body).to_bytes(8, "little")
    return pickle.PROTO + bytes([PROTOCOL]) + frame + body


def _dump(obj: Any, memo: Any, persistent_id: Callable[[Any], Any] | None = None) -> bytes:
    buffer = io.BytesIO()
    pickler = pickling.Pickler(buffer, protocol=PROTOCOL)
    pickler.memo = memo  # copied: the seeded places, then this pickle's own
    if persistent_id is not None:
        pickler.persistent_id = persistent_id
    pickler.dump(obj)
    return buffer.getvalue()
