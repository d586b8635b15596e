from __future__ import annotations

from dataclasses import dataclass

from stream_learner.core.ordering import Merger


@dataclass(frozen=True)
class R:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


def test_labels_fetched_first_are_released_in_event_time_order():
    m = Merger(["ev", "lb", "ctl"])
    labels = [R("lb", 0, i, 100 + 10 * i) for i in range(3)]  # ts 100, 110, 120
    events = [R("ev", 0, i, 95 + 10 * i) for i in range(3)]  # ts 95, 105, 115
    m.push(labels)
    # The events partition is behind (not caught up) and empty: nothing may go yet.
    assert m.pop_ready(lambda tp: tp[0] != "ev") == []
    m.push(events)
    out = m.pop_ready(lambda tp: True)
    assert [(r.topic, r.timestamp_ms) for r in out] == [
        ("ev", 95),
        ("lb", 100),
        ("ev", 105),
        ("lb", 110),
        ("ev", 115),
        ("lb", 120),
    ]
    assert m.pending() == 0


def test_ties_go_events_first_and_idle_members_do_not_block():
    m = Merger(["ev", "lb", "ctl"])
    m.push([R("lb", 1, 0, 50), R("ev", 1, 0, 50), R("ctl", 1, 0, 50)])
    assert [r.topic for r in m.pop_ready(lambda tp: True)] == ["ev", "lb", "ctl"]
    m.push([R("ev", 1, 1, 60), R("ev", 1, 2, 70)])  # only events flow; others caught up
    assert [r.offset for r in m.pop_ready(lambda tp: True)] == [1, 2]


def test_waits_only_for_the_partition_that_is_behind():
    m = Merger(["ev", "lb"])
    m.push([R("ev", 0, 0, 10), R("ev", 1, 0, 10)])
    out = m.pop_ready(lambda tp: tp != ("lb", 0))  # labels of partition 0 are behind
    assert [(r.partition, r.offset) for r in out] == [(1, 0)]
    assert m.pending() == 1
    m.drop([("ev", 0)])
    assert m.pending() == 0


def test_memory_bound_forces_progress():
    m = Merger(["ev", "lb"], max_buffered=3)
    m.push([R("ev", 0, i, i) for i in range(5)])
    assert len(m.pop_ready(lambda tp: tp[0] == "ev")) == 5  # labels never catch up


def test_a_stall_is_waited_out_for_a_bounded_time_only():
    m = Merger(["ev", "lb"], max_idle_s=2.0)
    m.push([R("ev", 0, 0, 10)])
    assert m.pop_ready(lambda tp: tp[0] == "ev", now=100.0) == []
    assert m.pop_ready(lambda tp: tp[0] == "ev", now=101.0) == []
    assert len(m.pop_ready(lambda tp: tp[0] == "ev", now=102.0)) == 1


def test_progress_elsewhere_is_not_a_stall():
    m = Merger(["ev", "lb"], max_idle_s=2.0)
    m.push([R("lb", 0, 0, 10)])  # partition 0 waits for its events
    for t in range(10):  # meanwhile partition 1 keeps flowing for 10 s
        m.push([R("ev", 1, t, t)])
        out = m.pop_ready(lambda tp: tp != ("ev", 0), now=100.0 + t)
        assert [(r.partition, r.offset) for r in out] == [(1, t)]
    m.push([R("ev", 0, 0, 5)])
    assert [(r.topic, r.offset) for r in m.pop_ready(lambda tp: True, now=111.0)] == [
        ("ev", 0),
        ("lb", 0),
    ]
