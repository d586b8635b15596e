"""examples/embed_loop.py, the docs page's example, against the real broker."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from stream_learner.kafka.sink import KafkaSink
from stream_learner.synth import demo_messages
from tests.conftest import drain
from tests.service.helpers import produce, write_config

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "embed_loop.py"


def test_the_docs_page_shows_the_example_file_whole_and_it_is_under_40_lines():
    source = EXAMPLE.read_text()
    assert source.count("\n") < 40
    assert source.strip() in (ROOT / "docs" / "embedding.md").read_text()


def test_the_embedding_loop_learns_predicts_and_dead_letters(
    bootstrap, service_topics, prefix, tmp_path
):
    config = write_config(tmp_path, bootstrap, prefix)
    messages = list(
        demo_messages(
            2000,
            generator="stagger",
            change_at=1000,
            keys=("alpha",),
            unlabelled_share=0.1,
            label_delay=20,
            t0=time.time() - 10_000,
        )
    )
    requests = {m.value["id"] for m in messages if m.topic == "events" and "y" not in m.value}
    produce(bootstrap, prefix, messages)
    sink = KafkaSink(bootstrap)
    sink.produce(service_topics.events, b'{"id": "bad", "x": [1]}', key="alpha")
    sink.produce(service_topics.labels, b'{"id": "e5", "y": "maybe"}', key="alpha")
    assert sink.close(30) == 0

    run = subprocess.run(
        [sys.executable, str(EXAMPLE), str(config), bootstrap, "5"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert any(line.startswith("alpha performance retrain") for line in lines), lines
    assert any(line.startswith("alpha performance promote") for line in lines), lines

    predictions = [orjson.loads(m.value()) for m in drain(bootstrap, service_topics.predictions)]
    assert sorted(p["id"] for p in predictions) == sorted(requests)
    assert max(p["model_version"] for p in predictions) >= 2  # served by the promoted model
    letters = drain(bootstrap, service_topics.dead_letters)
    assert sorted(dict(m.headers())["dlq.reason"].decode() for m in letters) == [
        "bad_label",
        "x_not_object",
    ]
