"""A tampered snapshot on the real broker: refused, the previous one restored, counted."""

from __future__ import annotations

import time

import pytest

from stream_learner.cli.service_cmd import build_service
from stream_learner.config import load_config
from stream_learner.core.checkpoints import chunk_key
from stream_learner.kafka.sink import KafkaSink
from stream_learner.synth import demo_messages
from tests.conftest import drain
from tests.service.helpers import produce, run_in_thread, sample, wait_until, write_config

pytestmark = pytest.mark.kafka


def _run_until_ready(config, bootstrap):
    built = build_service(config, bootstrap, http_port=0)
    built.http.start()
    stop, thread, errors = run_in_thread(built.service)
    wait_until(lambda: built.service.readiness()[0], 60, "the service to catch up")
    return built, stop, thread, errors


def _stop(built, stop, thread) -> None:
    stop.set()
    thread.join(30)
    built.http.stop()


def test_a_tampered_snapshot_is_refused_and_the_previous_one_restored(
    bootstrap, service_topics, prefix, tmp_path
):
    import urllib.request

    # A drift in the second half: a promoted retrain makes snapshot B a newer model version.
    msgs = list(demo_messages(4000, change_at=2000, seed=5, t0=time.time() - 8000))
    config = load_config(write_config(tmp_path, bootstrap, prefix))
    produce(bootstrap, prefix, msgs[:1000])
    built, stop, thread, errors = _run_until_ready(config, bootstrap)
    _stop(built, stop, thread)  # shutdown round: snapshot A (version 1, 1000 events)
    produce(bootstrap, prefix, msgs[1000:])
    built, stop, thread, errors = _run_until_ready(config, bootstrap)
    _stop(built, stop, thread)  # snapshot B (version 2, 4000 events), the newest
    assert not errors
    assert built.service.store.read().versions("default")[-1].model_version == 2

    # Flip one payload byte of snapshot B's first chunk, as an attacker or a bad disk would.
    catalog = built.service.store.read()
    newest = max(catalog.versions("default"), key=lambda v: v.position)
    key = chunk_key("default", newest.slot, 0)
    record = [m for m in drain(bootstrap, service_topics.checkpoints) if m.key() == key.encode()][
        -1
    ]
    tampered = bytearray(record.value())
    tampered[-1] ^= 0x01
    sink = KafkaSink(bootstrap)
    sink.produce(service_topics.checkpoints, bytes(tampered), key=key)
    assert sink.close(30) == 0

    built, stop, thread, errors = _run_until_ready(config, bootstrap)
    try:
        learner = built.service.learners["default"]
        with urllib.request.urlopen(built.http.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        ready = built.service.readiness()[0]
    finally:
        _stop(built, stop, thread)
    assert not errors and ready  # the service kept running
    assert sample(text, "stream_learner_checkpoints_total", result="rejected") >= 1
    assert sample(text, "stream_learner_snapshot_rejections_total") >= 1
    assert sample(text, "stream_learner_checkpoints_total", result="restored") == 1
    # Snapshot A (version 1) was restored and the events after it were learned again,
    # retrain included: nothing lost, nothing learned twice.
    assert learner.learned == 4000 and learner.evaluator.n == 4000
    assert "bad_signature" in text or "checksum_mismatch" in text
