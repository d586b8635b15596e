from __future__ import annotations

import copy
import doctest
import pickle

import pytest

from stream_learner.core import labels
from stream_learner.core.events import Event, Label
from stream_learner.core.labels import LabelJoiner


def _event(i: int, key: str = "default") -> Event:
    return Event(f"e{i}", key, {"f": float(i)})


def _label(i: int, y: object = True, key: str = "default") -> Label:
    return Label(f"e{i}", key, y)


def _counters(j: LabelJoiner) -> tuple[int, int, int, int, int]:
    return j.joined, j.unmatched, j.expired, j.pending, j.parked


def test_join_returns_the_event_and_prediction_once() -> None:
    j = LabelJoiner()
    ev = _event(1, key="fraud")
    j.remember(ev, {"y_pred": False, "proba": {True: 0.2}}, now=10.0)
    assert j.pending == 1 and len(j) == 1
    # A label without a key decodes to "default": it still joins, and the event has the key.
    joined = j.join(_label(1), now=11.0)
    assert joined == (ev, {"y_pred": False, "proba": {True: 0.2}})
    assert joined[0].key == "fraud"
    assert j.join(_label(1), now=12.0) is None  # a second label for the same id: parked
    assert _counters(j) == (1, 0, 0, 0, 1)


def test_label_without_prediction_is_parked_then_unmatched_when_too_old() -> None:
    j = LabelJoiner(max_age_s=100.0)
    j.remember(_event(1), True, now=0.0)
    assert j.join(_label(2), now=1.0) is None
    assert _counters(j) == (0, 0, 0, 1, 1)
    assert j.expire(now=101.5) == 1  # e1's prediction and e2's label are both too old now
    assert _counters(j) == (0, 1, 1, 0, 0)


def test_label_before_its_prediction_joins_when_the_event_comes() -> None:
    j = LabelJoiner(max_age_s=100.0)
    early = _label(7, y=False)
    assert j.join(early, now=5.0) is None
    assert j.remember(_event(7), True, now=6.0) == early  # joined at once, nothing kept
    assert _counters(j) == (1, 0, 0, 0, 0)
    assert j.join(_label(7), now=7.0) is None  # the event is not pending any more


def test_parked_labels_are_bounded_by_count() -> None:
    j = LabelJoiner(max_pending=3, max_age_s=None)
    for i in range(5):
        assert j.join(_label(i), now=0.0) is None
    assert _counters(j) == (0, 2, 0, 0, 3)  # the two oldest were given up
    assert j.remember(_event(0), True, now=0.0) is None  # e0's label was given up
    assert j.remember(_event(4), True, now=0.0) == _label(4)


def test_expire_by_age() -> None:
    j = LabelJoiner(max_age_s=10.0)
    for i in range(5):
        j.remember(_event(i), i, now=float(i))  # remembered at t = 0, 1, 2, 3, 4
    assert j.expire(now=10.0) == 0  # e0 is exactly max_age_s old: kept
    assert j.expire(now=12.5) == 3  # e0, e1, e2 are older than 10 s
    assert _counters(j) == (0, 0, 3, 2, 0)
    assert j.join(_label(2), now=12.5) is None  # too late: parked, in case e2 comes again
    assert j.join(_label(3), now=12.5) == (_event(3), 3)
    # join expires first: e4 is 10.5 s old by now, so its label comes too late.
    assert j.join(_label(4), now=14.5) is None
    assert _counters(j) == (1, 0, 4, 0, 2)
    j.expire(now=23.0)  # the label parked at 12.5 is now too old; the one of 14.5 is not
    assert _counters(j) == (1, 1, 4, 0, 1)


def test_no_max_age_keeps_entries() -> None:
    j = LabelJoiner(max_age_s=None)
    j.remember(_event(1), True, now=0.0)
    assert j.expire(now=1e12) == 0
    assert j.join(_label(1), now=1e12) == (_event(1), True)


def test_evict_oldest_by_count() -> None:
    j = LabelJoiner(max_pending=3, max_age_s=None)
    for i in range(5):
        j.remember(_event(i), i, now=0.0)
    assert _counters(j) == (0, 0, 2, 3, 0)
    assert j.join(_label(0), now=0.0) is None
    assert j.join(_label(1), now=0.0) is None
    assert [j.join(_label(i), now=0.0) for i in (2, 3, 4)] == [(_event(i), i) for i in (2, 3, 4)]
    assert _counters(j) == (3, 0, 2, 0, 2)


def test_remembering_an_id_again_replaces_it_and_makes_it_youngest() -> None:
    j = LabelJoiner(max_pending=2, max_age_s=None)
    j.remember(_event(1), "old", now=0.0)
    j.remember(_event(2), "b", now=1.0)
    j.remember(_event(1), "new", now=2.0)  # no eviction: the id was already pending
    assert _counters(j) == (0, 0, 0, 2, 0)
    j.remember(_event(3), "c", now=3.0)  # evicts e2, now the oldest
    assert j.join(_label(2), now=3.0) is None
    assert j.join(_label(1), now=3.0) == (_event(1), "new")


def test_picklable_and_deterministic() -> None:
    j = LabelJoiner(max_pending=100, max_age_s=50.0)
    for i in range(150):
        j.remember(_event(i), i % 2 == 0, now=float(i))
    j.join(_label(120), now=150.0)
    copies = [pickle.loads(pickle.dumps(j)), copy.deepcopy(j)]

    def rest(joiner: LabelJoiner) -> list:
        out = [joiner.join(_label(i), now=160.0) for i in range(95, 150)]
        return [*out, _counters(joiner)]

    expected = rest(j)
    assert sum(r is not None for r in expected[:-1]) == 39  # 110..149 pending, e120 joined
    for clone in copies:
        assert rest(clone) == expected


def test_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        LabelJoiner(max_pending=0)
    with pytest.raises(ValueError, match="max_age_s"):
        LabelJoiner(max_age_s=0)


def test_doctests() -> None:
    result = doctest.testmod(labels, raise_on_error=False)
    assert result.attempted >= 4 and result.failed == 0


def test_pending_predictions_come_back_exactly_whether_packed_or_not():
    joiner = LabelJoiner(max_pending=100, max_age_s=None)
    cases = [
        (Event("a", "k", {"b": 0.1, "a": -0.0}, ts=1.5), (True, {False: 0.3, True: 0.7})),
        (Event("b", "k", {"b": 5e-324}), (None, {})),
        (Event("c", "k", {"n": 3, "s": "FR"}, ts=2.0), ("x", None)),  # not packed: kept
        (Event("d", "k", {}), (2.5, None)),
        (Event("e", "k", {"f": 1.0}), "any prediction"),
    ]
    for i, (event, prediction) in enumerate(cases):
        joiner.remember(event, prediction, now=float(i))
    joiner = pickle.loads(pickle.dumps(joiner))
    for event, prediction in reversed(cases):
        got_event, got_prediction = joiner.join(Label(event.id, "k", True), now=9.0)
        assert got_event == event and list(got_event.x) == list(event.x)
        assert [type(v) for v in got_event.x.values()] == [type(v) for v in event.x.values()]
        assert got_prediction == prediction
    assert joiner.join(Label("a", "k", True), now=9.0) is None  # joined once only: parked


def test_a_joiner_pickled_before_packing_restores():
    joiner = LabelJoiner()
    state = dict(vars(joiner))
    del state["_packer"], state["_key"]
    state["_pending"]["e1"] = (Event("e1", "k", {"f": 1.0}), True, 0.0)
    old = LabelJoiner.__new__(LabelJoiner)
    old.__setstate__(state)
    assert old.join(Label("e1", "k", False), now=1.0) == (Event("e1", "k", {"f": 1.0}), True)
    old.remember(Event("e2", "k", {"f": 2.0}), (True, None), now=2.0)
    assert old.join(Label("e2", "k", False), now=3.0) == (
        Event("e2", "k", {"f": 2.0}),
        (True, None),
    )
