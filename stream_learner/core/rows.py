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

A row comes back equal to what was put in: the same keys in the same order, the same types,
the same floats bit for bit. Rows leave in the order they came (first in, first out).
Pure and picklable: a snapshot holds the arrays' bytes and the kinds.

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
from typing import Any, NamedTuple

__all__ = ["MAX_KINDS", "Rows"]

#: Distinct row kinds one store interns; rows of further kinds are kept as objects.
MAX_KINDS = 4096
#: The largest int a float64 holds exactly (and every smaller one).
_EXACT = 2**53

_float = float
_str = str
_NUMERIC = frozenset((float, int, bool))


class _Kind(NamedTuple):
    """What the rows of one kind share. ``width`` numbers per row: the features' (string
    values aside), then the label's and the prediction's when they are floats (``y_num``,
    ``p_num``; otherwise ``y`` and ``p`` are the values), then the probabilities."""

    names: tuple[str, ...]
    types: tuple[type, ...]  # of each feature value, in order
    y_num: bool
    y: Any
    p_num: bool
    p: Any
    classes: tuple | None  # the probability dict's keys, in order (None: no probabilities)
    width: int
    plain: bool  # every feature value a float: the values are the numbers, in order
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


class Rows:
    """Rows of ``(a, t, x, y, p, proba)``: an int (an input index), a float or ``None`` (a
    time), a feature dict, a label, a prediction and its class probabilities (or ``None``),
    first in, first out. See the module docstring."""

    def __init__(self, maxlen: int | None = None) -> None:
        self.maxlen = maxlen  # the oldest row goes when a push would pass it
        self.kinds: list[_Kind] = []
        self._ids: dict[tuple, int] = {}
        self._a = array("q")
        self._t = array("d")  # NaN for None (a time is finite or absent)
        self._k = array("i")  # kind numbers
        self._v = array("d")  # the numbers of every row, in order
        self._s: dict[int, tuple] = {}  # row number -> its strings, or its objects
        self._head = 0  # rows at the front already gone (removed in bulk, amortised)
        self._vhead = 0  # their numbers
        self._base = 0  # the row number of self._a[0]

    # -- pickling: the live rows' arrays and the kinds, not the interning dict -------------

    def __getstate__(self) -> dict:
        self._compact()
        state = dict(vars(self))
        del state["_ids"]
        state["kinds"] = [tuple(k) for k in self.kinds]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.kinds = [_Kind(*k) for k in state["kinds"]]
        self._ids = {_key(k): i for i, k in enumerate(self.kinds)}

    def __len__(self) -> int:
        return len(self._k) - self._head

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rows) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    # -- writing ---------------------------------------------------------------------------

    def push(self, a: int, t: float | None, x: dict, y: Any, p: Any, proba: dict | None) -> None:
        """Add a row at the end (and drop the oldest when ``maxlen`` is passed)."""
        values = x.values()
        types = tuple(map(type, values))
        y_num = type(y) is _float
        p_num = type(p) is _float
        classes = None if proba is None else tuple(proba)
        key = (
            tuple(x),
            types,
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
            k = self._intern(key, x, y, p, proba)
        if k >= 0:
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
                    self._s[self._base + len(self._k)] = tuple(strings)
                else:
                    for value in values:
                        if not -_EXACT <= value <= _EXACT:
                            raise OverflowError
                    v.extend(values)
                if y_num:
                    v.append(y)
                if p_num:
                    v.append(p)
                if classes is not None:
                    probs = proba.values()
                    for prob in probs:
                        if type(prob) is not _float:
                            raise TypeError
                    v.extend(probs)
            except (OverflowError, TypeError):  # an int too large for a float64, and so on
                del v[n:]
                self._s.pop(self._base + len(self._k), None)
                k = _OBJECT
        if k < 0:
            self._s[self._base + len(self._k)] = (x, y, p, proba)
        self._a.append(a)
        self._t.append(_NAN if t is None else t)
        self._k.append(k)
        if self.maxlen is not None and len(self._k) - self._head > self.maxlen:
            self.popleft()

    def _intern(self, key: tuple, x: dict, y: Any, p: Any, proba: dict | None) -> int:
        types = key[1]
        if len(self.kinds) >= MAX_KINDS or not all(t in _NUMERIC or t is _str for t in types):
            return _OBJECT
        numbers = sum(t is not _str for t in types)
        kind = _Kind(
            names=key[0],
            types=types,
            y_num=key[2],
            y=key[4],
            p_num=key[5],
            p=key[7],
            classes=key[8],
            width=numbers + key[2] + key[5] + (0 if proba is None else len(proba)),
            plain=all(t is _float for t in types),
            strings=_str in types,
        )
        self.kinds.append(kind)
        k = self._ids[key] = len(self.kinds) - 1
        return k

    def popleft(self) -> None:
        """Drop the oldest row."""
        head = self._head
        k = self._k[head]
        if k >= 0:
            kind = self.kinds[k]
            self._vhead += kind.width
            if kind.strings:
                del self._s[self._base + head]
        else:
            del self._s[self._base + head]
        self._head = head = head + 1
        if head >= 256 and head * 4 >= len(self._k):
            self._compact()

    def clear(self) -> None:
        Rows.__init__(self, self.maxlen)

    def _compact(self) -> None:
        """Free the rows already gone from the front of the arrays."""
        head = self._head
        if head:
            del self._a[:head]
            del self._t[:head]
            del self._k[:head]
            del self._v[: self._vhead]
            self._base += head
            self._head = self._vhead = 0

    # -- reading -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple]:
        return self._rows(self._head, self._vhead)

    def newest(self, since: int) -> list[tuple]:
        """The rows whose ``a`` is greater than ``since``, oldest first (``a`` is assumed
        to grow from row to row)."""
        a, k, kinds = self._a, self._k, self.kinds
        i = len(k)
        start = self._vhead + sum(kinds[j].width for j in k[self._head :] if j >= 0)
        while i > self._head and a[i - 1] > since:
            i -= 1
            j = k[i]
            if j >= 0:
                start -= kinds[j].width
        return list(self._rows(i, start))

    def _rows(self, first: int, o: int) -> Iterator[tuple]:
        a, t, k, v, s, kinds = self._a, self._t, self._k, self._v, self._s, self.kinds
        base = self._base
        for i in range(first, len(k)):
            j = k[i]
            ts = t[i]
            ts = None if ts != ts else ts
            if j < 0:
                x, y, p, proba = s[base + i]
                yield a[i], ts, x, y, p, proba
                continue
            kind = kinds[j]
            names = kind.names
            n = len(names)
            if kind.plain:
                x = dict(zip(names, v[o : o + n], strict=True))
                o += n
            else:
                x, o = _features(kind, v, o, s.get(base + i))
            if kind.y_num:
                y = v[o]
                o += 1
            else:
                y = kind.y
            if kind.p_num:
                p = v[o]
                o += 1
            else:
                p = kind.p
            classes = kind.classes
            if classes is None:
                proba = None
            else:
                m = len(classes)
                proba = dict(zip(classes, v[o : o + m], strict=True))
                o += m
            yield a[i], ts, x, y, p, proba


def _features(kind: _Kind, v: array, o: int, strings: tuple | None) -> tuple[dict, int]:
    """The feature dict of a row whose values are not all floats, and the next offset."""
    x = {}
    texts = iter(strings or ())
    numbers = iter(v[o : o + len(kind.names)])
    for name, t in zip(kind.names, kind.types, strict=True):
        if t is _str:
            x[name] = next(texts)
            continue
        value = next(numbers)
        o += 1
        x[name] = value if t is _float else t(value)
    return x, o


_NAN = float("nan")
