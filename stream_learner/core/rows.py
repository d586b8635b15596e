"""Compact rows: what a key holds per event, as typed columns instead of object graphs.

A key holds up to thousands of recent labelled examples (the retrain window) and the
predictions waiting for their delayed labels. As Python objects each costs about a kilobyte
(an event, its feature dict, a float object per value, a probability dict); a million keys
cannot afford that. :class:`Rows` keeps one row per event in flat arrays:

- every row's *kind* (its feature names in order and the types of their values, its label
  and prediction unless they are floats, the classes of its probabilities) is interned once
  per store, and the row refers to it by number: a key's events share a handful of kinds;
- the numbers (feature values, float labels and predictions, probabilities) go into one
  float64 array; ints up to 2**53 and bools are stored as floats and come back with their
  type from the kind;
- string feature values (categorical features) are kept as one tuple per row, interned;
- a row that fits none of this (an int too large for a double, a value of another type, a
  probability that is not a float, more than :data:`MAX_KINDS` kinds) is kept as its Python
  objects, as before.

Rows are pushed on the hot path (one per labelled event), so a push only appends the row to
a short list; every :data:`BATCH` rows the list is encoded at once, with one pass of C loops
over the batch when its rows have the same features, all floats (the common case), and row by
row otherwise. Reads encode what is left first.

A row comes back equal to what was put in: the same keys in the same order, the same types,
the same floats bit for bit. Rows leave in the order they came (first in, first out).
Pure and picklable: a snapshot holds the arrays' bytes, the kinds and the last few rows
not encoded yet.

>>> rows = Rows()
>>> rows.push(7, 1.5, {"a": 0.25, "n": 3, "c": "FR"}, True, False, {False: 0.6, True: 0.4})
>>> rows.push(8, None, {"a": 2.0, "n": 4, "c": "DE"}, False, False, {False: 0.7, True: 0.3})
>>> list(rows)[1]
(8, None, {'a': 2.0, 'n': 4, 'c': 'DE'}, False, False, {False: 0.7, True: 0.3})
>>> rows.popleft(); len(rows), len(rows.kinds)
(1, 2)
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator
from itertools import chain
from struct import pack as _pack
from typing import Any, NamedTuple

from stream_learner.core import pickling

__all__ = ["BATCH", "MAX_KINDS", "Packer", "Rows"]

#: Distinct row kinds one store interns; rows of further kinds are kept as objects.
MAX_KINDS = 4096
#: Rows pushed before they are encoded together.
BATCH = 16
#: The largest int a float64 holds exactly (and every smaller one).
_EXACT = 2**53
_NAN = float("nan")

_float = float
_str = str
_NUMERIC = frozenset((float, int, bool))
_FLOATS = frozenset((float,))
_TIMES = frozenset((float, type(None)))


class _Kind(NamedTuple):
    """What the rows of one kind share: feature names, the types of their values (``xw``
    of them numbers, the strings aside), the label and the prediction unless they are
    floats (``y_num``, ``p_num``: then they are numbers of the row), and the classes of the
    probabilities (``None``: no probabilities)."""

    names: tuple[str, ...]
    types: tuple[type, ...]
    y_num: bool
    y: Any
    p_num: bool
    p: Any
    classes: tuple | None
    xw: int
    plain: bool  # every feature value a float
    strings: bool  # some feature values are strings (kept in the row's tuple)


_OBJECT = -1  # the kind number of a row kept as its objects


def _key(kind: _Kind) -> tuple:
    """The interning key of a kind: its values with their types (True == 1, but they are
    different labels to give back)."""
    classes = kind.classes
    return (
        kind.names,
        kind.types,
        kind.y_num,
        type(kind.y),
        kind.y,
        kind.p_num,
        type(kind.p),
        kind.p,
        classes,
        None if classes is None else tuple(map(type, classes)),
    )


def _encoded() -> dict[str, Any]:
    """A new store's encoded part, no row in it (:meth:`Rows.__init__`, and what a store
    pickled with none is given back: see :meth:`Rows.__getstate__`)."""
    return {
        "_a": array("q"),  # input indices
        "_t": array("d"),  # times, NaN for None (a time is finite or absent)
        "_k": array("h"),  # kind numbers (MAX_KINDS fits)
        "_v": array("d"),  # feature values
        "_w": array("d"),  # float labels and predictions
        "_q": array("d"),  # probabilities
        "_s": {},  # row number -> its strings, or its objects
        "_head": 0,  # rows at the front already gone (removed in bulk, amortised)
        "_vh": 0,  # ... their numbers in _v, _w, _q
        "_wh": 0,
        "_qh": 0,
        "_base": 0,  # the row number of _a[0]
    }


_ENCODED = tuple(_encoded())


class Rows:
    """Rows of ``(a, t, x, y, p, proba)``: an int (an input index), a float or ``None`` (a
    time), a feature dict, a label, a prediction and its class probabilities (or ``None``),
    first in, first out; at most ``maxlen`` (the oldest go). See the module docstring."""

    # The encoded part, set by :func:`_encoded`.
    _a: array
    _t: array
    _k: array
    _v: array
    _w: array
    _q: array
    _s: dict[int, tuple]
    _head: int
    _vh: int
    _wh: int
    _qh: int
    _base: int

    def __init__(self, maxlen: int | None = None) -> None:
        self.maxlen = maxlen
        self.kinds: list[_Kind] = []
        self._ids: dict[tuple, int] = {}
        pickling.set_attributes(self, _encoded())
        self._tail: list[tuple] = []  # rows pushed, not encoded yet
        self._combos: dict[tuple, dict] = {}  # batch signature -> (label, prediction) -> kind
        self._widths: tuple[list, list, list] = ([], [], [])  # per kind: in _v, _w, _q

    # -- pickling: the live rows' arrays and the kinds, not the interning dict -------------
    # The rows pushed since the last batch (fewer than BATCH) are pickled as they are, not
    # encoded first: a key evicted after each of its few events (a key budget) would
    # otherwise pay an encoding per eviction, and the rows encode as they would have when
    # the batch fills after a reload. Snapshots pickled before this hold an empty tail.

    # A store with no row encoded yet (a young key's: fewer than BATCH events) is pickled
    # without its encoded part, which is then as a new store's: six empty arrays cost a
    # young key's eviction and reload about 4 us, a tenth of its learner's.

    def __getstate__(self) -> dict:
        self._compact()
        state = dict(vars(self))
        del state["_ids"], state["_combos"], state["_widths"]
        state["kinds"] = [tuple(k) for k in self.kinds]
        encoded = self._k or self._a or self._t or self._v or self._w or self._q or self._s
        if not encoded and not self._base:  # the other counters are 0 too, after _compact
            for name in _ENCODED:
                del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_tail", [])
        if "_k" not in state:  # no row encoded (see __getstate__): put back where it was
            names = list(state)
            at = names.index("_tail")
            state = {
                **{name: state[name] for name in names[:at]},
                **_encoded(),
                **{name: state[name] for name in names[at:]},
            }
        state["kinds"] = kinds = [_Kind(*k) for k in state["kinds"]]
        state["_ids"] = {_key(k): i for i, k in enumerate(kinds)}
        state["_combos"] = {}
        state["_widths"] = ([], [], [])
        pickling.set_attributes(self, state)

    def __len__(self) -> int:
        n = len(self._k) - self._head + len(self._tail)
        return n if self.maxlen is None or n <= self.maxlen else self.maxlen

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rows) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    # -- writing ---------------------------------------------------------------------------

    def push(self, a: int, t: float | None, x: dict, y: Any, p: Any, proba: dict | None) -> None:
        """Add a row at the end (the oldest goes when ``maxlen`` is passed)."""
        tail = self._tail
        tail.append((a, t, x, y, p, proba))
        if len(tail) >= BATCH:
            self._flush()

    def clear(self) -> None:
        Rows.__init__(self, self.maxlen)

    def _flush(self) -> None:
        """Encode the rows pushed since the last time, then drop the rows past ``maxlen``."""
        tail = self._tail
        if tail:
            self._tail = []
            if not self._batch(tail):
                for row in tail:
                    self._encode(*row)
            maxlen = self.maxlen
            if maxlen is not None and len(self._k) - self._head > maxlen:
                self._drop(len(self._k) - self._head - maxlen)

    def _batch(self, tail: list[tuple]) -> bool:
        """Encode rows that share their features, all floats, and their types of label,
        prediction and probabilities, in one pass; ``False`` (nothing done) otherwise."""
        n = len(tail)
        a_s, t_s, xs, ys, ps, probas = zip(*tail, strict=True)
        names = tuple(xs[0])
        if list(chain.from_iterable(xs)) != list(names) * n:  # the same names, in order
            return False
        first = probas[0]
        if first is None:
            if probas.count(None) != n:
                return False
            classes = ctypes = None
            dicts: Any = xs
        else:
            if None in probas:
                return False
            classes = tuple(first)
            ctypes = tuple(map(type, classes))
            if list(map(type, chain.from_iterable(probas))) != list(ctypes) * n:
                return False
            if list(chain.from_iterable(probas)) != list(classes) * n:
                return False
            dicts = chain(xs, probas)
        # The feature values, then the probabilities, then the times: floats, one pass.
        numbers = list(chain.from_iterable(map(dict.values, dicts)))
        timed = None not in t_s
        if timed:
            numbers.extend(t_s)
        elif not set(map(type, t_s)) <= _TIMES:
            return False
        if not set(map(type, numbers)) <= _FLOATS:
            return False
        ty, tp = set(map(type, ys)), set(map(type, ps))
        if len(ty) != 1 or len(tp) != 1:
            return False
        (ty,), (tp,) = ty, tp
        y_num, p_num = ty is _float, tp is _float
        # The kind of each row by its (label, prediction): one type each in the batch, so
        # equal values are the same label.
        signature = (names, y_num, ty, p_num, tp, classes, ctypes)
        combos = self._combos.get(signature)
        if combos is None:
            combos = self._combos[signature] = {}
        pairs = list(zip((None,) * n if y_num else ys, (None,) * n if p_num else ps, strict=True))
        for y, p in set(pairs).difference(combos):
            key = (names, (_float,) * len(names), y_num, ty, y, p_num, tp, p, classes, ctypes)
            k = self._ids.get(key)
            if k is None:
                k = self._intern(key)
                if k < 0:
                    return False
            combos[y, p] = k
        self._k.extend(array("h", map(combos.__getitem__, pairs)))
        numbers = array("d", _pack(f"{len(numbers)}d", *numbers))  # faster than from a list
        nx = n * len(names)
        nq = nx + (0 if classes is None else n * len(classes))
        self._v.extend(numbers[:nx])
        if nq > nx:
            self._q.extend(numbers[nx:nq])
        if y_num and p_num:
            self._w.extend(array("d", chain.from_iterable(zip(ys, ps, strict=True))))
        elif y_num:
            self._w.extend(array("d", ys))
        elif p_num:
            self._w.extend(array("d", ps))
        self._a.extend(array("q", a_s))
        if timed:
            self._t.extend(numbers[nq:])
        else:
            self._t.extend(array("d", [_NAN if t is None else t for t in t_s]))
        return True

    def _encode(self, a: int, t: float | None, x: dict, y: Any, p: Any, proba: dict | None) -> None:
        """Encode one row (any row: the batch path takes the common ones)."""
        values = x.values()
        y_num = type(y) is _float
        p_num = type(p) is _float
        classes = None if proba is None else tuple(proba)
        key = (
            tuple(x),
            tuple(map(type, values)),
            y_num,
            type(y),
            None if y_num else y,
            p_num,
            type(p),
            None if p_num else p,
            classes,
            None if classes is None else tuple(map(type, classes)),
        )
        k = self._ids.get(key)
        if k is None:
            k = self._intern(key)
        row = self._base + len(self._k)
        if k >= 0 and (t is None or type(t) is _float):
            kind = self.kinds[k]
            v = self._v
            n = len(v)
            try:
                if kind.plain:
                    v.extend(values)
                elif kind.strings:
                    strings = []
                    for value in values:
                        if type(value) is _str:
                            strings.append(sys.intern(value))
                        elif -_EXACT <= value <= _EXACT:
                            v.append(value)
                        else:
                            raise OverflowError
                    self._s[row] = tuple(strings)
                else:
                    for value in values:
                        if not -_EXACT <= value <= _EXACT:
                            raise OverflowError
                    v.extend(values)
                if classes is not None:
                    probs = list(proba.values())
                    if not set(map(type, probs)) <= _FLOATS:
                        raise TypeError
                    self._q.extend(probs)
            except (OverflowError, TypeError):  # an int too large for a float64, and so on
                del v[n:]
                self._s.pop(row, None)
                k = _OBJECT
            else:
                if y_num:
                    self._w.append(y)
                if p_num:
                    self._w.append(p)
        else:
            k = _OBJECT
        if k < 0:
            self._s[row] = (t, x, y, p, proba)
            t = None
        self._a.append(a)
        self._t.append(_NAN if t is None else t)
        self._k.append(k)

    def _intern(self, key: tuple) -> int:
        types = key[1]
        if len(self.kinds) >= MAX_KINDS or not all(t in _NUMERIC or t is _str for t in types):
            return _OBJECT
        kind = _Kind(
            names=key[0],
            types=types,
            y_num=key[2],
            y=key[4],
            p_num=key[5],
            p=key[7],
            classes=key[8],
            xw=sum(t is not _str for t in types),
            plain=all(t is _float for t in types),
            strings=_str in types,
        )
        self.kinds.append(kind)
        k = self._ids[key] = len(self.kinds) - 1
        return k

    def popleft(self) -> None:
        """Drop the oldest row."""
        self._flush()
        if len(self._k) > self._head:
            self._drop(1)

    def _drop(self, n: int) -> None:
        """Drop the ``n`` oldest encoded rows."""
        k, kinds, s = self._k, self.kinds, self._s
        head, base = self._head, self._base
        if s:  # rows with strings or kept as objects: row by row
            vh, wh, qh = self._vh, self._wh, self._qh
            for i in range(head, head + n):
                j = k[i]
                if j < 0:
                    del s[base + i]
                    continue
                kind = kinds[j]
                vh += kind.xw
                wh += kind.y_num + kind.p_num
                if kind.classes is not None:
                    qh += len(kind.classes)
                if kind.strings:
                    del s[base + i]
            self._vh, self._wh, self._qh = vh, wh, qh
        else:  # every row has a kind: sums over the kinds' widths, in C loops
            widths = self._widths
            if len(widths[0]) != len(kinds):
                widths = self._widths = _widths(kinds)
            gone = k[head : head + n]
            self._vh += sum(map(widths[0].__getitem__, gone))
            self._wh += sum(map(widths[1].__getitem__, gone))
            self._qh += sum(map(widths[2].__getitem__, gone))
        self._head = head = head + n
        if head >= 64 and head * 8 >= len(k):  # at most 1/8 of the arrays is gone rows
            self._compact()

    def _compact(self) -> None:
        """Free the rows already gone from the front of the arrays."""
        head = self._head
        if head:
            del self._a[:head]
            del self._t[:head]
            del self._k[:head]
            del self._v[: self._vh]
            del self._w[: self._wh]
            del self._q[: self._qh]
            self._base += head
            self._head = self._vh = self._wh = self._qh = 0

    # -- reading -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple]:
        self._flush()
        return self._rows(self._head, self._vh, self._wh, self._qh)

    def outcomes(self, since: int | None = None) -> Iterator[tuple[Any, Any]]:
        """The label and prediction ``(y, p)`` of each row (whose ``a`` is greater than
        ``since``, if given), oldest first, without building its features: a window's error
        level costs one pass over its kinds and numbers."""
        self._flush()
        a, k, kinds, w, s = self._a, self._k, self.kinds, self._w, self._s
        base, wo = self._base, self._wh
        for i in range(self._head, len(k)):
            j = k[i]
            if j < 0:
                if since is None or a[i] > since:
                    _, _, y, p, _ = s[base + i]
                    yield y, p
                continue
            kind = kinds[j]
            y, p, wo = _outcome(kind, w, wo)
            if since is None or a[i] > since:
                yield y, p

    def newest(self, since: int) -> list[tuple]:
        """The rows whose ``a`` is greater than ``since``, oldest first (``a`` is assumed
        to grow from row to row)."""
        self._flush()
        a, k, kinds = self._a, self._k, self.kinds
        i = len(k)
        vo, wo, qo = len(self._v), len(self._w), len(self._q)
        while i > self._head and a[i - 1] > since:
            i -= 1
            j = k[i]
            if j >= 0:
                kind = kinds[j]
                vo -= kind.xw
                wo -= kind.y_num + kind.p_num
                if kind.classes is not None:
                    qo -= len(kind.classes)
        return list(self._rows(i, vo, wo, qo))

    def _rows(self, first: int, vo: int, wo: int, qo: int) -> Iterator[tuple]:
        a, t, k, kinds = self._a, self._t, self._k, self.kinds
        v, w, q, s = self._v, self._w, self._q, self._s
        base = self._base
        for i in range(first, len(k)):
            j = k[i]
            if j < 0:
                yield (a[i], *s[base + i])
                continue
            ts = t[i]
            kind = kinds[j]
            names = kind.names
            if kind.plain:
                n = len(names)
                x = dict(zip(names, v[vo : vo + n], strict=True))
                vo += n
            else:
                x, vo = _features(kind, v, vo, s.get(base + i))
            y, p, wo = _outcome(kind, w, wo)
            classes = kind.classes
            if classes is None:
                proba = None
            else:
                m = len(classes)
                proba = dict(zip(classes, q[qo : qo + m], strict=True))
                qo += m
            yield a[i], (None if ts != ts else ts), x, y, p, proba


def _outcome(kind: _Kind, w: array, wo: int) -> tuple[Any, Any, int]:
    """A row's label and prediction (read from ``w`` at ``wo`` when they are numbers), and
    the offset in ``w`` of the next row's."""
    if kind.y_num:
        y = w[wo]
        wo += 1
    else:
        y = kind.y
    if kind.p_num:
        p = w[wo]
        wo += 1
    else:
        p = kind.p
    return y, p, wo


def _widths(kinds: list[_Kind]) -> tuple[list, list, list]:
    """How many numbers a row of each kind has in each of the three value arrays."""
    return (
        [kind.xw for kind in kinds],
        [kind.y_num + kind.p_num for kind in kinds],
        [0 if kind.classes is None else len(kind.classes) for kind in kinds],
    )


def _features(kind: _Kind, v: array, o: int, strings: tuple | None) -> tuple[dict, int]:
    """The feature dict of a row whose values are not all floats, and the next offset."""
    x = {}
    texts = iter(strings or ())
    numbers = iter(v[o : o + kind.xw])
    for name, t in zip(kind.names, kind.types, strict=True):
        if t is _str:
            x[name] = next(texts)
            continue
        value = next(numbers)
        x[name] = value if t is _float else t(value)
    return x, o + kind.xw


class Packer:
    """Single rows ``(x, p, proba)`` packed into bytes, for a store that takes rows out in
    any order (the label joiner): the feature names, the prediction (unless a float) and the
    classes are interned as a kind, the floats are the bytes. Rows whose feature values or
    probabilities are not all floats are not packed (``None``): the caller keeps them as
    they are.

    >>> packer = Packer()
    >>> kind, data = packer.pack({"a": 0.5, "b": -1.0}, True, {False: 0.25, True: 0.75})
    >>> packer.unpack(kind, data), len(data)
    (({'a': 0.5, 'b': -1.0}, True, {False: 0.25, True: 0.75}), 32)
    """

    def __init__(self) -> None:
        self.kinds: list[tuple] = []  # (names, p_num, p, classes)
        self._ids: dict[tuple, int] = {}

    def __getstate__(self) -> dict:
        return {"kinds": self.kinds}

    def __setstate__(self, state: dict) -> None:
        self.kinds = state["kinds"]
        self._ids = {}
        for k, (names, p_num, p, classes) in enumerate(self.kinds):
            ctypes = None if classes is None else tuple(map(type, classes))
            self._ids[names, p_num, type(p), p, classes, ctypes] = k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Packer) and self.kinds == other.kinds

    __hash__ = None  # type: ignore[assignment]

    def pack(self, x: dict, p: Any, proba: dict | None) -> tuple[int, bytes] | None:
        if not set(map(type, x.values())) <= _FLOATS:
            return None
        numbers = array("d", x.values())
        p_num = type(p) is _float
        if p_num:
            numbers.append(p)
        if proba is None:
            classes = ctypes = None
        else:
            if not set(map(type, proba.values())) <= _FLOATS:
                return None
            numbers.extend(proba.values())
            classes = tuple(proba)
            ctypes = tuple(map(type, classes))
        key = (tuple(x), p_num, type(p), None if p_num else p, classes, ctypes)
        k = self._ids.get(key)
        if k is None:
            if len(self.kinds) >= MAX_KINDS:
                return None
            self.kinds.append((key[0], p_num, key[3], classes))
            k = self._ids[key] = len(self.kinds) - 1
        return k, numbers.tobytes()

    def unpack(self, k: int, data: bytes) -> tuple[dict, Any, dict | None]:
        names, p_num, p, classes = self.kinds[k]
        numbers = array("d")
        numbers.frombytes(data)
        n = len(names)
        x = dict(zip(names, numbers[:n], strict=True))
        if p_num:
            p = numbers[n]
            n += 1
        proba = None if classes is None else dict(zip(classes, numbers[n:], strict=True))
        return x, p, proba
