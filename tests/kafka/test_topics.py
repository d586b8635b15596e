"""Topics as code against the real broker, each test in its own ``--prefix`` namespace."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from stream_learner.cli import main
from stream_learner.errors import ConfigError
from stream_learner.kafka.topics import (
    ADD_PARTITIONS,
    ALTER,
    CREATE,
    WARNING,
    TopicsSpec,
    apply,
    describe,
    load_topics,
    plan,
)

TOPICS_FILE = Path(__file__).resolve().parents[2] / "topics" / "topics.toml"


@pytest.fixture
def spec(prefix) -> TopicsSpec:
    return load_topics(TOPICS_FILE, prefix=prefix)


def _entries(admin, topic: str) -> dict:
    from confluent_kafka.admin import ConfigResource, ResourceType

    resource = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(timeout=30)


def _live(admin, topic: str) -> dict[str, str]:
    return {name: entry.value for name, entry in _entries(admin, topic).items()}


def _partitions(admin, topic: str) -> int:
    return len(admin.list_topics(topic=topic, timeout=10).topics[topic].partitions)


def _alter_by_hand(admin, topic: str, **values: str | None) -> None:
    """Drift a topic the way a person with kafka-configs.sh would (None: delete the override)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    wanted = {name.replace("_", "."): value for name, value in values.items()}
    entries = [
        ConfigEntry(name, value, incremental_operation=op)
        for name, value in wanted.items()
        for op in [AlterConfigOpType.DELETE if value is None else AlterConfigOpType.SET]
    ]
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the broker shows the drift
        live = _entries(admin, topic)
        if all(
            live[name].is_default if value is None else live[name].value == value
            for name, value in wanted.items()
        ):
            return
        time.sleep(0.2)
    raise AssertionError(f"the broker never showed {wanted} on {topic}")


@pytest.mark.kafka
def test_apply_creates_every_declared_topic_then_changes_nothing(admin, spec):
    changes = plan(spec, admin)
    assert [(c.kind, c.topic) for c in changes] == [
        (CREATE, spec.prefix + t.name) for t in spec.topics
    ]
    assert apply(admin, changes) == changes

    present = admin.list_topics(timeout=10).topics
    for topic in spec.topics:
        name = spec.prefix + topic.name
        assert name in present
        assert len(present[name].partitions) == topic.partitions
        live = _live(admin, name)
        for key, value in topic.config.items():
            assert live[key] == value, (name, key)
        assert "min.insync.replicas" in live

    assert plan(spec, admin) == []
    assert apply(admin, plan(spec, admin)) == []


@pytest.mark.kafka
def test_checkpoint_topic_is_really_compacted(admin, spec):
    apply(admin, plan(spec, admin))
    live = _live(admin, spec.physical("checkpoints"))
    assert live["cleanup.policy"] == "compact"
    assert live["max.message.bytes"] == str(8 * 1024 * 1024)
    assert float(live["min.cleanable.dirty.ratio"]) == 0.1
    assert int(live["segment.ms"]) == 3_600_000
    # A topic that declares nothing about cleanup keeps the broker's default.
    assert _live(admin, spec.physical("events"))["cleanup.policy"] == "delete"


@pytest.mark.kafka
def test_configs_drifted_by_hand_are_reconciled(admin, spec):
    apply(admin, plan(spec, admin))
    events, checkpoints = spec.physical("events"), spec.physical("checkpoints")
    _alter_by_hand(admin, events, retention_ms="1000", segment_ms="123456789")
    _alter_by_hand(admin, checkpoints, cleanup_policy=None, segment_ms="86400000")
    assert _live(admin, checkpoints)["cleanup.policy"] == "delete"  # back to the default

    changes = plan(spec, admin)
    assert [(c.kind, c.topic) for c in changes] == [(ALTER, events), (ALTER, checkpoints)]
    assert changes[0].config == {"retention.ms": "-1"}  # undeclared segment.ms untouched
    assert changes[0].previous == {"retention.ms": "1000"}
    assert changes[1].config == {"cleanup.policy": "compact", "segment.ms": "3600000"}

    apply(admin, changes)
    assert _live(admin, events)["retention.ms"] == "-1"
    assert _live(admin, events)["segment.ms"] == "123456789"
    assert _live(admin, checkpoints)["cleanup.policy"] == "compact"
    assert _live(admin, checkpoints)["segment.ms"] == "3600000"
    assert plan(spec, admin) == []


@pytest.mark.kafka
def test_partitions_are_added_but_never_removed(admin, spec):
    apply(admin, plan(spec, admin))

    def with_partitions(n: int) -> TopicsSpec:
        topics = tuple(
            dataclasses.replace(t, partitions=n) if t.name in ("events", "labels") else t
            for t in spec.topics
        )
        return dataclasses.replace(spec, topics=topics)

    more = with_partitions(6)
    changes = plan(more, admin)
    assert [(c.kind, c.topic, c.current_partitions, c.partitions) for c in changes] == [
        (ADD_PARTITIONS, spec.physical("events"), 4, 6),
        (ADD_PARTITIONS, spec.physical("labels"), 4, 6),
    ]
    apply(admin, changes)
    assert _partitions(admin, spec.physical("events")) == 6
    assert _partitions(admin, spec.physical("labels")) == 6
    assert plan(more, admin) == []

    fewer = plan(spec, admin)  # the file says 4: the broker has 6
    assert [c.kind for c in fewer] == [WARNING, WARNING]
    assert "cannot remove partitions" in fewer[0].describe()
    assert apply(admin, fewer) == []
    assert _partitions(admin, spec.physical("events")) == 6


@pytest.mark.kafka
def test_a_config_the_broker_rejects_is_a_config_error_even_in_a_plan(admin, spec):
    broken = dataclasses.replace(
        spec,
        topics=tuple(
            dataclasses.replace(t, config={**t.config, "cleanup.polcy": "compact"})
            if t.name == "checkpoints"
            else t
            for t in spec.topics
        ),
    )
    with pytest.raises(ConfigError, match=r"topics\.checkpoints: .*cleanup\.polcy"):
        plan(broken, admin)
    assert not any(t.startswith(spec.prefix) for t in admin.list_topics(timeout=10).topics)


@pytest.mark.kafka
def test_replication_is_capped_at_the_brokers_and_min_isr_at_the_replicas(admin, spec):
    # The file asks for 3 replicas, 2 in sync; one broker can hold 1 and 1, and writes with
    # acks=all must keep working on it. Even an absurd declaration is capped, not refused.
    assert (spec.replication_factor, spec.min_insync_replicas) == (3, 2)
    brokers = len(admin.list_topics(timeout=10).brokers)
    changes = plan(dataclasses.replace(spec, replication_factor=1000), admin)
    creates = [c for c in changes if c.kind == CREATE]
    assert {c.replication_factor for c in creates} == {brokers}
    assert {c.config["min.insync.replicas"] for c in creates} == {str(min(2, brokers))}

    apply(admin, plan(spec, admin))
    for state in describe(spec, admin):
        assert state.replication_factor == min(3, brokers)
        live = _live(admin, state.topic)["min.insync.replicas"]
        assert live == str(min(2, brokers)), state.topic
    assert plan(spec, admin) == []  # capped values count as up to date


@pytest.mark.kafka
def test_event_time_topics_with_time_retention_are_a_warning(admin, spec):
    """A topic stamped with event times under retention.ms would lose an old backfill on
    arrival: declared, left to the broker's default or set live, `apply` says so."""

    def events_with(config: dict[str, str]) -> TopicsSpec:
        topics = tuple(
            dataclasses.replace(t, config=config) if t.name == "events" else t for t in spec.topics
        )
        return dataclasses.replace(spec, topics=topics)

    assert not [c for c in plan(spec, admin) if c.kind == WARNING]  # the shipped file: none
    hourly = events_with({"retention.ms": "3600000"})
    declared = [c for c in plan(hourly, admin) if c.kind == WARNING]
    assert [c.topic for c in declared] == [spec.physical("events")]
    assert "retention.ms=3600000 (declared, 1 hours)" in declared[0].describe()
    assert "set retention.ms = -1 and bound the topic by retention.bytes" in declared[0].note

    undeclared = events_with({})
    apply(admin, plan(undeclared, admin))
    warnings = [c for c in plan(undeclared, admin) if c.kind == WARNING]
    assert len(warnings) == 1 and "retention.ms=604800000 (live, 7 days)" in warnings[0].note
    # Not an event-time topic: its retention is its own business.
    labels_only = dataclasses.replace(
        undeclared,
        topics=tuple(
            dataclasses.replace(t, event_time=False) if t.name == "events" else t
            for t in undeclared.topics
        ),
    )
    assert not [c for c in plan(labels_only, admin) if c.kind == WARNING]


@pytest.mark.kafka
def test_describe_reports_missing_and_live_state(admin, spec):
    states = describe(spec, admin)
    assert [s.exists for s in states] == [False] * len(spec.topics)
    assert not any(s.up_to_date for s in states)

    apply(admin, plan(spec, admin))
    _alter_by_hand(admin, spec.physical("control"), retention_ms="5000")
    states = {s.spec.name: s for s in describe(spec, admin)}
    assert states["events"].partitions == 4 and states["events"].up_to_date
    assert states["control"].config_drift == {"retention.ms": "5000"}
    assert not states["control"].up_to_date


@pytest.mark.kafka
def test_cli_dry_run_apply_and_apply_again(admin, bootstrap, prefix, capsys):
    args = ["topics", "apply", "--prefix", prefix, "--bootstrap", bootstrap]

    assert main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(f"would create: {prefix}") for line in out) == 6
    assert out[-1] == "dry run, nothing changed: 6 to create"
    assert not any(t.startswith(prefix) for t in admin.list_topics(timeout=10).topics)

    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"created: {prefix}checkpoints: 1 partition, cleanup.policy=compact" in "\n".join(out)
    assert out[-1] == "6 created"

    _alter_by_hand(admin, prefix + "events", retention_ms="1000")
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"altered: {prefix}events: retention.ms 1000 -> -1", "1 altered"]

    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == ["no changes: 6 topics up to date"]


@pytest.mark.kafka
def test_cli_list_is_an_aligned_table(admin, bootstrap, prefix, capsys):
    args = ["topics", "list", "--prefix", prefix, "--bootstrap", bootstrap]
    assert main(args) == 0
    before = capsys.readouterr().out.splitlines()
    assert before[0].split() == ["TOPIC", "EXISTS", "PARTITIONS", "CONFIG", "DECLARED", "LIVE"]
    events = next(line for line in before if line.startswith(prefix + "events "))
    assert events.split() == [prefix + "events", "no", "-/4", "max.message.bytes", "8388608",
                              "-", "differs"]  # fmt: skip
    assert before[-1].startswith("6 of 6 topics differ from ")

    assert main(["topics", "apply", "--prefix", prefix, "--bootstrap", bootstrap]) == 0
    _alter_by_hand(admin, prefix + "checkpoints", segment_ms="60000")
    capsys.readouterr()
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    header, rows = out[0], out[1:-1]
    column = header.index("CONFIG")
    assert all(row[column - 2 : column] == "  " for row in rows)  # aligned columns
    assert all(row[column] != " " for row in rows)
    assert sum(line.split()[0] == prefix + "events" for line in rows) == 1
    start = next(i for i, row in enumerate(rows) if row.startswith(prefix + "checkpoints"))
    checkpoint = {row[column:].split()[0]: row[column:].split()[1:] for row in rows[start:][:7]}
    assert checkpoint["segment.ms"] == ["3600000", "60000", "differs"]
    assert checkpoint["min.insync.replicas"] == ["1", "1"]  # 2 declared, capped: 1 broker
    assert checkpoint["cleanup.policy"] == ["compact", "compact"]
    assert out[-1].startswith("1 of 6 topics differ from ")


def test_cli_wrong_bootstrap_is_one_line_and_exit_1(capsys):
    started = time.monotonic()
    code = main(["topics", "apply", "--prefix", "never.", "--bootstrap", "127.0.0.1:1"])
    elapsed = time.monotonic() - started
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("stream-learner: error: no Kafka broker is listening at 127.0.0.1:1")
    print(f"wrong bootstrap reported in {elapsed:.2f}s")  # measured, not asserted
