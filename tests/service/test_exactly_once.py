"""Exactly-once outputs with Kafka transactions, proven with SIGKILL on the real broker."""

from __future__ import annotations

import signal
import time
from collections import Counter

import orjson
import pytest

from stream_learner.synth import Message
from tests.conftest import drain
from tests.service.helpers import ServiceProcess, produce, wait_until, write_config

pytestmark = pytest.mark.kafka


def test_sigkill_mid_stream_with_transactions_emits_every_prediction_exactly_once(
    bootstrap, service_topics, prefix, tmp_path
):
    n = 60_000
    keys = ("a", "b", "c", "d")
    t0 = time.time() - n
    produce(
        bootstrap,
        prefix,
        (
            Message(
                "events",
                keys[i % 4],
                {
                    "id": f"r{i}",
                    "key": keys[i % 4],
                    "ts": t0 + i,
                    "x": {"u": float(i % 13), "v": float(i % 5)},
                },
            )
            for i in range(n)
        ),
    )
    config = write_config(tmp_path, bootstrap, prefix, batch_size=200)
    text = config.read_text().replace("[service]\n", "[service]\nexactly_once = true\n", 1)
    # Static membership: the restarted instance has the same transactional id and aborts
    # the killed one's open transaction when it starts.
    text += '\n[kafka.client]\n"group.instance.id" = "eos-test"\n"session.timeout.ms" = 6000\n'
    config.write_text(text)

    def committed() -> int:
        return len(drain(bootstrap, service_topics.predictions, committed=True))

    first = ServiceProcess(config, tmp_path / "first.log")
    try:
        # The service's own counter is cheap to poll, so the kill lands early in the stream.
        wait_until(
            lambda: first.sample("stream_learner_events_total", outcome="predicted") > 3000,
            90,
            "the first predictions",
        )
        first.proc.send_signal(signal.SIGKILL)  # mid-stream, possibly mid-transaction
        first.wait(30)
    finally:
        first.kill()
    assert committed() < n, "the kill did not land mid-stream"
    second = ServiceProcess(config, tmp_path / "second.log")
    try:
        wait_until(second.ready, 120, "the rest of the stream")
        wait_until(lambda: committed() >= n, 60, "every prediction to be committed")
        second.proc.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        second.kill()
    seen = Counter(
        orjson.loads(m.value())["id"]
        for m in drain(bootstrap, service_topics.predictions, committed=True)
    )
    assert len(seen) == n and max(seen.values()) == 1  # every request once, none twice
