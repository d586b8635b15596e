"""Compact rows give back exactly what was put in: values, types, key order, row order."""

from __future__ import annotations

import copy
import math
import pickle
import random
import struct
from collections import deque

import numpy as np

from stream_learner.core import rows as rows_module
from stream_learner.core.events import Event
from stream_learner.core.retrain import Example, RecentWindow
from stream_learner.core.rows import Rows


def exact(a, b) -> bool:
    """Equal, with the same types all the way down and floats equal bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            exact(k, kb) and exact(a[k], b[kb]) for k, kb in zip(a, b, strict=True)
        )
    if isinstance(a, tuple | list):
        return len(a) == len(b) and all(exact(u, v) for u, v in zip(a, b, strict=True))
    return a == b


def random_row(rng: random.Random, i: int) -> tuple:
    values = [
        lambda: rng.uniform(-1e6, 1e6),
        lambda: -0.0,
        lambda: 5e-324,
        lambda: 1.7976931348623157e308,
        lambda: rng.randint(-1000, 1000),
        lambda: 2**53 + rng.randint(1, 9),  # too large for a float64: kept as an object
        lambda: rng.random() < 0.5,
        lambda: rng.choice(["FR", "DE", "x" * 30]),
    ]
    names = rng.sample(["a", "b", "c", "d", "e"], rng.randint(0, 5))
    x = {n: rng.choice(values)() for n in names}
    y = rng.choice([True, False, 1, 0, "cat", rng.uniform(-5, 5), 3])
    p = rng.choice([True, False, None, "dog", rng.uniform(-5, 5)])
    proba = rng.choice(
        [
            None,
            {False: rng.random(), True: rng.random()},
            {"cat": rng.random(), "dog": 0.25, 1: 0.0},
            {True: np.float64(0.5)},  # not a float: kept as an object
            {},
        ]
    )
    t = rng.choice([None, rng.uniform(0, 2e9)])
    return i, t, x, y, p, proba


def test_rows_come_back_exactly_and_in_order_through_evictions_pickles_and_copies():
    rng = random.Random(3)
    rows = Rows(maxlen=300)
    reference: deque = deque(maxlen=300)
    for i in range(2000):
        row = random_row(rng, i)
        rows.push(*row)
        reference.append(row)
        if i % 397 == 0:
            rows = pickle.loads(pickle.dumps(rows))
        if i % 501 == 0:
            rows = copy.deepcopy(rows)
    assert len(rows) == 300
    got = list(rows)
    assert all(exact(a, b) for a, b in zip(got, reference, strict=True))
    assert exact(rows.newest(1899), list(reference)[-100:])
    assert rows.newest(1999) == [] and len(rows.newest(-1)) == 300
    assert exact(list(rows.outcomes()), [(r[3], r[4]) for r in reference])
    assert exact(list(rows.outcomes(1949)), [(r[3], r[4]) for r in list(reference)[-50:]])


def test_a_pickle_keeps_the_rows_not_encoded_yet_and_they_encode_as_if_never_pickled():
    # A key budget pickles a key after each of its few events: the last rows (fewer than
    # a batch) are pickled as they are, and encoded when the batch fills after a reload.
    rng = random.Random(5)
    kept, pickled = Rows(maxlen=40), Rows(maxlen=40)
    for i in range(100):
        x = {"x0": rng.random(), "x1": rng.random()}
        row = (i, float(i), x, i % 3 == 0, i % 2 == 0, {False: 0.25, True: 0.75})
        kept.push(*row)
        pickled.push(*row)
        if i % 7 == 0:
            pickled = pickle.loads(pickle.dumps(pickled, protocol=5))
            assert pickled._tail == kept._tail  # not encoded by the pickle
    assert exact(list(pickled), list(kept))
    assert pickle.dumps(pickled, protocol=5) == pickle.dumps(kept, protocol=5)
    kept._flush()  # as a pickle of before held it: every row encoded
    state = {k: v for k, v in kept.__getstate__().items() if k != "_tail"}
    old = Rows.__new__(Rows)
    old.__setstate__(state)
    assert exact(list(old), list(kept))


def test_a_store_with_no_row_encoded_pickles_without_its_arrays_and_comes_back_whole():
    # A young key (fewer events than a batch) is pickled at each eviction: its six empty
    # arrays were a tenth of its learner's pickling. It comes back as a new store would.
    young = RecentWindow(50, key="k")
    for i in range(3):
        young.push(i, float(i), {"x0": 0.5 * i}, True, False, None)
    data = pickle.dumps(young, protocol=5)
    assert b"array" not in data
    back = pickle.loads(data)
    assert sorted(vars(back)) == sorted(vars(young))
    assert exact(list(back), list(young)) and back._a.typecode == "q"
    for i in range(3, 40):  # encodes, then pickles its arrays
        row = (i, float(i), {"x0": 0.5 * i}, True, False, None)
        back.push(*row)
        young.push(*row)
    assert b"array" in pickle.dumps(back, protocol=5)
    state = back.__getstate__()
    assert list(state) == list(young.__getstate__())  # the attributes in the same order
    assert exact(list(back), list(young)) and len(state["_a"]) > 0


def test_a_key_with_one_shape_of_event_interns_a_handful_of_kinds():
    rows = Rows(maxlen=1000)
    rng = random.Random(1)
    for i in range(5000):
        x = {"x0": rng.random(), "x1": rng.random(), "x2": rng.random()}
        y, p = rng.random() < 0.5, rng.random() < 0.5
        rows.push(i, float(i), x, y, p, {False: 1 - 0.3, True: 0.3})
    assert len(rows.kinds) == 4  # (y, prediction) in {True, False}^2
    assert len(rows._v) <= 1.25 * 1000 * 5  # 3 features and 2 probabilities per row
    assert list(rows.outcomes()) == [(r[3], r[4]) for r in rows]  # from the kinds alone


def test_past_the_kind_limit_rows_are_kept_as_objects(monkeypatch):
    monkeypatch.setattr(rows_module, "MAX_KINDS", 3)
    rows = Rows()
    for i in range(10):
        rows.push(i, None, {f"f{i}": 1.0}, True, True, None)
    assert [r[2] for r in rows] == [{f"f{i}": 1.0} for i in range(10)]
    assert len(rows.kinds) == 3


def test_the_window_gives_examples_and_restores_from_a_pickle_of_the_old_deque_form():
    events = [Event(f"e{i}", "k", {"a": i / 7, "n": i}, i % 2 == 0, float(i)) for i in range(10)]
    old = RecentWindow(5)
    state = {"maxlen": 5, "items": deque(((i, e, True, None) for i, e in enumerate(events)), 5)}
    old.__setstate__(state)  # what unpickling a snapshot written before compact rows does
    assert [ex.index for ex in old] == [5, 6, 7, 8, 9]
    ex = old.after(8)[0]
    assert ex == Example(9, Event("", "k", {"a": 9 / 7, "n": 9}, False, 9.0), True, None)
    assert type(ex.event.x["n"]) is int
    bigger = old.resized(8)
    assert bigger.maxlen == 8 and list(bigger) == list(old)


def test_nan_never_stands_for_a_time_that_was_given():
    rows = Rows()
    rows.push(1, 0.0, {}, True, True, None)
    rows.push(2, None, {}, True, True, None)
    (_, t0, *_), (_, t1, *_) = rows
    assert t0 == 0.0 and t1 is None and not math.isnan(t0)
