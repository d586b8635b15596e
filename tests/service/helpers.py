"""Running the real service against the real broker, in-process or as a subprocess."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import orjson

from stream_learner.core.events import Event
from stream_learner.kafka.sink import KafkaSink
from stream_learner.synth import Message

CONFIG = """
[kafka]
bootstrap = "{bootstrap}"
topic_prefix = "{prefix}"
group_id = "{group}"
instance_dir = "{instance_dir}"

[service]
batch_size = {batch_size}
poll_timeout_s = 0.1
http_port = 0
retrain_in_worker = {worker}
retrain_apply_after = 100

[model]
task = "binary"
pipeline = [
  {{ estimator = "preprocessing.StandardScaler" }},
  {{ estimator = "linear_model.LogisticRegression" }},
]
metrics = ["accuracy"]
seed = 7

[learner]
feature_drift = false

[policy]
warmup = 500
cooldown_events = 500

[retrain]
window = 2000
holdout = 200
min_train = 200
margin = 0.0
# The race promotes on a 2-standard-error lead in these short streams (SEA's mild change):
# a promotion, then the retired model in the pool, happen within the tests' few thousand events
# (after 50 raced events, not the default 1,000).
race_z = 2.0
race_margin = 0.0
race_min_events = 50

[checkpoints]
signing_key = "file:{key_file}"
every_events = {every_events}
every_seconds = 0
"""


def write_config(tmp_path: Path, bootstrap: str, prefix: str, **kw) -> Path:
    key_file = tmp_path / "snapshot.key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32))
    values = {
        "group": prefix + "group",
        "batch_size": 200,
        "worker": "true",
        "every_events": 5000,
        "key_file": key_file,
        "instance_dir": tmp_path / "instances",
        **kw,
    }
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(bootstrap=bootstrap, prefix=prefix, **values))
    return path


def produce(bootstrap: str, prefix: str, messages: Iterable[Message]) -> int:
    sink = KafkaSink(bootstrap)
    n = 0
    for msg in messages:
        ts = msg.value.get("ts")
        sink.produce(
            prefix + msg.topic,
            orjson.dumps(msg.value),
            key=msg.key,
            timestamp_ms=None if ts is None else int(ts * 1000),
        )
        n += 1
    assert sink.close(timeout=30) == 0
    return n


class ServiceProcess:
    """``stream-learner run`` as a child process; finds its metrics URL in its log."""

    def __init__(
        self, config: Path, log_path: Path, *, append: bool = False, max_seconds: int = 240
    ) -> None:
        self.log_path = log_path
        self._start = log_path.stat().st_size if append and log_path.exists() else 0
        self._log = open(log_path, "ab" if append else "wb")  # noqa: SIM115 - closed in wait()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream_learner",
                "run",
                "--config",
                str(config),
                "--max-seconds",
                str(max_seconds),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.url = self._find_url(timeout=60)

    def _find_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[self._start :]
            match = re.search(rb'"http":\s*"(http://[^"]+)"', text)
            if match:
                return match.group(1).decode()
            if self.proc.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.log_path.read_text()}")
            time.sleep(0.2)
        raise AssertionError(f"service did not start:\n{self.log_path.read_text()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as resp:
            return resp.read().decode()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as resp:
                return resp.status == 200
        except OSError:  # 503 (HTTPError) or not listening yet
            return False

    def probe(self, path: str = "/readyz") -> tuple[int, str]:
        """``(status, body)`` of a GET on the service's HTTP port (0: not answering)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()
        except OSError:
            return 0, ""

    def sample(self, name: str, **labels: str) -> float:
        return sample(self.metrics(), name, **labels)

    def wait(self, timeout: float = 60) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def sample(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else float("nan")


def wait_until(predicate, timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_in_thread(service) -> tuple[threading.Event, threading.Thread, list]:
    stop, errors = threading.Event(), []

    def target():
        try:
            service.run(stop.is_set)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            errors.append(exc)
            # A test waiting on the service's output times out instead of seeing this;
            # printed, it shows under the failure's captured stderr.
            traceback.print_exc()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return stop, thread, errors


def fingerprint(learner) -> tuple:
    """What must be equal between an interrupted and an uninterrupted run of one key: the
    model's (and the race's and pool's) answers on a probe set, the prequential metrics,
    the counts and the decision log."""
    probe = [Event(f"p{i}", learner.key, {"x0": (i * 3.7) % 10, "x1": (i * 1.3) % 10,
                                           "x2": (i * 7.1) % 10}) for i in range(200)]  # fmt: skip
    race = learner._race.candidates if learner._race is not None else []
    return (
        [learner.model.predict_proba_one(e.x) for e in probe],
        # The race and the pool: what each candidate and retired model predicts, and the
        # candidates' paired records, recent leads and which of them serves.
        [(c.source, c.started, c.n, c.total, c.squares, c.recent) for c in race],
        [c is learner._race.serving for c in race],
        [[m.predict_proba_one(e.x) for e in probe] for m in [c.model for c in race]],
        [(v, [m.predict_proba_one(e.x) for e in probe]) for v, m in learner.pool],
        dict(learner.race_promotions),
        learner.evaluator.values(),
        learner.index, learner.learned, learner.predicted, learner.version,
        [(d.index, d.trigger, d.action, d.code) for d in learner.decisions],
    )  # fmt: skip
