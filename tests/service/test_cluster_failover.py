"""Broker failover in a three-node cluster: the leader of the checkpoint topic and of
events partitions is SIGKILLed mid-stream while the service runs.

The cluster is the project's own (`kafka up --nodes 3` layout) on free loopback ports,
with the project's topics at replication 3 / min.insync.replicas 2. What must hold: the
service keeps running through the leader elections, every prediction request is
predicted (none lost), every labelled event is learned exactly once (the learners' own
counters, read back from the shutdown checkpoint), and with `exactly_once = true` the
committed predictions hold each request exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import orjson
import pytest
from confluent_kafka.admin import AdminClient

from stream_learner.core.snapshot import load_signing_key
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.client import client_config
from stream_learner.kafka.topics import apply, default_topics_file, describe, load_topics, plan
from stream_learner.synth import Message
from tests.conftest import drain
from tests.service.helpers import ServiceProcess, produce, wait_until, write_config

pytestmark = pytest.mark.kafka

KEYS = ("a", "b", "c", "d")
N = 20_000


def _messages(start: int, n: int, t0: float) -> list[Message]:
    """Every fifth event is an unlabelled request; the rest are labelled."""
    out = []
    for i in range(start, start + n):
        key = KEYS[i % 4]
        x = {"u": float(i % 13), "v": float(i % 7)}
        body = {"id": f"e{i}", "key": key, "ts": t0 + i * 0.01, "x": x}
        if i % 5:
            body["y"] = x["u"] > x["v"]
        out.append(Message("events", key, body))
    return out


def _leaders(admin: AdminClient, topic: str) -> dict[int, int]:
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    return {p: part.leader for p, part in meta.partitions.items()}


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_leader_broker_sigkill_mid_stream_loses_nothing(local_cluster, tmp_path, exactly_once):
    bootstrap = local_cluster.bootstrap
    prefix = "failover."
    admin = AdminClient(client_config(bootstrap))
    spec = load_topics(default_topics_file(), prefix=prefix)
    apply(admin, plan(spec, admin))
    assert {s.replication_factor for s in describe(spec, admin)} == {3}

    config = write_config(tmp_path, bootstrap, prefix, batch_size=200, every_events=2000)
    text = config.read_text()
    if exactly_once:
        text = text.replace("[service]\n", "[service]\nexactly_once = true\n", 1)
    # Static membership, as the README advises for exactly-once, with the default session
    # timeout (45 s): it must outlast the cluster's failure detection (6 s here), or the
    # member is fenced by its own rejoin when the group coordinator moves, a fatal error.
    text += '\n[kafka.client]\n"group.instance.id" = "failover"\n'
    config.write_text(text)

    t0 = time.time() - 3600
    first, second = _messages(0, N // 2, t0), _messages(N // 2, N // 2, t0)
    produce(bootstrap, prefix, first)
    service = ServiceProcess(config, tmp_path / "service.log")
    try:
        wait_until(
            lambda: service.sample("stream_learner_events_total", outcome="learned") > 2000,
            120,
            "learning to start",
        )
        # The broker leading the checkpoint topic; with 4 events partitions over 3 brokers
        # it leads at least one of those too.
        victim = _leaders(admin, spec.physical("checkpoints"))[0]
        led = [p for p, leader in _leaders(admin, spec.physical("events")).items()
               if leader == victim]  # fmt: skip
        assert led, "the checkpoint leader leads no events partition"
        os.kill(local_cluster.node(victim).status().pid, signal.SIGKILL)
        killed_at = service.sample("stream_learner_events_total", outcome="learned")
        produce(bootstrap, prefix, second)  # producers fail over as well (acks=all)
        assert service.proc.poll() is None, (tmp_path / "service.log").read_text()[-3000:]
        wait_until(
            lambda: victim not in _leaders(admin, spec.physical("events")).values(),
            60,
            "new leaders for the killed broker's partitions",
        )
        requests = sum(1 for m in first + second if "y" not in m.value)
        labelled = len(first) + len(second) - requests
        wait_until(
            lambda: (
                service.sample("stream_learner_events_total", outcome="learned") >= labelled
                and service.sample("stream_learner_events_total", outcome="predicted") >= requests
            ),
            120,
            "every event to be processed",
        )
        assert killed_at < labelled, "the kill did not land mid-stream"
        service.proc.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0, (tmp_path / "service.log").read_text()[-3000:]
    finally:
        service.kill()

    predictions = drain(bootstrap, prefix + "predictions", committed=exactly_once)
    seen = Counter(orjson.loads(m.value())["id"] for m in predictions)
    expected = {m.value["id"] for m in first + second if "y" not in m.value}
    assert set(seen) == expected  # every request predicted: zero lost
    if exactly_once:
        assert max(seen.values()) == 1  # and none twice among committed predictions
    else:
        # At-least-once: a re-emitted prediction is byte-identical to the first.
        by_id: dict[str, set[bytes]] = {}
        for m in predictions:
            by_id.setdefault(orjson.loads(m.value())["id"], set()).add(m.value())
        assert all(len(values) == 1 for values in by_id.values())
    # The learners' own counts, from the shutdown checkpoint: each event learned once.
    key = load_signing_key({}, value=(tmp_path / "snapshot.key").read_text())
    store = CheckpointStore(bootstrap, prefix + "checkpoints", signing_key=key)
    try:
        catalog = store.read()
        for k in KEYS:
            mine = [m for m in first + second if m.key == k]
            _, state = catalog.load(k)
            learner = state["learner"]
            assert learner.learned == sum(1 for m in mine if "y" in m.value), k
            assert learner.predicted == sum(1 for m in mine if "y" not in m.value), k
    finally:
        store.close()
