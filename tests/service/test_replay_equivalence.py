"""Replaying the service's own inputs from Kafka, with its config, reproduces the service.

A seeded drifting stream (two keys, prediction requests whose delayed labels were produced
*before* the events, a few records the service dead-letters, a command) is learned by
``stream-learner run``, which is then stopped cleanly. ``stream-learner replay
--from-kafka --policy config`` reads the same topics back. The service's decision log
(its ``decision`` and ``retrain_*`` log lines, and each key's decisions in its final
checkpoint) and its final prequential metrics must come out of the replay unchanged.
"""

from __future__ import annotations

import json
import signal
import time
from collections import defaultdict

import orjson
import pytest

from stream_learner.cli import main
from stream_learner.core.commands import Command
from stream_learner.core.snapshot import load_signing_key
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.history import read_kafka_history
from stream_learner.kafka.sink import KafkaSink
from stream_learner.replay import _weighted
from stream_learner.synth import demo_messages
from tests.service.helpers import ServiceProcess, produce, sample, wait_until, write_config

pytestmark = pytest.mark.kafka

KEYS = ("alpha", "beta")
N = 2000  # events per key
#: Decision codes of a retrain's result: logged as retrain_promoted / retrain_kept lines.
APPLIED = ("challenger_better", "champion_better")


def _stream(t0: float) -> list:
    out = []
    for i, key in enumerate(KEYS):
        out += demo_messages(
            N, generator="stagger", change_at=N // 2, keys=(key,), unlabelled_share=0.1,
            label_delay=30,
            seed=5 + i, id_prefix=f"{key}-", t0=t0,
        )  # fmt: skip
    # Labels first: only the event-time merge puts each one after its event.
    return sorted(out, key=lambda m: m.topic != "labels")


def _bad_records(bootstrap: str, topics, t0: float) -> None:
    """What the service dead-letters, and commands, inside the stream's event time."""
    sink = KafkaSink(bootstrap)
    at = int((t0 + 700) * 1000)
    sink.produce(topics.events, b"{not json", key="alpha", timestamp_ms=at)
    maybe = {"id": "bad-y", "key": "alpha", "ts": t0 + 800, "x": {"size": 1}, "y": "maybe"}
    sink.produce(topics.events, orjson.dumps(maybe), key="alpha", timestamp_ms=at + 100_000)
    other = {"id": "alpha-3", "key": "beta", "y": True}  # contradicts its message key
    sink.produce(topics.labels, orjson.dumps(other), key="alpha", timestamp_ms=at + 200_000)
    # Commands, produced in event-time order (a partition's order is its log's): pause
    # and resume change what is learned, a snapshot does not, a retrain is a decision.
    commands = (("pause", 400, ""), ("resume", 500, ""), ("snapshot", 1000, "mid-stream"),
                ("retrain", 1800, "operator"))  # fmt: skip
    for name, when, reason in commands:
        body = Command(name, key="alpha", reason=reason).to_json()
        sink.produce(topics.control, body, key="alpha", timestamp_ms=int((t0 + when) * 1000))
    assert sink.close(timeout=30) == 0


def _log_lines(path) -> list[dict]:
    out = []
    for line in path.read_bytes().splitlines():
        if line.startswith(b"{"):
            out.append(orjson.loads(line))
    return out


def test_replay_from_kafka_reproduces_the_services_decisions_and_metrics(
    bootstrap, service_topics, prefix, tmp_path, capsys
):
    t0 = float(int(time.time()) - 3 * N)
    messages = _stream(t0)
    produce(bootstrap, prefix, messages)
    _bad_records(bootstrap, service_topics, t0)
    config = write_config(tmp_path, bootstrap, prefix)

    proc = ServiceProcess(config, tmp_path / "service.log")
    try:
        # Ready: partitions assigned, each read to its end, nothing left buffered.
        wait_until(proc.ready, 120, "the service to consume every input")
        metrics = proc.metrics()
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "service.log").read_text()[-2000:]
    finally:
        proc.kill()
    store = CheckpointStore(bootstrap, service_topics.checkpoints,
                            signing_key=load_signing_key(value=(tmp_path / "snapshot.key")
                                                         .read_text()))  # fmt: skip
    try:
        catalog = store.read()
        learners = {key: catalog.load(key)[1]["learner"] for key in KEYS}
    finally:
        store.close()
    lines = _log_lines(tmp_path / "service.log")

    # The replay, as a user runs it.
    argv = ["replay", "--config", str(config), "--from-kafka", "--policy", "config"]
    assert main([*argv, "--json", "--decisions"]) == 0
    out = capsys.readouterr()
    (report,) = json.loads(out.out)
    assert "3 skipped as the service dead-letters them" in out.err
    assert "1 command not replayed (snapshot 1)" in out.err
    assert sample(metrics, "stream_learner_dead_letters_total") == 3

    # The decisions: every one the service took, at the same input, for the same reason.
    replayed = defaultdict(list)
    for d in report["decisions"]:
        replayed[d["key"]].append((d["index"], d["trigger"], d["action"], d["code"], d["reason"]))
    for key, learner in learners.items():
        served = [(d.index, d.trigger, d.action, d.code, d.reason) for d in learner.decisions]
        assert replayed[key] == served, key
    # ... and as the service logged them: one line per decision, one per retrain result
    # (per key: keys on different partitions interleave by batch in the service's log).
    logged, results = defaultdict(list), defaultdict(list)
    for x in lines:
        if x.get("event") == "decision":
            logged[x["key"]].append((x["index"], x["trigger"], x["action"], x["code"]))
        elif x.get("event") in ("retrain_promoted", "retrain_kept"):
            results[x["key"]].append(x["reason"])
    for key in KEYS:
        decided = [d[:4] for d in replayed[key] if d[3] not in APPLIED]
        assert logged[key] == decided, key
        assert results[key] == [d[4] for d in replayed[key] if d[3] in APPLIED], key
    # Not a vacuous run: the drift was acted on, and a retrain's result was applied.
    every = replayed["alpha"] + replayed["beta"]
    assert any(d[1:3] == ("performance", "retrain") for d in every)
    assert any(d[2] == "promote" for d in every)
    assert "on_demand" in {d[1] for d in replayed["alpha"]}  # the retrain command

    # The final metrics, counts and versions.
    history = read_kafka_history(
        bootstrap,
        {
            "events": service_topics.events,
            "labels": service_topics.labels,
            "control": service_topics.control,
        },
        task="binary",
    ).items
    order = list(dict.fromkeys(item.key for item in history))  # as the replay weighs keys
    evaluators = [learners[key].evaluator for key in order]
    assert report["metric"] == _weighted(evaluators, rolling=False)
    assert report["rolling"] == _weighted(evaluators, rolling=True)
    paused = sample(metrics, "stream_learner_events_total", outcome="paused")
    assert paused > 0  # the pause took effect, in the service and (below) in the replay
    inputs = sum(1 for item in history if not isinstance(item, Command))
    assert report["inputs"] == len(history)
    assert sum(lr.index for lr in learners.values()) == inputs - paused
    assert report["retrains"] == sum(lr.retrains for lr in learners.values())
    assert report["promoted"] == sum(lr.version - 1 for lr in learners.values())
    for key, learner in learners.items():
        exported = sample(metrics, "stream_learner_prequential_metric", key=key,
                          metric="accuracy", window="cumulative")  # fmt: skip
        assert exported == learner.evaluator.values()["accuracy"], key
