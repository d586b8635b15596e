"""Scale-out on the real broker: a second instance takes keys over with their state."""

from __future__ import annotations

import signal
import time

import pytest

from stream_learner.core.snapshot import load_signing_key
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.synth import demo_messages
from tests.service.helpers import ServiceProcess, produce, wait_until, write_config

pytestmark = pytest.mark.kafka

KEYS = [f"k{i}" for i in range(32)]  # enough that every partition holds some
N = 500  # events per key, in two halves


def _half(t0: float, part: int) -> list:
    out = []
    for i, key in enumerate(KEYS):
        msgs = list(demo_messages(N, keys=(key,), seed=i, id_prefix=f"{key}-", t0=t0))
        out += msgs[: N // 2] if part == 0 else msgs[N // 2 :]
    return out


def test_a_second_instance_takes_keys_over_with_their_state(
    bootstrap, service_topics, prefix, tmp_path
):
    t0 = time.time() - 2 * N
    config = write_config(tmp_path, bootstrap, prefix)
    produce(bootstrap, prefix, _half(t0, 0))
    first = ServiceProcess(config, tmp_path / "first.log")
    second = None
    try:
        wait_until(first.ready, 90, "the first instance to learn the first half")
        assert first.sample("stream_learner_keys_active") == len(KEYS)
        second = ServiceProcess(config, tmp_path / "second.log")
        wait_until(lambda: second.ready() and first.ready(), 90, "the rebalance")
        moved = second.sample("stream_learner_checkpoints_total", result="restored")
        assert moved > 0  # the second instance restored keys, it did not start them afresh
        assert first.sample("stream_learner_keys_active") + moved == len(KEYS)
        produce(bootstrap, prefix, _half(t0, 1))
        wait_until(
            lambda: (
                first.sample("stream_learner_events_total", outcome="learned")
                + second.sample("stream_learner_events_total", outcome="learned")
                >= len(KEYS) * N
            ),
            90,
            "both halves learned",
        )
        for proc in (first, second):
            proc.proc.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0 and second.wait(60) == 0
    finally:
        first.kill()
        if second is not None:
            second.kill()
    key = load_signing_key(value=(tmp_path / "snapshot.key").read_text())
    store = CheckpointStore(bootstrap, service_topics.checkpoints, signing_key=key)
    try:
        catalog = store.read()
        learners = {k: catalog.load(k)[1]["learner"] for k in KEYS}
    finally:
        store.close()
    # Every key's learner saw every one of its events exactly once, across the move: its
    # metrics continued from the first half instead of restarting at zero.
    assert {k: lr.learned for k, lr in learners.items()} == {k: N for k in KEYS}
    assert all(lr.evaluator.n == N for lr in learners.values())
