"""examples/faust_app.py on the real broker (Faust's aiokafka driver), then the service on
the same topics restoring what the app checkpointed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

from stream_learner.config import load_config
from stream_learner.synth import Message, demo_messages
from tests.conftest import drain
from tests.service.helpers import produce, run_in_thread, sample, wait_until, write_config

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("alpha", "beta")
EVENTS = 3000  # per key; STAGGER changes concept half-way
BAD = [  # (topic, key, raw value, the service's dead-letter reason)
    ("events", "alpha", b'{"id": "bad-x", "key": "alpha", "x": [1, 2]}', "x_not_object"),
    ("labels", "alpha", b'{"id": "bad-y", "key": "alpha", "y": "yes"}', "bad_label"),
    ("events", "beta", b"not json at all", "not_json"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stream(prefix: str) -> tuple[list[Message], set[str]]:
    messages = list(
        demo_messages(
            EVENTS,
            generator="stagger",
            keys=KEYS,
            unlabelled_share=0.1,
            label_delay=50,
            change_at=EVENTS // 2,
            t0=time.time() - 4 * EVENTS,
        )
    )
    requests = {m.value["id"] for m in messages if m.topic == "events" and "y" not in m.value}
    return messages, requests


def _faust_app(config: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "STREAM_LEARNER_CONFIG": str(config),
        "FAUST_WEB_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, str(ROOT / "examples" / "faust_app.py"), "worker", "-l", "warn"],
            cwd=log.parent,  # Faust's data directory goes here
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _lines(log: Path, event: str) -> list[dict]:
    out = []
    for line in log.read_bytes().splitlines():
        start = line.find(b'{"ts"')  # after the terminal codes of Faust's spinner, if any
        if start >= 0:
            try:
                record = orjson.loads(line[start:])
            except orjson.JSONDecodeError:
                continue
            if record.get("event") == event:
                out.append(record)
    return out


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def _stop(app: subprocess.Popen) -> None:
    """SIGTERM (a clean stop: the shutdown checkpoint round), then SIGKILL after 90 s."""
    if app.poll() is None:
        app.send_signal(signal.SIGTERM)
    try:
        app.wait(90)
    except subprocess.TimeoutExpired:
        app.kill()
        app.wait(10)


def test_faust_app_learns_and_the_service_restores_its_checkpoints(
    bootstrap, service_topics, prefix, tmp_path
):
    config_path = write_config(tmp_path, bootstrap, prefix, every_events=2000)
    messages, requests = _stream(prefix)
    produce(bootstrap, prefix, messages)
    from stream_learner.kafka.sink import KafkaSink

    sink = KafkaSink(bootstrap)
    for topic, key, value, _ in BAD:
        sink.produce(prefix + topic, value, key=key)
    assert sink.close(30) == 0

    port, log = _free_port(), tmp_path / "faust.log"
    app = _faust_app(config_path, port, log)
    try:

        def handled() -> bool:
            """Every request predicted and its label joined, the bad input dead-lettered,
            and nothing left on the inputs (the lag on the service's metric)."""
            text = _scrape(port)
            if app.poll() is not None:
                raise AssertionError(f"the Faust app exited early:\n{log.read_text()[-5000:]}")
            return (
                sample(text, "stream_learner_events_total", outcome="predicted") == len(requests)
                and sample(text, "stream_learner_labels_total", result="joined") == len(requests)
                and sample(text, "stream_learner_dead_letters_total") == len(BAD)
                and sample(text, "stream_learner_consumer_lag", runtime="faust") == 0
            )

        try:
            wait_until(handled, 180, "the app to handle every input", 1.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; /metrics:\n{_scrape(port)}") from None
        metrics = _scrape(port)
    finally:
        _stop(app)
    assert app.returncode == 0, log.read_text()[-5000:]

    # Metrics on the service's names, labelled runtime="faust".
    assert sample(metrics, "stream_learner_dead_letters_total", runtime="faust") == len(BAD)
    assert sample(metrics, "stream_learner_model_version", key="alpha", runtime="faust") >= 2

    # It detected the change, retrained (or raced) and promoted, for every key.
    decisions = _lines(log, "decision")
    for key in KEYS:
        actions = {(d["trigger"], d["action"]) for d in decisions if d["key"] == key}
        assert ("performance", "retrain") in actions or ("performance", "race") in actions
        assert any(action == "promote" for _, action in actions), actions
    final = {f["key"]: f for f in _lines(log, "final")}
    assert set(final) == set(KEYS) and all(f["version"] >= 2 for f in final.values())

    # One prediction per request, on the service's predictions topic.
    predictions = [orjson.loads(m.value()) for m in drain(bootstrap, service_topics.predictions)]
    ids = [p["id"] for p in predictions]
    assert len(ids) == len(set(ids)) and set(ids) == requests
    assert {p["key"] for p in predictions} == set(KEYS)

    # Bad input dead-lettered with the service's reasons and headers.
    letters = drain(bootstrap, service_topics.dead_letters)
    reasons = sorted(dict(m.headers())["dlq.reason"].decode() for m in letters)
    assert reasons == sorted(reason for *_, reason in BAD)
    assert all(dict(m.headers())["dlq.source.offset"] for m in letters)

    # Checkpoints on the service's checkpoint topic, listed by the CLI.
    listed = subprocess.run(
        [sys.executable, "-m", "stream_learner", "checkpoints", "list"]
        + ["--config", str(config_path), "--json"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    versions = json.loads(listed.stdout)
    for key in KEYS:
        mine = [v for v in versions if v["key"] == key]
        assert mine and all(v["signature"] == "valid" for v in mine)
        assert max(v["version"] for v in mine) == final[key]["version"]

    # A replay starts from a snapshot the app wrote, as from one the service wrote.
    key = KEYS[0]
    replayed = subprocess.run(
        [sys.executable, "-m", "stream_learner", "replay", "--config", str(config_path)]
        + ["--from-kafka", "--from-checkpoint", key, "--policy", "never", "--json"],
        capture_output=True,
        timeout=180,
        text=True,
    )
    assert replayed.returncode == 0, replayed.stderr[-2000:]
    assert f"starts from version {final[key]['version']}" in replayed.stderr
    # The app's shutdown round reflects every input: nothing is left to replay after it.
    assert json.loads(replayed.stdout)[0]["inputs"] == 0

    # The service on the same topics restores the app's snapshots: same model versions and
    # prequential metrics, nothing learned again.
    from stream_learner.cli.service_cmd import build_service

    built = build_service(load_config(config_path), bootstrap, http_port=0)
    stop, thread, errors = run_in_thread(built.service)
    try:
        wait_until(lambda: built.service.caught_up, 120, "the service to catch up")
        learners = dict(built.service.learners)
        registry = built.service.metrics.registry
        restored = registry.get_sample_value(
            "stream_learner_checkpoints_total", {"result": "restored", "runtime": "service"}
        )
        learned = registry.get_sample_value(
            "stream_learner_events_total", {"outcome": "learned", "runtime": "service"}
        )
    finally:
        stop.set()
        thread.join(60)
    assert not errors
    assert restored == len(KEYS) and learned == 0
    for key in KEYS:
        assert learners[key].version == final[key]["version"]
        assert learners[key].evaluator.values() == final[key]["metrics"]

    # And the other way round: the app, started again, restores from the checkpoint topic
    # the service last wrote to (its shutdown round), learning nothing again.
    port, log = _free_port(), tmp_path / "faust-again.log"
    app = _faust_app(config_path, port, log)
    try:
        wait_until(lambda: len(_lines(log, "restored")) == len(KEYS), 120, "the app's restore")
        wait_until(
            lambda: sample(_scrape(port), "stream_learner_consumer_lag", runtime="faust") == 0,
            60,
            "the app to read its inputs to their end",
        )
        again = _scrape(port)
    finally:
        _stop(app)
    assert {r["key"]: r["version"] for r in _lines(log, "restored")} == {
        key: final[key]["version"] for key in KEYS
    }
    assert sample(again, "stream_learner_events_total", outcome="learned", runtime="faust") == 0
    assert {f["key"]: f["metrics"] for f in _lines(log, "final")} == {
        key: final[key]["metrics"] for key in KEYS
    }
