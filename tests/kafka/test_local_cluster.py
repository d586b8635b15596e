"""The local three-node cluster, run for real on free ports (never the shared broker's)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream_learner.cli import main
from stream_learner.kafka.client import check_reachable, client_config
from stream_learner.kafka.local import LocalCluster
from stream_learner.kafka.sink import KafkaSink
from stream_learner.kafka.topics import apply, default_topics_file, describe, load_topics, plan
from tests.conftest import free_port_range

pytestmark = pytest.mark.kafka


def _read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    consumer = Consumer(client_config(bootstrap, {"group.id": "t", "enable.auto.commit": False}))
    try:
        ends = {}
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out = []
        while ends:
            msg = consumer.poll(10)
            assert msg is not None, f"{topic} not read to its end"
            if msg.error():
                continue
            out.append(msg.value())
            if msg.offset() >= ends[msg.partition()] - 1:
                del ends[msg.partition()]
        return out
    finally:
        consumer.close()


def test_kafka_up_nodes_3_status_topics_and_down(capsys):
    base = free_port_range(6)
    cluster = LocalCluster(3, base_port=base)
    args = ["--nodes", "3", "--port", str(base)]
    try:
        assert main(["kafka", "up", *args]) == 0
        out = capsys.readouterr().out
        bootstrap = ",".join(f"127.0.0.1:{base + 2 * i}" for i in range(3))
        assert f"kafka cluster of 3 nodes started: bootstrap {bootstrap}" in out
        pids = [s.pid for s in cluster.status()]
        assert all(pid is not None and Path(f"/proc/{pid}").exists() for pid in pids)
        assert len(set(pids)) == 3
        assert check_reachable(bootstrap, timeout=10) == 3  # one cluster, three brokers

        assert main(["kafka", "up", *args]) == 0
        assert "already up" in capsys.readouterr().out
        assert [s.pid for s in cluster.status()] == pids  # no second set of processes

        assert main(["kafka", "status", *args]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"kafka cluster {bootstrap}: 3 of 3 nodes up"
        for i in range(3):
            assert out[1 + i].startswith(f"  node {i + 1}: up: 127.0.0.1:{base + 2 * i} (pid ")

        # The project's topics on a cluster: replication 3, two in sync for every write.
        admin = AdminClient(client_config(bootstrap))
        spec = load_topics(default_topics_file(), prefix="rf.")
        apply(admin, plan(spec, admin))
        for state in describe(spec, admin):
            assert state.replication_factor == 3, state.topic
            assert state.live_config["min.insync.replicas"] == "2", state.topic
        assert plan(spec, admin) == []

        # acks=all with one node gone: two replicas are still in sync, writes go on.
        topic = spec.physical("events")
        sink = KafkaSink(bootstrap)
        for i in range(100):
            sink.produce(topic, b"before-%d" % i, key=str(i))
        assert sink.flush(30) == 0
        os.kill(pids[2], signal.SIGKILL)
        for i in range(100):
            sink.produce(topic, b"after-%d" % i, key=str(i))
        assert sink.close(60) == 0
        got = _read_all(bootstrap, topic, spec.topic("events").partitions)
        assert sorted(got) == sorted([b"before-%d" % i for i in range(100)] +
                                     [b"after-%d" % i for i in range(100)])  # fmt: skip

        assert main(["kafka", "status", *args]) == 3  # one node is down: not healthy
        out = capsys.readouterr().out.splitlines()
        assert out[0].endswith("2 of 3 nodes up")
        assert out[3] == f"  node 3: down: nothing running for 127.0.0.1:{base + 4}"
    finally:
        assert main(["kafka", "down", *args, "--purge"]) == 0
    out = capsys.readouterr().out
    assert "kafka cluster stopped: 2 of 3 nodes were running" in out
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert main(["kafka", "status", *args]) == 3
    assert "0 of 3 nodes up" in capsys.readouterr().out
    assert not cluster.dir.exists()


def test_bad_node_count_or_port_is_one_line(capsys):
    assert main(["kafka", "up", "--nodes", "12"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "stream-learner: config error: --nodes 12: must be 1 (one broker) or 2 to 9 (a cluster)"
    ]
    assert main(["kafka", "status", "--nodes", "3", "--port", "80"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "stream-learner: config error: --port 80: must be between 1024 and 65534"
    ]
