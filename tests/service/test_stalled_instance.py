"""A stalled instance that comes back, on the real broker: one of two instances is stopped
(SIGSTOP) in the middle of the stream for longer than the group session, the other takes
its partitions over, and then it is resumed (SIGCONT).

What must hold: after it resumed, the stale instance publishes no prediction of a request
the other already served, writes no snapshot before it is assigned partitions afresh;
every request is predicted; every labelled event is learned exactly once (the learners'
own counters, read back from the shutdown checkpoints).
"""

from __future__ import annotations

import signal
import time
from collections import Counter

import orjson
import pytest

from stream_learner.core.snapshot import load_signing_key
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.synth import Message
from tests.conftest import drain
from tests.service.helpers import ServiceProcess, produce, wait_until, write_config

pytestmark = pytest.mark.kafka

KEYS = [f"k{i}" for i in range(15)]  # co-prime with the request share: each key gets both
SESSION_MS = 6000  # the broker's minimum: the stop outlasts it quickly


def _messages(start: int, n: int, t0: float) -> list[Message]:
    """Every fourth event is an unlabelled request."""
    out = []
    for i in range(start, start + n):
        key = KEYS[i % len(KEYS)]
        x = {"u": float(i % 13), "v": float(i % 7)}
        body = {"id": f"e{i}", "key": key, "ts": t0 + i * 0.01, "x": x}
        if i % 4:
            body["y"] = x["u"] > x["v"]
        out.append(Message("events", key, body))
    return out


def _log_lines(path, start: int) -> list[dict]:
    out = []
    for line in path.read_bytes()[start:].splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out


def test_a_stalled_instance_publishes_nothing_stale_after_it_resumes(
    bootstrap, service_topics, prefix, tmp_path
):
    config = write_config(tmp_path, bootstrap, prefix, batch_size=500, every_events=1000)
    config.write_text(
        config.read_text()
        + f'\n[kafka.client]\n"session.timeout.ms" = {SESSION_MS}\n'
        + '"heartbeat.interval.ms" = 1000\n'
    )
    t0 = time.time() - 3600
    chunks = [(0, 16_000), (16_000, 4_000), (20_000, 4_000)]
    total = sum(n for _, n in chunks)
    stalled = ServiceProcess(config, tmp_path / "stalled.log")
    other = ServiceProcess(config, tmp_path / "other.log")
    try:
        wait_until(lambda: stalled.ready() and other.ready(), 90, "both instances ready")
        assert stalled.sample("stream_learner_assigned_partitions") == 6
        produce(bootstrap, prefix, _messages(*chunks[0], t0))
        # Stopped in the middle of its backlog: busy with a batch, more records fetched.
        wait_until(
            lambda: stalled.sample("stream_learner_events_total", outcome="learned") > 1500,
            60,
            "the stalled instance busy with its backlog",
        )
        stalled.proc.send_signal(signal.SIGSTOP)
        produce(bootstrap, prefix, _messages(*chunks[1], t0))
        # The other instance takes every partition once the stopped one's session expires,
        # and serves everything produced so far.
        wait_until(
            lambda: other.sample("stream_learner_assigned_partitions") == 12, 60, "the takeover"
        )
        requests = {f"e{i}" for i in range(sum(chunks[1])) if i % 4 == 0}
        wait_until(
            lambda: requests <= set(_ids(drain(bootstrap, service_topics.predictions))),
            120,
            "every request so far predicted by the other instance",
        )
        mark = Counter(m.partition() for m in drain(bootstrap, service_topics.predictions))
        resumed_at = stalled.log_path.stat().st_size
        stalled.proc.send_signal(signal.SIGCONT)

        def reassigned() -> bool:  # gave its state up, then was assigned afresh
            lines = [x.get("event") for x in _log_lines(stalled.log_path, resumed_at)]
            gave_up = [i for i, e in enumerate(lines) if e in ("fenced", "partitions_lost")]
            return bool(gave_up) and "assigned" in lines[gave_up[0] :]

        wait_until(reassigned, 90, "the stalled instance fenced and assigned afresh")
        wait_until(lambda: stalled.ready() and other.ready(), 90, "both ready again")
        produce(bootstrap, prefix, _messages(*chunks[2], t0))
        wait_until(
            lambda: (
                {f"e{i}" for i in range(total) if i % 4 == 0}
                <= set(_ids(drain(bootstrap, service_topics.predictions)))
            ),
            120,
            "every request predicted",
        )
        fenced = stalled.sample("stream_learner_fenced_total")
        for proc in (stalled, other):
            proc.proc.send_signal(signal.SIGTERM)
        assert stalled.wait(60) == 0 and other.wait(60) == 0
    finally:
        stalled.proc.send_signal(signal.SIGCONT)
        stalled.kill()
        other.kill()

    outputs = drain(bootstrap, service_topics.predictions)
    before = _ids(m for m in outputs if m.offset() < mark[m.partition()])
    after = _ids(m for m in outputs if m.offset() >= mark[m.partition()])
    stale = set(before) & set(after)
    assert not stale, f"{len(stale)} requests predicted again after the stalled one resumed"
    assert {f"e{i}" for i in range(total) if i % 4 == 0} == set(before) | set(after)
    assert fenced >= 1  # it noticed (the stop or the lost session) and gave its state up

    # After the resume, nothing was written from the stale state. Every checkpoint write
    # asks first whether the process stood still, so at most the one snapshot whose
    # records were already handed to the producer when the stop came completes (and is
    # never preferred over the new owner's: VersionInfo.recency); then the instance says it
    # gave its state up, and writes nothing until it is assigned partitions afresh.
    lines = [x.get("event") for x in _log_lines(stalled.log_path, resumed_at)]
    first = next(i for i, e in enumerate(lines) if e in ("fenced", "partitions_lost"))
    assigned = lines.index("assigned", first)
    assert lines[:first].count("checkpoint") <= 1, lines[:first]
    assert "checkpoint" not in lines[first:assigned], lines[first:assigned]

    key = load_signing_key(value=(tmp_path / "snapshot.key").read_text())
    store = CheckpointStore(bootstrap, service_topics.checkpoints, signing_key=key)
    try:
        catalog = store.read()
        learned = {k: catalog.load(k)[1]["learner"].learned for k in KEYS}
    finally:
        store.close()
    per_key = Counter(KEYS[i % len(KEYS)] for i in range(total) if i % 4)
    assert learned == dict(per_key)  # every labelled event learned exactly once


def _ids(messages) -> list[str]:
    return [orjson.loads(m.value())["id"] for m in messages]
