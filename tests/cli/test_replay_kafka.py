"""``stream-learner replay --from-kafka``: a range of the input topics, read as the service
reads it (``stream_learner.kafka.history``), on the real broker; and its argument errors."""

from __future__ import annotations

import orjson
import pytest
from confluent_kafka import Producer

from stream_learner.cli import main
from stream_learner.core.commands import Command
from stream_learner.core.events import Event, Label
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.retrain import RetrainConfig
from stream_learner.errors import ConfigError
from stream_learner.kafka.client import client_config
from stream_learner.kafka.history import parse_bound, read_kafka_history
from stream_learner.kafka.sink import KafkaSink
from stream_learner.replay import resolve_policy
from tests.service.helpers import write_config

T0 = 1_700_000_000.0
RANK = {"events": 0, "labels": 1, "control": 2}


def test_bounds_parse_offsets_times_and_defaults():
    assert parse_bound(None).offsets == {} and parse_bound(None).time_ms is None
    assert parse_bound("earliest", "--start").time_ms is None
    assert parse_bound("end", "--end").offsets == {}
    bound = parse_bound("0:100,1:0,labels:0:7,control:1:2")
    assert bound.offsets == {("events", 0): 100, ("events", 1): 0, ("labels", 0): 7,
                             ("control", 1): 2}  # fmt: skip
    assert parse_bound("2023-11-14T22:13:20Z").time_ms == int(T0 * 1000)
    assert parse_bound("2023-11-14T22:13:20").time_ms == int(T0 * 1000)  # no zone: UTC
    assert parse_bound("2023-11-14T23:13:20+01:00").time_ms == int(T0 * 1000)
    assert parse_bound(str(int(T0 * 1000))).time_ms == int(T0 * 1000)
    for text, message in [
        ("100", r"epoch milliseconds; for an offset write PARTITION:OFFSET \(e\.g\. 0:100\)"),
        ("yesterday", "expected 'earliest'"),
        ("0:1,0:2", "events:0 is given twice"),
        ("0:1,predictions:0:2", "expected 'earliest'"),
        ("0:-1", "expected 'earliest'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_bound(text, "--start")


def test_policy_config_is_the_configs_own_policy_and_retrain():
    own, retrain = PolicyConfig(warmup=7, cooldown_events=3), RetrainConfig(margin=0.05)
    named = resolve_policy("config", retrain, config=own)
    assert (named.name, named.policy, named.retrain) == ("config", own, retrain)
    with pytest.raises(ConfigError, match="--policy config: no config policy"):
        resolve_policy("config")


def _event(i: int, key: str, labelled: bool) -> dict:
    body = {"id": f"{key}{i}", "key": key, "ts": T0 + i, "x": {"a": float(i)}}
    if labelled:
        body["y"] = i % 2 == 0
    return body


@pytest.fixture
def stream(bootstrap, service_topics):
    """Partition 0 (key a): 10 events, every third one a request, its label 2.5 s later
    (produced before all events, so offsets alone would put labels first), and records
    the service dead-letters; partition 1 (key b): 5 labelled events; partition 2 (key c):
    transactions, one of them aborted, so the last offset is a commit marker."""
    sink = KafkaSink(bootstrap)
    t = service_topics
    produced: list[tuple[str, dict]] = []
    for i in range(10):
        if i % 3 == 0:
            label = {"id": f"a{i}", "key": "a", "y": True, "ts": T0 + i + 2.5}
            produced.append(("labels", label))
            sink.produce(t.labels, orjson.dumps(label), key="a", partition=0,
                         timestamp_ms=int(label["ts"] * 1000))  # fmt: skip
    for i in range(10):
        body = _event(i, "a", i % 3 != 0)
        produced.append(("events", body))
        sink.produce(t.events, orjson.dumps(body), key="a", partition=0,
                     timestamp_ms=int(body["ts"] * 1000))  # fmt: skip
    at = int((T0 + 4.2) * 1000)
    sink.produce(t.events, None, key="a", partition=0, timestamp_ms=at)  # a tombstone
    sink.produce(t.labels, b'{"id": "a1"}', key="a", partition=0, timestamp_ms=at)  # no y
    sink.produce(t.control, Command("retrain", key="a").to_json(), key="a", partition=0,
                 timestamp_ms=at)  # fmt: skip
    produced.append(("control", {"command": "retrain", "key": "a", "ts": T0 + 4.2}))
    sink.produce(
        t.control, Command("snapshot", key="a").to_json(), key="a", partition=0, timestamp_ms=at
    )  # fmt: skip  (counted, not replayed: it changes nothing)
    for i in range(5):
        body = _event(i, "b", True)
        produced.append(("events", body))
        sink.produce(t.events, orjson.dumps(body), key="b", partition=1,
                     timestamp_ms=int(body["ts"] * 1000))  # fmt: skip
    assert sink.close(30) == 0
    producer = Producer(client_config(bootstrap, {"transactional.id": t.events + "-test"}))
    producer.init_transactions(30)
    for i, commit in [(0, True), (1, False), (2, True)]:
        producer.begin_transaction()
        body = _event(i, "c", True)
        producer.produce(t.events, orjson.dumps(body), key="c", partition=2,
                         timestamp=int(body["ts"] * 1000))  # fmt: skip
        producer.flush(30)  # in the log, even when aborted
        if commit:
            producer.commit_transaction(30)
            produced.append(("events", body))
        else:
            producer.abort_transaction(30)
    return produced


def _expected(produced, key: str, start: float = float("-inf"), end: float = float("inf")):
    """The service's order: event time, then events, labels, control on a tie; within
    [start, end). The retrain command is in it (replayed), the snapshot command is not."""
    chosen = [(topic, body) for topic, body in produced if body["key"] == key]
    chosen = [(topic, b) for topic, b in chosen if start <= b["ts"] < end]
    chosen.sort(key=lambda tb: (tb[1]["ts"], RANK[tb[0]]))
    return [
        Event(b["id"], key, b["x"], b.get("y"), b["ts"])
        if topic == "events"
        else Label(b["id"], key, b["y"], b["ts"])
        if topic == "labels"
        else Command(b["command"], key=key)
        for topic, b in chosen
    ]


def _topics(t) -> dict[str, str]:
    return {"events": t.events, "labels": t.labels, "control": t.control}


def _of(items, key: str) -> list:
    return [item for item in items if item.key == key]


@pytest.mark.kafka
def test_the_whole_log_in_event_time_order_without_what_the_service_dead_letters(
    bootstrap, service_topics, stream
):
    read = read_kafka_history(bootstrap, _topics(service_topics), task="binary")
    for key in "abc":
        assert _of(read.items, key) == _expected(stream, key), key
    assert len(read.items) == len(stream)
    assert dict(read.skipped) == {"not_json": 1, "missing_y": 1}
    assert dict(read.commands) == {"retrain": 1, "snapshot": 1}
    # Committed records only: the aborted event and the transaction markers are not read,
    # and the read ends although the last offsets are markers.
    assert read.ranges[service_topics.events, 2] == (0, 6)
    assert [item.id for item in _of(read.items, "c")] == ["c0", "c2"]


@pytest.mark.kafka
def test_offsets_cut_labels_at_the_same_event_time_and_name_the_partitions(
    bootstrap, service_topics, stream
):
    start, end = parse_bound("0:3"), parse_bound("0:8")
    read = read_kafka_history(bootstrap, _topics(service_topics), start, end)
    # Only partition 0; its events 3..7, and its labels from event 3's time to event 8's.
    assert {p for _, p in read.ranges} == {0}
    assert read.items == _expected(stream, "a", T0 + 3, T0 + 8)
    assert read.ranges[service_topics.events, 0] == (3, 8)
    # An explicit labels offset wins over the cut.
    read = read_kafka_history(bootstrap, _topics(service_topics), parse_bound("0:3,labels:0:0"),
                              end)  # fmt: skip
    assert [i for i in read.items if type(i) is Label] == [
        i for i in _expected(stream, "a", end=T0 + 8) if type(i) is Label
    ]


@pytest.mark.kafka
def test_times_select_the_same_window_in_every_partition(bootstrap, service_topics, stream):
    start = parse_bound(str(int((T0 + 2) * 1000)))
    end = parse_bound("2023-11-14T22:13:26Z")  # T0 + 6
    read = read_kafka_history(bootstrap, _topics(service_topics), start, end)
    # (Not key c: its transaction markers carry the wall-clock time of their commit, years
    # after these event times, so the broker's time index points at the first marker.)
    for key in "ab":
        assert _of(read.items, key) == _expected(stream, key, T0 + 2, T0 + 6), key


def _exit_code(argv: list[str]) -> int:
    """``main``'s code; argparse's own errors leave through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.kafka
def test_cli_arguments_that_do_not_fit_are_one_line_and_a_non_zero_exit(
    bootstrap, service_topics, prefix, stream, tmp_path, capsys
):
    config = str(write_config(tmp_path, bootstrap, prefix))
    base = ["replay", "--config", config, "--policy", "config"]
    cases = [
        (["--from-kafka", "--start", "0:99"], 2, "out of range; " + service_topics.events),
        (["--from-kafka", "--end", "1:6"], 2, "holds offsets 0 to 4 (its end is 5)"),
        (["--from-kafka", "--start", "9:0"], 2, "partition 9 of " + service_topics.events),
        (["--from-kafka", "--start", "0:5", "--end", "0:2"], 2, "is after --end 0:2"),
        (["--from-kafka", "--start", "tomorrow"], 2, "--start 'tomorrow': expected"),
        (["--from-kafka", "--start", "2024-05-02", "--end", "2024-05-01"], 2, "is after --end"),
        (["--from-kafka", "--bootstrap", "127.0.0.1:1"], 1, "no Kafka broker is listening"),
        (["--input", "h.jsonl", "--start", "0:1"], 2, "--start: only with --from-kafka"),
        (["--input", "h.jsonl", "--from-kafka"], 2, "not allowed with argument"),
        ([], 2, "one of the arguments --input --from-kafka is required"),
        (["--from-kafka", "--policy", "sometimes"], 2, "data-drift, config, or a .toml"),
    ]
    for extra, code, message in cases:
        assert _exit_code([*base, *extra]) == code, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
        assert "Traceback" not in err
    other = str(write_config(tmp_path, bootstrap, prefix + "nothing."))
    assert main(["replay", "--config", other, "--policy", "config", "--from-kafka"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"topic {prefix}nothing.events does not exist" in err


@pytest.mark.kafka
def test_cli_replays_a_range_and_says_what_it_left_out(
    bootstrap, service_topics, prefix, stream, tmp_path, capsys
):
    config = str(write_config(tmp_path, bootstrap, prefix))
    argv = ["replay", "--config", config, "--policy", "config", "--policy", "never", "--json"]
    assert main([*argv, "--from-kafka", "--start", "0:0"]) == 0
    out = capsys.readouterr()
    body = orjson.loads(out.out)
    assert [r["policy"] for r in body] == ["config", "never"]
    assert body[0]["inputs"] == len(_expected(stream, "a"))
    assert out.err.count("\n") == 1
    assert "partitions 0:" in out.err
    assert "2 skipped as the service dead-letters them (not_json 1, missing_y 1)" in out.err
    assert "1 command not replayed (snapshot 1)" in out.err


@pytest.mark.kafka
def test_a_start_deleted_by_retention_is_said_on_stderr_and_the_replay_reads_from_the_log_start(
    bootstrap, admin, service_topics, prefix, stream, tmp_path, capsys
):
    from confluent_kafka import TopicPartition

    from stream_learner.core.restore import Gap

    events = service_topics.events
    for f in admin.delete_records([TopicPartition(events, 1, 3)]).values():
        f.result(timeout=30)  # b0..b2 deleted, as retention does
    read = read_kafka_history(bootstrap, _topics(service_topics), parse_bound("1:1"))
    assert read.lost == [Gap(events, 1, 1, 3)]
    assert read.ranges[events, 1] == (3, 5)
    assert [item.id for item in read.items] == ["b3", "b4"]
    config = str(write_config(tmp_path, bootstrap, prefix))
    argv = ["replay", "--config", config, "--policy", "config", "--json", "--from-kafka"]
    assert main([*argv, "--start", "1:1"]) == 0
    out = capsys.readouterr()
    assert orjson.loads(out.out)[0]["inputs"] == 2
    lost = [line for line in out.err.splitlines() if "input lost" in line]
    assert lost == [
        f"replay: input lost: {events}[1] offsets 1 to 2 (2 records) were deleted by "
        "retention; reading from the log start 3"
    ]
    assert "Traceback" not in out.err
