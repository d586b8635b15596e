"""Problems with Kafka: ridden out within the grace, not ready and one ERROR past it."""

from __future__ import annotations

import logging

from stream_learner.kafka.client import client_config
from stream_learner.kafka.health import KafkaHealth


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _events(caplog, level=logging.WARNING) -> list[tuple[str, str]]:
    return [(r.levelname, r.event) for r in caplog.records if getattr(r, "event", None)
            and r.levelno >= level]  # fmt: skip


def test_a_problem_is_ridden_out_within_the_grace_and_reported_past_it(caplog):
    clock = Clock()
    health = KafkaHealth(10.0, clock=clock)
    caplog.set_level(logging.INFO, logger="stream_learner.kafka")
    assert health.check() == (True, "")
    health.problem("delivery", "40 output message(s) waiting")
    clock.now += 9.9
    health.problem("delivery", "41 output message(s) waiting")  # the same problem, still
    assert health.check() == (True, "")
    assert _events(caplog) == [("WARNING", "kafka_unavailable")]  # no ERROR yet
    clock.now += 0.2
    ready, reason = health.check()
    assert not ready
    assert reason == "outputs cannot be delivered for 10 s: 41 output message(s) waiting"
    health.escalate()  # once per problem
    assert _events(caplog, logging.ERROR) == [("ERROR", "kafka_outage")]
    assert health.ages()["delivery"] > 10 and health.ages()["brokers"] == 0
    health.resolved("delivery")
    assert health.check() == (True, "")
    assert _events(caplog)[-1] == ("WARNING", "kafka_recovered")


def test_a_short_problem_ends_with_an_info_line_only(caplog):
    clock = Clock()
    health = KafkaHealth(10.0, clock=clock)
    caplog.set_level(logging.INFO, logger="stream_learner.kafka")
    health.problem("brokers", "all 1 broker down")
    clock.now += 3
    health.resolved("brokers")
    health.resolved("brokers")  # nothing to say twice
    assert [(r.levelname, r.event) for r in caplog.records] == [
        ("WARNING", "kafka_unavailable"),
        ("INFO", "kafka_recovered"),
    ]


def test_librdkafkas_refused_connections_are_warnings_its_other_errors_stay(caplog):
    logger = client_config("127.0.0.1:1")["logger"]
    caplog.set_level(logging.INFO, logger=logger.name)
    refused = "127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    logger.error("%s [%s] %s", "FAIL", "rdkafka#consumer-1", refused)
    logger.error("%s [%s] %s", "SASL", "rdkafka#consumer-1", "SASL authentication failed")
    assert [r.levelname for r in caplog.records] == ["WARNING", "ERROR"]


def test_the_consumers_statistics_say_whether_any_broker_of_the_cluster_is_up():
    """The bootstrap entry and the logical coordinator handle are not brokers; statistics
    handed over late (the loop waited for deliveries) say nothing about now."""
    import time

    import orjson

    from stream_learner.kafka.source import KafkaSource

    health = KafkaHealth(10.0)
    source = KafkaSource("127.0.0.1:1", "g", ["t"], health=health)  # never started

    def stats(state: str, age_s: float = 0.0) -> str:
        brokers = {
            "127.0.0.1:1/bootstrap": {"nodeid": -1, "source": "configured", "state": "UP"},
            "GroupCoordinator": {"nodeid": -1, "source": "logical", "state": "UP"},
            "127.0.0.1:1/1": {"nodeid": 1, "source": "learned", "state": state},
        }
        return orjson.dumps({"time": int(time.time() - age_s), "brokers": brokers}).decode()

    source._on_stats(stats("TRY_CONNECT"))
    assert health.ages()["brokers"] >= 0 and "brokers" in health._since
    assert health._detail["brokers"] == "all 1 broker down"
    source._on_stats(stats("UP", age_s=30))  # old news: still down
    assert "brokers" in health._since
    source._on_stats(stats("UP"))
    assert "brokers" not in health._since
