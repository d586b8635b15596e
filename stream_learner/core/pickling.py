"""How the core pickles a key's state: standard pickles, with two economies.

Every snapshot (``core/snapshot.py``) and every evicted key (``core/codec.py``) is pickled
here. The bytes are plain pickles that ``pickle.loads`` reads; two kinds of object are
reduced differently from pickle's defaults:

- **River's unseeded distributions.** Each Gaussian of each feature and class in every
  Hoeffding tree leaf (any ``river.proba`` distribution) holds its own
  ``random.Random``, which only ``sample()`` reads and whose state, when no seed was given,
  came from the OS. Its 625 numbers, random and so incompressible, were 69 % of a tree
  key's snapshot in ``load_tests/race_memory.py``. Such a distribution is pickled without
  it, and loads with this process's shared OS-seeded generator. Pickling also hands the
  shared generator to the live distribution, so the model in memory drops its own (about
  2.5 KB each; a key rebuilt from a snapshot held 47 % less there). A seeded distribution
  keeps its generator, mid-sequence: its draws are reproducible and stay so.
- **``OrderedDict``, ``deque`` and ``Counter``** (River's pipelines and scalers, the
  learner's rings and counts) are reduced to their items here: their own reductions call
  back into Python for every object (``copyreg._slotnames``, which a built-in type cannot
  cache; ``Counter.__init__`` on load).
- **Plain objects** (a Python class's instance with the default reduction: River's
  estimators, optimisers, detectors) load with their attributes set one by one, not
  through their ``__dict__``. CPython 3.11 keeps an object's attributes inline until
  something reads its ``__dict__``; from then on every attribute read goes through a dict
  (about 4x slower here: five reads 30 -> 130 ns), and pickle's default load reads it. The
  state is pickle's ``(None, attributes)`` form, which ``pickle.loads`` applies with
  ``setattr``; the bytes stay a standard pickle. (Pickling still reads the live object's
  ``__dict__``: ``Processor.renew`` is what a long-lived learner does about it.)

Pure: no Kafka, no clock, no logging.

>>> from river.proba import Gaussian
>>> g = Gaussian()
>>> g.update(1.0)
>>> back = pickle.loads(dumps(g))
>>> back.mu, back._rng is g._rng is SHARED_RNG
(1.0, True)
"""

from __future__ import annotations

import copyreg
import functools
import io
import itertools
import pickle
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from river.proba import base as _proba

__all__ = [
    "DISPATCH",
    "PROTOCOL",
    "SHARED_RNG",
    "Pickler",
    "dumps",
    "empty_counter",
    "hollowed",
    "refilled",
    "set_attributes",
]

#: The protocol of snapshots (and of the codec's pickles).
PROTOCOL = 5
#: What unseeded distributions draw from once pickled or loaded (see the module docstring).
SHARED_RNG = random.Random()


def _reduce_distribution(obj: Any) -> Any:
    state = obj.__dict__
    if state.get("seed") is not None or type(state.get("_rng")) is not random.Random:
        return obj.__reduce_ex__(PROTOCOL)
    state = {name: value for name, value in state.items() if name != "_rng"}
    obj._rng = SHARED_RNG  # the live model keeps one generator, not one per distribution
    return copyreg.__newobj__, (type(obj),), state, None, None, unseeded


def unseeded(obj: Any, state: dict) -> None:
    """Load an unseeded distribution: its state, and the shared generator."""
    set_attributes(obj, state)
    obj._rng = SHARED_RNG


def _reduce_mapping(obj: Any) -> tuple:
    """An ``OrderedDict`` or ``Counter`` as a new object of its class (``__init__``
    skipped, as pickle does for plain objects), its attributes and its items."""
    return copyreg.__newobj__, (type(obj),), obj.__dict__ or None, None, iter(obj.items())


def _reduce_deque(obj: deque) -> tuple:
    return deque, ((), obj.maxlen), None, iter(obj)


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


#: The reductions by exact type (subclasses keep theirs), over copyreg's.
DISPATCH = {
    **copyreg.dispatch_table,
    OrderedDict: _reduce_mapping,
    Counter: _reduce_mapping,
    deque: _reduce_deque,
    **{cls: _reduce_distribution for cls in _subclasses(_proba.Distribution)},
}


def dumps(obj: Any, protocol: int = PROTOCOL) -> bytes:
    """``obj`` pickled with this module's reductions (:data:`DISPATCH`, plain objects)."""
    buffer = io.BytesIO()
    Pickler(buffer, protocol=protocol).dump(obj)
    return buffer.getvalue()


class Pickler(pickle.Pickler):
    """A pickler with this module's reductions: :data:`DISPATCH` by exact type, and plain
    objects' attributes as ``(None, attributes)`` (see the module docstring)."""

    dispatch_table = DISPATCH  # type: ignore[assignment]

    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        found = _PLAIN.get(cls)
        if found is None:
            found = _PLAIN[cls] = _plain(cls)
        if found is False:
            return NotImplemented
        state = obj.__dict__
        if not state or (found and not found.isdisjoint(state)):
            return NotImplemented  # nothing to set, or a name a descriptor of the class holds
        return copyreg.__newobj__, (cls,), (None, state)


#: Per class: ``False`` (not plain: pickle's own reduction), or the names that setting
#: would not store in the instance (its data descriptors: properties, slots).
_PLAIN: dict[type, frozenset[str] | bool] = {}
_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class defined by a class statement


def _plain(cls: type) -> frozenset[str] | bool:
    """Whether ``cls``'s instances pickle with the default reduction into a ``__dict__``
    that ``setattr`` restores alike (see :class:`Pickler`); if so, the names to leave out."""
    if (
        issubclass(cls, type)  # classes pickle by name
        or cls in DISPATCH
        or not cls.__flags__ & _HEAPTYPE  # functions, built-ins, extension types
        or not cls.__dictoffset__
        or cls.__reduce_ex__ is not object.__reduce_ex__
        or cls.__reduce__ is not object.__reduce__
        or cls.__getstate__ is not object.__getstate__
        or cls.__setattr__ is not object.__setattr__
        or hasattr(cls, "__setstate__")
        or hasattr(cls, "__getnewargs_ex__")
        or hasattr(cls, "__getnewargs__")
        or copyreg._slotnames(cls)  # type: ignore[attr-defined]
    ):
        return False
    return frozenset(
        name
        for klass in cls.__mro__
        for name, attr in vars(klass).items()
        if name not in ("__dict__", "__weakref__") and hasattr(type(attr), "__set__")
    )


def set_attributes(obj: Any, state: dict) -> None:
    """Restore ``state`` on ``obj`` one attribute at a time: an object's own ``__setstate__``
    calls this rather than updating its ``__dict__``, so its attributes stay inline (and
    their names interned). One C loop (``map``), not a Python one: 40 % less time."""
    any(map(setattr, itertools.repeat(obj), state, state.values()))


def hollowed(state: dict, names: tuple[str, ...]) -> dict:
    """``state`` (an owner's ``__getstate__``) with each of ``names`` that holds an empty
    container set to ``None``. An empty deque, ``Counter`` or ``OrderedDict`` costs a pickle
    a Python reduction and a load a new object (about 1 us together, and a young key holds
    several); the owner's ``__setstate__`` makes each again (:func:`refilled`)."""
    for name in names:
        if name in state and not state[name]:
            state[name] = None
    return state


#: A new empty ``Counter`` as a load makes one: without ``Counter.__init__`` (a Python
#: call, about 1 us), which an empty one does not need.
empty_counter = functools.partial(Counter.__new__, Counter)


def refilled(state: dict, **makers: Callable[[], Any]) -> dict:
    """``state`` with each attribute that :func:`hollowed` set to ``None`` made again by
    its maker (these attributes are never ``None`` otherwise)."""
    for name, make in makers.items():
        if name in state and state[name] is None:
            state[name] = make()
    return state
