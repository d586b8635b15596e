"""Kafka outages on a broker of the test's own: down at start, then restarted mid-stream.

The shared broker cannot be stopped under the other tests, so this test starts a second
one with the project's launcher on free loopback ports, and stops it by its own pid. What
must hold: the service waits with backoff while Kafka is away, survives a broker restart
in the middle of the stream, and ends with every event learned exactly once (the learners'
own counters, read back from the shutdown checkpoint) and every request predicted once.
While the broker is away longer than ``service.outage_grace_s``, ``/readyz`` says not ready
and why (``/healthz`` stays 200), and ready again soon after the broker is back; nothing
is logged at ERROR before the grace has passed, and afterwards only the one line that says
the outage outlasted it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from stream_learner.core.snapshot import load_signing_key
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.client import client_config
from stream_learner.kafka.health import PROBLEMS
from stream_learner.kafka.local import LocalBroker
from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan
from stream_learner.synth import Message
from tests.conftest import drain, free_port_pair
from tests.service.helpers import ServiceProcess, produce, wait_until, write_config

pytestmark = pytest.mark.kafka

KEYS = ("a", "b", "c", "d")


@pytest.fixture
def own_broker():
    broker = LocalBroker(port=free_port_pair())
    try:
        yield broker
    finally:
        broker.down(purge=True, grace=10)


def _messages(start: int, n: int) -> list[Message]:
    """Every fifth event is an unlabelled request; the rest are labelled."""
    out = []
    for i in range(start, start + n):
        key = KEYS[i % 4]
        x = {"u": float(i % 13), "v": float(i % 7)}
        body = {"id": f"e{i}", "key": key, "x": x}
        if i % 5:
            body["y"] = x["u"] > x["v"]
        out.append(Message("events", key, body))
    return out


GRACE_S = 4.0


def _lines(log: Path) -> list[dict]:
    lines = log.read_bytes().splitlines() if log.exists() else []
    return [orjson.loads(line) for line in lines if line.startswith(b"{")]


def _waits(log: Path) -> list[dict]:
    return [rec for rec in _lines(log) if rec.get("event") == "waiting_for_kafka"]


def _epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_service_waits_for_kafka_and_survives_a_broker_restart(own_broker, tmp_path):
    own_broker.up(timeout=120)
    bootstrap = own_broker.bootstrap
    prefix = "outage."
    admin = AdminClient(client_config(bootstrap))
    apply(admin, plan(load_topics(default_topics_file(), prefix=prefix), admin))
    own_broker.down(grace=30)

    # Down at start: the service waits, with a growing backoff, and says so.
    config = write_config(tmp_path, bootstrap, prefix, batch_size=200)
    config.write_text(
        config.read_text().replace("[service]\n", f"[service]\noutage_grace_s = {GRACE_S}\n")
    )
    log = tmp_path / "service.log"
    started: list = []
    opener = threading.Thread(target=lambda: started.append(ServiceProcess(config, log)))
    opener.start()
    wait_until(lambda: len(_waits(log)) >= 2, 60, "two waiting_for_kafka log lines")
    waits = _waits(log)
    assert waits[0]["bootstrap"] == bootstrap and waits[0]["attempt"] == 1
    assert waits[1]["retry_in_s"] > waits[0]["retry_in_s"]  # backoff, not a busy loop
    own_broker.up(timeout=120)
    opener.join(90)
    assert started, f"the service did not start once Kafka was back:\n{log.read_text()[-3000:]}"
    service = started[0]
    try:
        wait_until(service.ready, 90, "the service to be ready")
        first, second = _messages(0, 6000), _messages(6000, 6000)
        produce(bootstrap, prefix, first)
        wait_until(
            lambda: service.sample("stream_learner_events_total", outcome="learned") > 1000,
            60,
            "learning to start",
        )
        # Broker restart mid-run: the service keeps running while Kafka is away, and says
        # it is not ready once the outage outlasts the grace.
        stopping = time.time()
        own_broker.down(grace=30)
        assert service.proc.poll() is None, log.read_text()[-3000:]
        wait_until(lambda: service.probe()[0] == 503, 60, "/readyz to say not ready")
        status, body = service.probe()
        reason = orjson.loads(body)["reason"] if status == 503 else ""
        assert any(reason.startswith(what) for what in PROBLEMS.values()), body
        assert service.probe("/healthz")[0] == 200  # alive all the same
        assert service.sample("stream_learner_ready") == 0
        assert (
            max(
                service.sample("stream_learner_kafka_unavailable_seconds", what=what)
                for what in PROBLEMS
            )
            >= GRACE_S
        )
        wait_until(
            lambda: any(r.get("event") == "kafka_outage" for r in _lines(log)),
            30,
            "the outage's ERROR line",
        )
        own_broker.up(timeout=120)
        back = time.monotonic()
        wait_until(service.ready, 60, "/readyz to say ready again")
        back_s = time.monotonic() - back
        produce(bootstrap, prefix, second)
        requests = sum(1 for m in first + second if "y" not in m.value)
        wait_until(
            lambda: len(drain(bootstrap, prefix + "predictions")) >= requests,
            120,
            "every request's prediction",
        )
        wait_until(
            lambda: (
                service.sample("stream_learner_events_total", outcome="learned")
                + service.sample("stream_learner_events_total", outcome="predicted")
                >= 12_000
            ),
            120,
            "every event to be processed",
        )
        service.proc.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0, log.read_text()[-3000:]
    finally:
        service.kill()

    # No ERROR before the grace had passed, and then only the one line that says so (the
    # refused connections librdkafka reports in the meantime are WARNINGs).
    errors = [r for r in _lines(log) if r["level"] == "ERROR"]
    assert errors and {r["event"] for r in errors} == {"kafka_outage"}, errors
    assert all(_epoch(r["ts"]) - stopping >= GRACE_S for r in errors), errors
    assert any(r.get("event") == "kafka_recovered" for r in _lines(log))
    assert back_s < 30, f"ready {back_s:.1f} s after the broker was back"
    predictions = Counter(
        orjson.loads(m.value())["id"] for m in drain(bootstrap, prefix + "predictions")
    )
    assert len(predictions) == requests and max(predictions.values()) == 1
    # The learners' own counts, from the shutdown checkpoint: each event learned once.
    key = load_signing_key({}, value=(tmp_path / "snapshot.key").read_text())
    store = CheckpointStore(bootstrap, prefix + "checkpoints", signing_key=key)
    try:
        catalog = store.read()
        for k in KEYS:
            labelled = sum(1 for m in first + second if m.key == k and "y" in m.value)
            asked = sum(1 for m in first + second if m.key == k and "y" not in m.value)
            _, state = catalog.load(k)
            learner = state["learner"]
            assert (learner.learned, learner.predicted) == (labelled, asked)
            assert learner.evaluator.n == labelled
    finally:
        store.close()
