"""Kill tests on the real broker: SIGKILL at random moments loses nothing, learns nothing twice.

A seeded stream (4 keys over 4 partitions, an abrupt drift, prediction requests with
delayed labels) is learned twice: once by a service that is never interrupted, and once
by a service killed with SIGKILL at 10 random moments and restarted each time. Both end
with a clean shutdown, whose checkpoint round holds every key's final learner. The two
must agree exactly: the same predictions on a probe set, the same prequential metrics,
the same counts of events learned and predicted, the same decisions.
"""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict

import orjson
import pytest

from stream_learner.core.snapshot import load_signing_key
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan
from stream_learner.service import Topics
from stream_learner.synth import Message, demo_messages
from tests.conftest import drain
from tests.service.helpers import ServiceProcess, fingerprint, produce, wait_until, write_config

pytestmark = pytest.mark.kafka

KEYS = ("alpha", "beta", "gamma", "delta")
N = 6_000  # per key


def _stream(t0: float) -> list[Message]:
    out = []
    for i, key in enumerate(KEYS):
        out += demo_messages(
            N, change_at=N // 2, keys=(key,), unlabelled_share=0.1, label_delay=30,
            seed=11 + i, id_prefix=f"{key}-", t0=t0,
        )  # fmt: skip
    return out


def _final_learners(bootstrap: str, topics: Topics, key_file) -> dict:
    store = CheckpointStore(bootstrap, topics.checkpoints,
                            signing_key=load_signing_key(value=key_file.read_text()))  # fmt: skip
    try:
        catalog = store.read()
        return {key: catalog.load(key)[1]["learner"] for key in KEYS}
    finally:
        store.close()


def _run(tmp_path, bootstrap, prefix, admin, kills: int, rng: random.Random, t0) -> dict:
    spec = load_topics(default_topics_file(), prefix=prefix)
    apply(admin, plan(spec, admin))
    topics = Topics.from_prefix(prefix)
    config = write_config(tmp_path, bootstrap, prefix, every_events=700, batch_size=100)
    with config.open("a") as fh:  # static membership: a restarted instance rejoins at once
        fh.write('\n[kafka.client]\n"group.instance.id" = "crash-test"\n'
                 '"session.timeout.ms" = 6000\n')  # fmt: skip
    messages = _stream(t0)
    produce(bootstrap, prefix, messages)
    for k in range(kills):
        proc = ServiceProcess(config, tmp_path / f"run{k}.log")
        try:
            time.sleep(rng.uniform(0.3, 2.5))  # somewhere in restore, catch-up or learning
            proc.proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proc.kill()
    final = ServiceProcess(config, tmp_path / "final.log")
    try:
        # Ready means: partitions assigned, each read to its end, nothing left buffered.
        wait_until(final.ready, 180, "the service to consume every input")  # fmt: skip
        final.proc.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0, (tmp_path / "final.log").read_text()[-2000:]
    finally:
        final.kill()
    learners = _final_learners(bootstrap, topics, tmp_path / "snapshot.key")
    predictions = defaultdict(set)
    for m in drain(bootstrap, topics.predictions):
        body = orjson.loads(m.value())
        predictions[body["id"]].add((orjson.dumps(body["y_pred"]), body["model_version"]))
    requests = {m.value["id"] for m in messages if m.topic == "events" and "y" not in m.value}
    return {"learners": learners, "predictions": predictions, "requests": requests}


def test_sigkill_at_random_moments_equals_an_uninterrupted_run(
    bootstrap, admin, unique_name, tmp_path
):
    rng = random.Random(20261129)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    prefixes = [unique_name("calm") + ".", unique_name("killed") + "."]
    try:
        t0 = time.time() - 2 * N  # one event time for both runs, recent enough to be kept
        calm = _run(tmp_path / "a", bootstrap, prefixes[0], admin, 0, rng, t0)
        killed = _run(tmp_path / "b", bootstrap, prefixes[1], admin, 10, rng, t0)
    finally:
        for prefix in prefixes:
            mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
            if mine:
                admin.delete_topics(mine, operation_timeout=30)
    for key in KEYS:
        assert fingerprint(killed["learners"][key]) == fingerprint(calm["learners"][key]), key
    # Races ran for hundreds of inputs per key (candidates alive across checkpoints and,
    # likely, kills) and ended in promotions, leaving the retired model in the pool.
    for learner in calm["learners"].values():
        assert sum(learner.race_promotions.values()) >= 1 and learner.pool, learner.key
        assert killed["learners"][key].learned > 0.9 * N
    # Nothing lost: every request got a prediction. Outputs are at-least-once without
    # transactions: a copy re-emitted after a kill is identical to the first (same model).
    assert set(killed["predictions"]) == killed["requests"] == set(calm["predictions"])
    assert all(len(copies) == 1 for copies in killed["predictions"].values())
    assert killed["predictions"] == calm["predictions"]
