"""The topics file and the message schemas, without a broker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest

from stream_learner.cli import main
from stream_learner.errors import ConfigError
from stream_learner.kafka.topics import DEFAULT_PREFIX, default_topics_file, load_topics

ROOT = Path(__file__).resolve().parents[1]
TOPICS_FILE = ROOT / "topics" / "topics.toml"
SCHEMAS = ROOT / "topics" / "schemas"
EXPECTED = {"events", "labels", "predictions", "checkpoints", "dead-letters", "control"}


@pytest.fixture(scope="module")
def spec():
    return load_topics(TOPICS_FILE)


def _validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{kind}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


# --------------------------------------------------------------------------- the real file


def test_the_repository_file_is_the_default_and_declares_every_topic(spec):
    assert default_topics_file() == TOPICS_FILE
    assert {topic.name for topic in spec.topics} == EXPECTED
    assert spec.prefix == DEFAULT_PREFIX == "stream-learner."
    assert spec.physical("events") == "stream-learner.events"
    assert spec.physical("dead-letters") == "stream-learner.dead-letters"


def test_labels_are_copartitioned_with_events(spec):
    assert spec.topic("labels").copartitioned_with == "events"
    assert spec.topic("labels").partitions == spec.topic("events").partitions > 1


def test_checkpoints_are_compacted_and_hold_big_snapshots(spec):
    config = spec.topic("checkpoints").config
    assert config["cleanup.policy"] == "compact"
    assert int(config["max.message.bytes"]) == 8 * 1024 * 1024
    assert 0 < float(config["min.cleanable.dirty.ratio"]) < 0.5
    # The active segment is never compacted: it must roll soon and hold a snapshot.
    assert int(config["segment.ms"]) <= 24 * 3600 * 1000
    assert int(config["max.message.bytes"]) <= int(config["segment.bytes"]) <= 256 * 1024**2


def test_retention_and_partitions_fit_each_topic(spec):
    # Inputs stamped with event times are kept by size, never by time (a backfill's old
    # timestamps would make it deletable on arrival); the rest by time.
    event_time = {t.name for t in spec.topics if t.event_time}
    assert event_time == {"events", "labels"}
    for name in event_time:
        config = spec.topic(name).config
        assert int(config["retention.ms"]) == -1
        assert int(config["segment.bytes"]) < int(config["retention.bytes"])
    retention = {
        t.name: int(t.config["retention.ms"])
        for t in spec.topics
        if t.name != "checkpoints" and not t.event_time
    }
    assert retention["dead-letters"] > max(v for k, v in retention.items() if k != "dead-letters")
    # A key's events, labels and commands meet on one partition number, so one instance.
    for name in ("labels", "control"):
        assert spec.topic(name).partitions == spec.topic("events").partitions
        assert spec.topic(name).copartitioned_with == "events"
    # Three copies, two of them in sync for every write: capped at the brokers there are.
    assert (spec.replication_factor, spec.min_insync_replicas) == (3, 2)
    assert (spec.replication_for(1), spec.replication_for(3), spec.replication_for(5)) == (1, 3, 3)
    events = spec.topic("events")
    assert spec.effective_config(events, 1)["min.insync.replicas"] == "1"
    assert spec.effective_config(events, 3)["min.insync.replicas"] == "2"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_topic_has_a_valid_json_schema(spec, name):
    path = spec.schema_path(name)
    assert path.is_file()
    schema = json.loads(path.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema.get("description")
    examples = schema["examples"]
    assert examples
    for example in examples:  # the documentation's own examples must hold
        jsonschema.Draft202012Validator(schema).validate(example)


def test_the_dead_letter_schema_says_it_describes_headers():
    schema = json.loads((SCHEMAS / "dead-letter.schema.json").read_text())
    assert "HEADERS" in schema["description"] and "original" in schema["description"]


MESSAGES = [
    ("event", {"id": "1", "x": {"a": 1.5, "b": "red", "c": True}}, True),
    ("event", {"id": "1", "key": "m", "ts": 1.7e9, "x": {}, "y": 0}, True),
    ("event", {"id": "1", "ts": "2024-06-10T08:00:00.123+02:00", "x": {"a": 1}, "y": "cat"}, True),
    ("event", {"id": "1", "ts": "2024-06-10", "x": {"a": 1}, "y": None}, True),
    ("event", {"x": {"a": 1}}, False),  # no id
    ("event", {"id": "1"}, False),  # no x
    ("event", {"id": 1, "x": {}}, False),  # id not a string
    ("event", {"id": "1", "x": {"a": [1, 2]}}, False),  # feature not a scalar
    ("event", {"id": "1", "key": None, "x": {"a": None}}, True),  # null: default key, missing
    ("event", {"id": "1", "key": "k" * 129, "x": {}}, False),
    ("event", {"id": "1", "key": "", "x": {}}, False),
    ("event", {"id": "1", "x": {}, "ts": "yesterday"}, False),
    ("event", {"id": "1", "x": {}, "y": {"class": 1}}, False),
    ("label", {"id": "1", "y": True}, True),
    ("label", {"id": "1", "y": 3.5, "key": "m", "ts": 1718000000}, True),
    ("label", {"id": "1"}, False),  # no y
    ("label", {"id": "1", "y": None}, False),  # a label must say something
    ("label", {"y": 1}, False),
    ("prediction", {"id": "1", "key": "m", "y_pred": None, "model_version": 0,
                    "lineage": "l", "ts": 1.0}, True),
    ("prediction", {"id": "1", "key": "m", "y_pred": "a", "proba": {"a": 0.7, "b": 0.3},
                    "model_version": 2, "lineage": "l", "ts": "2024-01-01T00:00:00Z"}, True),
    ("prediction", {"id": "1", "key": "m", "y_pred": 1, "lineage": "l", "ts": 1.0}, False),
    ("prediction", {"id": "1", "key": "m", "y_pred": 1, "model_version": -1,
                    "lineage": "l", "ts": 1.0}, False),
    ("prediction", {"id": "1", "key": "m", "y_pred": "a", "proba": {"a": 1.2},
                    "model_version": 1, "lineage": "l", "ts": 1.0}, False),
    ("control", {"command": "retrain"}, True),
    ("control", {"command": "rollback", "key": "m", "version": 3, "reason": "bad deploy",
                 "requested_by": "bob", "ts": 1.0}, True),
    ("control", {"command": "explode"}, False),
    ("control", {"command": "rollback", "verison": 3}, False),  # typo is not ignored
    ("control", {"command": "rollback", "key": "m"}, False),  # no version
    ("control", {"command": "rollback", "key": "m", "version": 4, "staged": True}, True),
    ("control", {"command": "retrain", "ts": "2024-01-01T00:00:00Z"}, False),
    ("control", {"key": "m"}, False),
    ("dead-letter", {"dlq.reason": "not_json", "dlq.detail": "x", "dlq.source.topic": "t",
                     "dlq.source.partition": "0", "dlq.source.offset": "12",
                     "dlq.timestamp": "1718000000000", "traceparent": "00-ab"}, True),
    ("dead-letter", {"dlq.reason": "not_json", "dlq.detail": "x", "dlq.source.topic": "t",
                     "dlq.source.partition": 0, "dlq.source.offset": "12",
                     "dlq.timestamp": "1"}, False),  # header values are strings
    ("dead-letter", {"dlq.reason": "Not JSON", "dlq.detail": "x", "dlq.source.topic": "t",
                     "dlq.source.partition": "0", "dlq.source.offset": "12",
                     "dlq.timestamp": "1"}, False),
    ("dead-letter", {"dlq.detail": "x"}, False),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "message", "valid"), MESSAGES)
def test_messages_validate_as_expected(kind, message, valid):
    errors = list(_validator(kind).iter_errors(message))
    assert (not errors) == valid, [e.message for e in errors]


def _checkpoint(**changes):
    header = {
        "format_version": 1,
        "key": "m",
        "lineage": "l",
        "model_version": 0,
        "created": 1718000000.0,
        "trigger": "interval",
        "metrics": {"accuracy": 0.9},
        "offsets": {"stream-learner.events": {"0": 10, "3": 0}},
        "codec": "pickle+zlib",
        "payload_size": 100,
        "sha256": "0" * 64,
        "signature": None,
        "chunk_index": 0,
        "chunk_count": 1,
    }
    header.update(changes)
    return {k: v for k, v in header.items() if v is not ...}


@pytest.mark.parametrize(
    ("changes", "valid"),
    [
        ({}, True),
        ({"decision": "promoted", "signature": "ab12"}, True),
        ({"sha256": "XYZ"}, False),
        ({"offsets": {"stream-learner.events": {"p0": 10}}}, False),
        ({"offsets": {"stream-learner.events": {"0": -1}}}, False),
        ({"chunk_count": 0}, False),
        ({"format_version": 0}, False),
        ({"codec": ...}, False),
        ({"metrics": {"accuracy": "high"}}, False),
    ],
)
def test_checkpoint_headers_validate_as_expected(changes, valid):
    errors = list(_validator("checkpoint").iter_errors(_checkpoint(**changes)))
    assert (not errors) == valid, [e.message for e in errors]


# --------------------------------------------------------------------------- loader errors

GOOD = """
prefix = "p."

[topics.events]
message = "event"
partitions = 4

[topics.events.config]
"retention.ms" = 1000

[topics.labels]
message = "label"
partitions = 4
copartitioned_with = "events"
"""


def _write(tmp_path: Path, text: str) -> Path:
    if not (tmp_path / "schemas").exists():
        shutil.copytree(SCHEMAS, tmp_path / "schemas")
    path = tmp_path / "topics.toml"
    path.write_text(text)
    return path


def test_a_small_good_file_loads(tmp_path):
    spec = load_topics(_write(tmp_path, GOOD))
    assert [t.name for t in spec.topics] == ["events", "labels"]
    assert spec.topic("events").config == {"retention.ms": "1000"}
    assert spec.physical("labels") == "p.labels"
    assert spec.schema_path("labels") == tmp_path / "schemas" / "label.schema.json"


def test_prefix_override_and_config_value_types(tmp_path):
    text = GOOD.replace(
        '"retention.ms" = 1000',
        '"retention.ms" = 1_000\n"preallocate" = true\n'
        '"min.cleanable.dirty.ratio" = 0.25\n"cleanup.policy" = "delete"',
    )
    spec = load_topics(_write(tmp_path, text), prefix="tenant-a.")
    assert spec.physical("events") == "tenant-a.events"
    assert spec.topic("events").config == {
        "retention.ms": "1000",
        "preallocate": "true",
        "min.cleanable.dirty.ratio": "0.25",
        "cleanup.policy": "delete",
    }
    assert load_topics(_write(tmp_path, GOOD), prefix="").physical("events") == "events"


BAD = [
    ("partitions = 4", "partitions = 0",
     "topics.events.partitions: must be a positive integer, got 0"),
    ("partitions = 4", 'partitions = "4"',
     "topics.events.partitions: must be a positive integer, got '4'"),
    ("partitions = 4", "partitions = true",
     "topics.events.partitions: must be a positive integer, got True"),
    ("partitions = 4", "partitions = 4.0",
     "topics.events.partitions: must be a positive integer, got 4.0"),
    ("partitions = 4", "partitons = 4",
     "topics.events.partitons: unknown key (allowed: message, partitions, "),
    ('prefix = "p."', 'prefx = "p."', "prefx: unknown key (allowed: prefix, "),
    ('prefix = "p."', 'prefix = "a b."', "prefix: 'a b.' may use only"),
    ('prefix = "p."', "prefix = 3", "prefix: must be a string"),
    ('prefix = "p."', "replication_factor = 0", "replication_factor: must be a positive integer"),
    ('prefix = "p."', "min_insync_replicas = -1",
     "min_insync_replicas: must be a positive integer, got -1"),
    ('prefix = "p."', "replication_factor = 2\nmin_insync_replicas = 3",
     "min_insync_replicas: 3 is more than replication_factor 2"),
    ("partitions = 4\ncopartitioned_with", "partitions = 4\nevent_time = 1\ncopartitioned_with",
     "topics.labels.event_time: must be true or false, got 1"),
    ('message = "event"', 'message = "evnt"', "topics.events.message: no schema "),
    ('"retention.ms" = 1000', '"retention.ms" = [1000]',
     "topics.events.config.retention.ms: must be a string, number or boolean, got list"),
    ("partitions = 4\ncopartitioned_with", "partitions = 2\ncopartitioned_with",
     "topics.labels.partitions: must equal topics.events.partitions (4)"),
    ('copartitioned_with = "events"', 'copartitioned_with = "event"',
     "topics.labels.copartitioned_with: 'event' is not another declared topic "
     "(choose from: events)"),
    ('copartitioned_with = "events"', 'copartitioned_with = "labels"',
     "topics.labels.copartitioned_with: 'labels' is not another declared topic"),
    ('[topics.events.config]\n"retention.ms" = 1000', "",
     None),  # config is optional: this replacement alone is harmless
    ('[topics.events.config]\n"retention.ms" = 1000', '[topics.labels.config]\n"segment MS" = 1',
     "topics.labels.config.segment MS: not a Kafka config name"),
    ('copartitioned_with = "events"', 'copartitioned_with = "events"\nconfig = 5',
     "topics.labels.config: must be a table"),
    ('[topics.events]\nmessage = "event"\n', "[topics.events]\n", "topics.events.message: missing"),
    ("[topics.events]", "[topics.\"bad name\"]", "topics.bad name: topic names may use only"),
    ('prefix = "p."', 'prefix = "' + "p" * 244 + '"', "is longer than 249"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "message"), BAD)
def test_loader_errors_name_the_key_path(tmp_path, old, new, message):
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    if message is None:  # the change is harmless: proves the replacement itself is valid
        load_topics(path)
        return
    with pytest.raises(ConfigError) as exc:
        load_topics(path)
    assert str(exc.value).startswith(f"{path}: ")
    assert message in str(exc.value)


def test_a_file_without_topics_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="topics: must be a table with at least one"):
        load_topics(_write(tmp_path, 'prefix = "p."\n'))


def test_bad_toml_names_the_file_and_line(tmp_path):
    path = _write(tmp_path, GOOD + "\n[topics.events\n")
    with pytest.raises(ConfigError, match=r"topics.toml: not valid TOML: .*line 16"):
        load_topics(path)


def test_missing_file_and_bad_prefix_override(tmp_path):
    with pytest.raises(ConfigError, match="topics file not found: .*nope.toml"):
        load_topics(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="--prefix: 'x/y' may use only"):
        load_topics(_write(tmp_path, GOOD), prefix="x/y")


def test_cli_config_errors_exit_2_with_one_line_before_any_network(tmp_path, capsys):
    # The bootstrap is unreachable on purpose: config is checked first.
    code = main(["topics", "apply", "--file", str(tmp_path / "nope.toml"), "--bootstrap", "x:1"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stream-learner: config error: topics file not")

    bad = _write(tmp_path, GOOD.replace("partitions = 4", "partitions = -4", 1))
    assert main(["topics", "list", "--file", str(bad), "--bootstrap", "x:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "topics.events.partitions: must be a positive integer" in err[0]


def test_the_control_schema_and_the_command_decoder_agree():
    """Whatever the code sends validates, and every documented example decodes."""
    from stream_learner.core.commands import Command, decode_command
    from stream_learner.errors import DecodeError

    validator = _validator("control")
    sent = [
        Command("retrain", key="m", reason="r", requested_by="cli", ts=1.5),
        Command("rollback", key="m", version=3, reason="adopt", requested_by="cli", staged=True),
        Command("pause"),
    ]
    for cmd in sent:
        validator.validate(json.loads(cmd.to_json()))
    for example in json.loads((SCHEMAS / "control.schema.json").read_text())["examples"]:
        decode_command(json.dumps(example).encode())
    for kind, message, valid in MESSAGES:
        if kind == "control":
            try:
                decode_command(json.dumps(message).encode())
                decoded = True
            except DecodeError:
                decoded = False
            assert decoded == valid, message
