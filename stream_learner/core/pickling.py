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
import io
import pickle
import random
from collections import Counter, OrderedDict, deque
from typing import Any

from river.proba import base as _proba

__all__ = ["DISPATCH", "PROTOCOL", "SHARED_RNG", "dumps"]

#: The protocol of snapshots (and of the codec's pickles).
PROTOCOL = 5
#: What unseeded distributions draw from once pickled or loaded (see the module docstring).
SHARED_RNG = random.Random()


def dumps(obj: Any, protocol: int = PROTOCOL) -> bytes:
    """``obj`` pickled with this module's reductions (:data:`DISPATCH`)."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=protocol)
    pickler.dispatch_table = DISPATCH
    pickler.dump(obj)
    return buffer.getvalue()


def _reduce_distribution(obj: Any) -> Any:
    state = obj.__dict__
    if state.get("seed") is not None or type(state.get("_rng")) is not random.Random:
        return obj.__reduce_ex__(PROTOCOL)
    state = {name: value for name, value in state.items() if name != "_rng"}
    obj._rng = SHARED_RNG  # the live model keeps one generator, not one per distribution
    return copyreg.__newobj__, (type(obj),), state, None, None, unseeded


def unseeded(obj: Any, state: dict) -> None:
    """Load an unseeded distribution: its state, and the shared generator."""
    obj.__dict__.update(state)
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
