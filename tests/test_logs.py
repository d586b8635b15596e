from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import orjson
import pytest

from stream_learner.errors import ConfigError
from stream_learner.logs import (
    MASK,
    JsonFormatter,
    RepeatFilter,
    configure_logging,
    is_secret_name,
    log_event,
    redact_config,
)

SECRETS = ("hunter2", "k3y-pass", "s3cr3t", "PRIVATE-PEM", "tok-123")

KAFKA_CONF = {
    "bootstrap.servers": "broker:9093",
    "security.protocol": "SASL_SSL",
    "sasl.username": "alice",
    "sasl.password": "hunter2",
    "ssl.key.password": "k3y-pass",
    "sasl.oauthbearer.client.secret": "s3cr3t",
    "ssl.key.pem": "PRIVATE-PEM",
    "ssl.key.location": "/etc/kafka/client.key",
}


@pytest.fixture
def out() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def logger(out: io.StringIO) -> Iterator[logging.Logger]:
    """A logger of its own writing JSON to ``out``, detached from the root."""
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("stream_learner.test_logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.removeHandler(handler)
    log.propagate = True
    log.setLevel(logging.NOTSET)


@pytest.fixture
def root_restored() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(out: io.StringIO) -> list[dict]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_log_event_writes_one_json_line(logger, out) -> None:
    log_event(logger, "partitions_assigned", topic="events", partitions=[0, 1], key="fraud")
    (line,) = lines(out)
    assert list(line)[:4] == ["ts", "level", "logger", "event"]
    assert line["level"] == "INFO"
    assert line["logger"] == "stream_learner.test_logs"
    assert line["event"] == "partitions_assigned"
    assert (line["topic"], line["partitions"], line["key"]) == ("events", [0, 1], "fraud")
    ts = datetime.fromisoformat(line["ts"])
    assert line["ts"].endswith("Z") and ts.utcoffset().total_seconds() == 0


def test_level_and_record_attribute_names_as_fields(logger, out) -> None:
    log_event(logger, "drift", level=logging.WARNING, name="adwin", module="perf", ts=1.5)
    (line,) = lines(out)
    assert line["level"] == "WARNING"
    assert (line["name"], line["module"]) == ("adwin", "perf")
    assert line["ts_"] == 1.5 and line["ts"] != 1.5  # a field never overwrites the line's keys


def test_unjsonable_values_become_strings(logger, out) -> None:
    class Spec:
        def __str__(self) -> str:
            return "Spec(lin)"

    log_event(logger, "odd", spec=Spec(), big=2**70, score=np.float64(0.25), tags={3: "x"})
    (line,) = lines(out)
    assert line["spec"] == "Spec(lin)"
    assert line["big"] == str(2**70)
    assert line["score"] == 0.25
    assert line["tags"] == {"3": "x"}


def test_plain_records_and_exceptions(logger, out) -> None:
    logger.info("lag is %d", 12, extra={"topic": "events"})
    try:
        raise ValueError("bad batch")
    except ValueError:
        logger.exception("batch_failed")
    plain, failed = lines(out)
    assert (plain["event"], plain["topic"]) == ("lag is 12", "events")
    assert failed["level"] == "ERROR"
    assert "ValueError: bad batch" in failed["exc"]
    assert len(out.getvalue().splitlines()) == 2  # the traceback stays inside its line


def test_message_arguments_render_as_logging_would(logger, out) -> None:
    logger.info("pair %s", (1, 2))
    (pair,) = lines(out)
    assert pair["event"] == "pair (1, 2)"
    # A broken format string keeps its line (built by hand: pytest's own handler would raise).
    bad = logging.LogRecord("x", logging.INFO, __file__, 1, "bad %d", ("x",), None)
    assert orjson.loads(JsonFormatter().format(bad))["event"] == "bad %d ('x',)"


def test_logged_kafka_config_never_shows_secrets(logger, out) -> None:
    log_event(logger, "consumer_config", config=KAFKA_CONF, key="fraud")
    logger.info("consumer config %s", KAFKA_CONF)
    logger.info(KAFKA_CONF)
    log_event(logger, "auth", token="tok-123", sasl_password="hunter2")
    text = out.getvalue()
    for secret in SECRETS:
        assert secret not in text
    first = lines(out)[0]
    assert first["key"] == "fraud"  # a model key is not a credential
    assert first["config"]["sasl.password"] == MASK
    assert first["config"]["sasl.username"] == "alice"
    assert first["config"]["ssl.key.location"] == "/etc/kafka/client.key"
    assert "alice" in lines(out)[1]["event"]


def test_redact_config_masks_at_any_depth_without_mutating() -> None:
    conf = {"outer": {"sasl.password": "hunter2", "list": [{"api_key": "tok-123"}]}, "x": 1}
    redacted = redact_config(conf)
    assert redacted == {"outer": {"sasl.password": MASK, "list": [{"api_key": MASK}]}, "x": 1}
    assert conf["outer"]["sasl.password"] == "hunter2"
    assert redact_config({"sasl.password": None}) == {"sasl.password": None}


@pytest.mark.parametrize(
    "name",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "sasl.oauthbearer.config",
        "access_token",
        "DB_PASSWORD",
        "api-key",
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["key", "model_key", "ssl.key.location", "sasl.username", "partition", "max_tokens"]
)
def test_names_that_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


def test_configure_logging_is_idempotent(root_restored, out) -> None:
    configure_logging("DEBUG", stream=out)
    configure_logging("INFO", stream=out)
    mine = [h for h in root_restored.handlers if h.get_name() == "stream_learner"]
    assert len(mine) == 1
    assert root_restored.level == logging.INFO
    log_event(logging.getLogger("stream_learner.x"), "once")
    logging.getLogger("stream_learner.x").debug("hidden at INFO")
    assert [line["event"] for line in lines(out)] == ["once"]


def test_text_mode_masks_secrets_too(root_restored, out) -> None:
    configure_logging("INFO", json=False, stream=out)
    log_event(logging.getLogger("stream_learner.x"), "config", config=KAFKA_CONF, key="fraud")
    text = out.getvalue()
    assert " INFO stream_learner.x config " in text
    assert "key='fraud'" in text
    for secret in SECRETS:
        assert secret not in text


def test_bad_level_is_a_config_error(root_restored) -> None:
    with pytest.raises(ConfigError, match="log level 'LOUD'.*DEBUG"):
        configure_logging("LOUD")


def test_repeated_free_text_is_counted_not_flooded(logger, out) -> None:
    now = [0.0]
    repeat = RepeatFilter(window_s=30, clock=lambda: now[0])
    logger.handlers[0].addFilter(repeat)
    try:
        for ms in range(50):  # librdkafka's connect failures differ only in numbers
            logger.error("Connect to 127.0.0.1:%d failed (after %dms)", 39092, ms)
        logger.error("another failure")
        for step in range(3):  # events are each worth a line, however alike
            log_event(logger, "checkpoint", key="k", step=step)
        now[0] = 31.0
        logger.error("Connect to 127.0.0.1:%d failed (after %dms)", 39092, 7)
    finally:
        logger.handlers[0].removeFilter(repeat)
    got = lines(out)
    assert [d["event"] for d in got] == [
        "Connect to 127.0.0.1:39092 failed (after 0ms)",
        "another failure",
        "checkpoint",
        "checkpoint",
        "checkpoint",
        "Connect to 127.0.0.1:39092 failed (after 7ms)",
    ]
    assert "suppressed" not in got[0] and got[-1]["suppressed"] == 49


def test_configure_logging_installs_the_repeat_filter(root_restored, out) -> None:
    handler = configure_logging("INFO", stream=out)
    log = logging.getLogger("stream_learner.librdkafka")
    for _ in range(5):
        log.warning("FAIL: Connection refused")
    handler.flush()
    assert len(lines(out)) == 1


def test_json_lines_pass_json_through_and_wrap_the_rest():
    from stream_learner.logs import JsonLines

    out = io.StringIO()
    stream = JsonLines(out, "stream_learner.stderr")
    stream.write('{"ts": "t", "level": "INFO", "event": "kept"}\nplain ')
    stream.write("text\n\n")
    stream.write("no newline yet")
    lines = out.getvalue().splitlines()
    assert orjson.loads(lines[0])["event"] == "kept"
    wrapped = orjson.loads(lines[1])
    assert (wrapped["level"], wrapped["logger"], wrapped["event"]) == (
        "WARNING",
        "stream_learner.stderr",
        "plain text",
    )
    assert len(lines) == 2
    stream.flush()
    assert orjson.loads(out.getvalue().splitlines()[2])["event"] == "no newline yet"


def test_a_process_with_json_stderr_writes_only_json(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, threading, warnings\n"
        "from stream_learner.logs import configure_logging, json_stderr\n"
        "configure_logging('INFO')\n"
        "json_stderr()\n"
        "warnings.warn('a python warning')\n"
        "print('a stray print', file=sys.stderr)\n"
        "t = threading.Thread(target=lambda: 1 / 0)\n"
        "t.start(); t.join()\n"
        "raise RuntimeError('the end')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = [orjson.loads(line) for line in result.stderr.splitlines()]  # each one JSON
    events = [line["event"] for line in lines]
    assert any("a python warning" in e for e in events)
    assert "a stray print" in events
    assert any("ZeroDivisionError" in line.get("exc", "") for line in lines)
    assert any("RuntimeError: the end" in line.get("exc", "") for line in lines)
