"""A key budget on the real broker: evictions mid-stream change nothing a user can see.

Eight keys on four partitions, their events interleaved in event time, with prediction
requests whose labels come 40 inputs later (so a key is evicted, with its parked
predictions, before most of its labels arrive). The same stream is learned three times:
without a budget, under a budget of three resident keys (``service.max_keys``) with a
cache smaller than one key's state (reloads from the cache and from the local file behind
it, none from the topic), both stopped and restarted once halfway (a restart restores
every key from the checkpoint topic, and what it evicts to keep the budget is read back
from the local file), and under the budget killed with SIGKILL at random moments and
restarted each time. Every request is predicted once, delayed labels of evicted keys are
joined, and the final learners (decision logs, metrics, predictions on a probe set) are
the same in the three runs; the budgeted run counts what the unbudgeted one counts.
"""

from __future__ import annotations

import random
import signal
import time
from collections import defaultdict

import orjson
import pytest

from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan
from stream_learner.service import Topics
from stream_learner.synth import Message, demo_messages
from tests.conftest import drain
from tests.service.helpers import (
    ServiceProcess,
    fingerprint,
    produce,
    sample,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.kafka

KEYS = tuple(f"k{i}" for i in range(8))
N = 400  # per key


def _stream(t0: float) -> list[Message]:
    out = []
    for i, key in enumerate(KEYS):
        out += demo_messages(
            N, change_at=N // 2, keys=(key,), unlabelled_share=0.2, label_delay=40,
            seed=31 + i, id_prefix=f"{key}-", t0=t0,
        )  # fmt: skip
    # Interleaved in event time, so each partition's log alternates between its keys.
    out.sort(key=lambda m: (m.value["ts"], m.value.get("key", ""), m.topic))
    return out


# Counters a budget must leave as they are (the budget's own and timings aside).
COUNTERS = (
    ("stream_learner_events_total", {"outcome": "learned"}),
    ("stream_learner_events_total", {"outcome": "predicted"}),
    ("stream_learner_labels_total", {"result": "joined"}),
    ("stream_learner_labels_total", {"result": "unmatched"}),
    ("stream_learner_trigger_decisions_total", {}),
    ("stream_learner_drift_detections_total", {}),
)


def _run(tmp_path, bootstrap, prefix, admin, messages, kills, rng, monkeypatch, budget) -> dict:
    spec = load_topics(default_topics_file(), prefix=prefix)
    apply(admin, plan(spec, admin))
    topics = Topics.from_prefix(prefix)
    config = write_config(tmp_path, bootstrap, prefix, every_events=500, batch_size=100)
    with config.open("a") as fh:  # static membership: a restarted instance rejoins at once
        fh.write(f'\n[kafka.client]\n"group.instance.id" = "budget-{prefix}"\n'
                 '"session.timeout.ms" = 6000\n')  # fmt: skip
    monkeypatch.setenv("STREAM_LEARNER__SERVICE__MAX_KEYS", str(budget))
    # A cache smaller than one key's state (~11 KB here): a key evicted and needed again
    # within a batch comes from the cache, one whose entry the batch's end trimmed comes
    # from the local file. A short retrain window keeps each eviction's pickling small.
    monkeypatch.setenv("STREAM_LEARNER__SERVICE__EVICTED_CACHE_MB", "0.005")
    monkeypatch.setenv("STREAM_LEARNER__RETRAIN__WINDOW", "300")
    monkeypatch.setenv("STREAM_LEARNER__RETRAIN__HOLDOUT", "50")
    monkeypatch.setenv("STREAM_LEARNER__RETRAIN__MIN_TRAIN", "100")
    # Scheduled retrains: decisions and retrains in flight (a key with one stays resident,
    # so its result is due 20 of its inputs after the retrain starts: most keys have none
    # in flight at the restart, and are evicted as it restores them).
    monkeypatch.setenv("STREAM_LEARNER__SERVICE__RETRAIN_APPLY_AFTER", "20")
    monkeypatch.setenv("STREAM_LEARNER__POLICY__WARMUP", "100")
    monkeypatch.setenv("STREAM_LEARNER__POLICY__COOLDOWN_EVENTS", "100")
    monkeypatch.setenv("STREAM_LEARNER__POLICY__INTERVAL_EVENTS", "150")
    texts = []  # the metrics of each process that stopped by itself
    if not kills:  # stopped halfway, once the first half is read, and started again
        half = len(messages) // 2
        produce(bootstrap, prefix, messages[:half])
        first = ServiceProcess(config, tmp_path / "first.log")
        try:
            wait_until(first.ready, 240, "the service to consume the first half")
            texts.append(first.metrics())
            first.proc.send_signal(signal.SIGTERM)
            assert first.wait(60) == 0, (tmp_path / "first.log").read_text()[-2000:]
        finally:
            first.kill()
        messages = messages[half:]
    produce(bootstrap, prefix, messages)
    for k in range(kills):
        proc = ServiceProcess(config, tmp_path / f"run{k}.log")
        try:
            # Killed once keys were evicted, or (a process that restarted late in the
            # stream) once it read all of it.
            wait_until(
                lambda p=proc: p.sample("stream_learner_key_evictions_total") > 50 or p.ready(),
                60,
                "keys evicted",
            )
            time.sleep(rng.uniform(0.0, 1.5))
            proc.proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            proc.kill()
    final = ServiceProcess(config, tmp_path / "final.log")
    try:
        wait_until(final.ready, 240, "the service to consume every input")
        text = final.metrics()
        texts.append(text)
        final.proc.send_signal(signal.SIGTERM)
        assert final.wait(60) == 0, (tmp_path / "final.log").read_text()[-2000:]
    finally:
        final.kill()
    from stream_learner.core.snapshot import load_signing_key
    from stream_learner.kafka.checkpoints import CheckpointStore

    key = load_signing_key(value=(tmp_path / "snapshot.key").read_text())
    store = CheckpointStore(bootstrap, topics.checkpoints, signing_key=key)
    try:
        catalog = store.read()
        learners = {k: catalog.load(k)[1]["learner"] for k in KEYS}
        triggers = {catalog.versions(k)[-1].trigger for k in KEYS}
    finally:
        store.close()
    predictions = defaultdict(set)
    for m in drain(bootstrap, topics.predictions):
        body = orjson.loads(m.value())
        predictions[body["id"]].add((orjson.dumps(body["y_pred"]), body["model_version"]))
    counters = {}  # over the processes that stopped by themselves
    for name, labels in COUNTERS:
        values = [v for v in (sample(t, name, **labels) for t in texts) if v == v]  # NaN: none
        counters[name, tuple(labels.items())] = sum(values) if values else None
    return {
        "learners": learners,
        "predictions": predictions,
        "counters": counters,
        "metrics": text,
        "triggers": triggers,
    }


def test_a_budget_forcing_evictions_changes_nothing_even_through_sigkills(
    bootstrap, admin, unique_name, tmp_path, monkeypatch
):
    rng = random.Random(20261206)
    t0 = time.time() - 2 * N
    messages = _stream(t0)
    requests = {m.value["id"] for m in messages if m.topic == "events" and "y" not in m.value}
    names = ("plain", "budget", "killed")
    prefixes = {name: unique_name(name) + "." for name in names}
    runs = {}
    try:
        for name, kills, budget in (("plain", 0, 0), ("budget", 0, 3), ("killed", 2, 3)):
            (tmp_path / name).mkdir()
            runs[name] = _run(
                tmp_path / name, bootstrap, prefixes[name], admin, messages, kills, rng,
                monkeypatch, budget,
            )  # fmt: skip
    finally:
        for prefix in prefixes.values():
            mine = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix)]
            if mine:
                admin.delete_topics(mine, operation_timeout=30)
    plain, budget, killed = runs["plain"], runs["budget"], runs["killed"]
    # Evictions happened, and reloads from the cache and the local file, never the topic.
    text = budget["metrics"]
    assert sample(text, "stream_learner_key_evictions_total") > 150
    # Some keys passed (evicted right after their input), some took a resident's place.
    passes = sample(text, "stream_learner_key_passes_total")
    assert 0 < passes < sample(text, "stream_learner_key_evictions_total")
    assert sample(text, "stream_learner_key_reloads_total", source="cache") > 50
    assert sample(text, "stream_learner_key_reloads_total", source="disk") > 0
    assert sample(text, "stream_learner_key_reloads_total", source="topic") == 0
    # Every request predicted once, as without a budget.
    for run in (budget, killed):
        assert set(run["predictions"]) == requests
        assert all(len(copies) == 1 for copies in run["predictions"].values())
        assert run["predictions"] == plain["predictions"]
    # Delayed labels of evicted keys were joined: as many as without a budget.
    joined = ("stream_learner_labels_total", (("result", "joined"),))
    assert plain["counters"][joined] > 0.9 * len(requests)
    assert sum(len(lr.decisions) for lr in plain["learners"].values()) >= len(KEYS)
    assert budget["counters"] == plain["counters"]
    # The same final learners: models, races, metrics, counts and decision logs.
    for key in KEYS:
        expected = fingerprint(plain["learners"][key])
        assert fingerprint(budget["learners"][key]) == expected, key
        assert fingerprint(killed["learners"][key]) == expected, key
        assert plain["learners"][key].joiner.joined == budget["learners"][key].joiner.joined
