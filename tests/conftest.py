"""Shared fixtures: a live Kafka broker for the session and unique topics per test.

The broker is the one named by ``STREAM_LEARNER_BOOTSTRAP`` when set, else the
project's own local broker, started here if it is not running (and stopped at
the end of the session only if this session started it). No mocks of Kafka.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    from stream_learner.kafka.client import BOOTSTRAP_ENV, check_reachable

    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        check_reachable(external, timeout=15)
        yield external
        return
    from stream_learner.kafka.local import LocalBroker

    broker = LocalBroker()
    status, started = broker.up(timeout=120)
    try:
        yield status.bootstrap
    finally:
        if started:
            broker.down()


@pytest.fixture
def admin(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    from stream_learner.kafka.client import client_config

    return AdminClient(client_config(bootstrap))


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Names unique to this test run: ``unique_name("events")`` → ``t-<test>-<hex>-events``."""
    stem = request.node.name.replace("[", "-").replace("]", "")[:40]
    token = uuid.uuid4().hex[:8]

    def make(suffix: str = "") -> str:
        return f"t-{stem}-{token}-{suffix}".rstrip("-")

    return make


@pytest.fixture
def topic_factory(admin, unique_name) -> Iterator[Callable[..., str]]:
    """Create a fresh topic for this test; all are deleted afterwards."""
    from confluent_kafka.admin import NewTopic

    created: list[str] = []

    def make(suffix: str = "topic", partitions: int = 1, config: dict | None = None) -> str:
        name = unique_name(suffix)
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})]
        )
        futures[name].result(timeout=30)
        created.append(name)
        return name

    yield make
    if created:
        for future in admin.delete_topics(created, operation_timeout=30).values():
            # Best-effort cleanup: a failed delete must not mask the test's own result.
            with contextlib.suppress(Exception):
                future.result(timeout=30)


@pytest.fixture
def prefix(admin, unique_name) -> Iterator[str]:
    """A fresh topic namespace; every topic created under it is deleted afterwards."""
    value = unique_name().replace("_", "-") + "."
    yield value
    mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(value)]
    if mine:
        for future in admin.delete_topics(mine, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # cleanup must not mask the test's result
                future.result(timeout=30)


@pytest.fixture
def service_topics(admin, prefix):
    """Every topic of topics/topics.toml, created under this test's prefix."""
    from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan
    from stream_learner.service import Topics

    spec = load_topics(default_topics_file(), prefix=prefix)
    apply(admin, plan(spec, admin))
    return Topics.from_prefix(prefix)


def drain(bootstrap: str, topic: str, *, timeout: float = 30.0, committed: bool = False) -> list:
    """Every message of ``topic`` from the beginning to its current end (no consumer group);
    ``committed``: only what committed transactions wrote (isolation.level=read_committed)."""
    from confluent_kafka import Consumer, TopicPartition

    from stream_learner.kafka.client import client_config

    isolation = "read_committed" if committed else "read_uncommitted"
    consumer = Consumer(
        client_config(
            bootstrap,
            {"group.id": "drain", "enable.auto.commit": False, "isolation.level": isolation},
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        ends = {}
        for p in meta.partitions:
            # With read_committed the end is the last stable offset; transaction markers
            # occupy offsets too, so a partition is done when its position reaches the end.
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out, deadline = [], time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
            for p in list(ends):
                if consumer.position([TopicPartition(topic, p)])[0].offset >= ends[p]:
                    del ends[p]
        if ends:
            raise AssertionError(f"could not read {topic} to its end within {timeout}s")
        return out
    finally:
        consumer.close()


def free_port_pair() -> int:
    """A loopback port p with p and p + 1 free: a private broker's listener and controller
    (tests that stop and start a broker of their own, not the session's)."""
    import socket

    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port > 65000:
            continue
        with socket.socket() as b:
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports")


def free_port_range(count: int) -> int:
    """A loopback port p with p .. p + count - 1 all free: a private cluster's listeners and
    controllers (never the shared broker's 39092/39093)."""
    import random
    import socket

    for _ in range(200):
        base = random.randrange(20_000, 60_000 - count)
        if base <= 39093 and base + count > 39092:
            continue
        taken = False
        for port in range(base, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return base
    raise RuntimeError(f"no {count} consecutive free loopback ports")


@pytest.fixture
def local_cluster():
    """A private three-node cluster on free loopback ports, stopped and its data deleted
    afterwards (the jars are the shared cache's)."""
    from stream_learner.kafka.local import LocalCluster

    cluster = LocalCluster(3, base_port=free_port_range(6))
    try:
        cluster.up(timeout=180)
        yield cluster
    finally:
        cluster.down(purge=True, grace=15)
