"""The chaos suite: every fault the service must ride out, on a real three-node cluster.

One command starts the project's own local cluster (three KRaft brokers on free loopback
ports, topics at replication 3 / min.insync.replicas 2), runs each scenario on fresh topics
of it, and stops it again:

- ``leader_kill``: SIGKILL of the broker leading the checkpoint topic (and some events
  partitions) mid-stream; it is started again afterwards.
- ``rolling_restart``: every broker stopped (SIGTERM) and started again, one after the
  other, while input keeps arriving.
- ``service_kill_x10``: the service SIGKILLed at 10 random moments, restarted each time.
- ``stall``: one of two instances SIGSTOPped for longer than the group session while the
  other takes over, then SIGCONTed.
- ``checkpoint_leader_kill``: SIGKILL of the checkpoint topic's leader the moment the
  service logs a checkpoint write (many keys, so the round is still under way).
- ``retention_gap``: while the service is down, the log start of one events partition is
  moved past its checkpoint (``delete_records``, as retention would); then a restart.

Each runs with ``exactly_once = true`` and without. The stream is the same in every
scenario (8 keys, SEA with an abrupt change, a fifth of the events prediction requests),
so each scenario's final learners (read back from the shutdown checkpoints) are compared
with those of one uninterrupted run: the same answers on a probe set, the same metrics,
counts and decision logs (``tests/service/helpers.fingerprint``).

Per scenario the summary has: inputs, requests, predictions (messages; committed ones
under exactly-once), lost (requests never predicted, besides what a retention gap deleted),
duplicates (messages beyond the first per request), duplicates that differ, keys whose
final model differs from the uninterrupted run's, the retention gap reported by the
service, and the time from the fault (or the restart after it) until every request
produced so far was predicted (``recovered_s``) or the instance was ready (``ready_s``).

    .venv/bin/python load_tests/chaos.py [--scenarios leader_kill stall ...]
        [--modes at-least-once exactly-once]

Prints a table and writes load_tests/results/chaos.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_learner.core.snapshot import load_signing_key  # noqa: E402
from stream_learner.kafka.checkpoints import CheckpointStore  # noqa: E402
from stream_learner.kafka.client import client_config  # noqa: E402
from stream_learner.kafka.local import LocalCluster  # noqa: E402
from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan  # noqa: E402
from stream_learner.synth import Message, demo_messages  # noqa: E402
from tests.conftest import drain, free_port_range  # noqa: E402
from tests.service.helpers import (  # noqa: E402
    ServiceProcess,
    fingerprint,
    produce,
    wait_until,
    write_config,
)

RESULTS = Path(__file__).parent / "results" / "chaos.json"
KEYS = tuple(f"k{i}" for i in range(8))
PER_KEY = 3000
# The stall scenario's group session (the broker's minimum is 6 s): the stop must outlast
# it. The other scenarios keep the default (30 s), well above the cluster's broker failure
# detection: a static member whose session expires while the group coordinator moves is
# fenced by its own rejoin (see the README on failover).
STALL_SESSION_MS = 10_000
SCENARIOS = (
    "leader_kill",
    "rolling_restart",
    "service_kill_x10",
    "stall",
    "checkpoint_leader_kill",
    "retention_gap",
)
MODES = ("at-least-once", "exactly-once")


def stream(t0: float) -> list[Message]:
    """The events of every scenario, requests unlabelled (no delayed labels: each key's
    inputs are its events in one partition's order, whatever arrives when)."""
    out = []
    for i, key in enumerate(KEYS):
        out += [
            m
            for m in demo_messages(
                PER_KEY,
                change_at=PER_KEY // 2,
                keys=(key,),
                unlabelled_share=0.2,
                seed=31 + i,
                id_prefix=f"{key}-",
                t0=t0,
            )  # fmt: skip
            if m.topic == "events"
        ]
    # Keys interleaved (each in its own order), so any slice of the stream is mid-stream
    # for every key.
    return sorted(out, key=lambda m: (m.value["ts"], m.key))


def is_request(m: Message) -> bool:
    return "y" not in m.value


def read_ids(bootstrap: str, topic: str, partitions: int = 4) -> list[str]:
    """The ids the topic still holds, each partition read from its log start to its end."""
    consumer = Consumer(client_config(bootstrap, {"group.id": "chaos-read"}))
    try:
        ends = {}
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = (low, high)
        consumer.assign([TopicPartition(topic, p, low) for p, (low, _) in ends.items()])
        out, deadline = [], time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=1.0):
                if m.error() is None:
                    out.append(orjson.loads(m.value())["id"])
                    if m.offset() + 1 >= ends.get(m.partition(), (0, 0))[1]:
                        ends.pop(m.partition(), None)
        if ends:
            raise AssertionError(f"could not read {topic} to its end")
        return out
    finally:
        consumer.close()


@dataclass
class Run:
    """One scenario on fresh topics: its config, its instances and what it measured."""

    suite: Suite
    name: str
    mode: str
    dir: Path
    prefix: str = field(init=False)
    config: Path = field(init=False)
    procs: list[ServiceProcess] = field(default_factory=list)
    produced: list[Message] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    session_ms: int | None = None

    def __post_init__(self) -> None:
        self.prefix = f"chaos-{self.name}-{self.mode}-{uuid.uuid4().hex[:6]}."
        admin = self.suite.admin
        apply(admin, plan(load_topics(default_topics_file(), prefix=self.prefix), admin))
        self.dir.mkdir(parents=True)
        config = write_config(self.dir, self.suite.bootstrap, self.prefix, batch_size=200,
                              every_events=self.suite.every_events)  # fmt: skip
        text = config.read_text()
        if self.mode == "exactly-once":
            text = text.replace("[service]\n", "[service]\nexactly_once = true\n", 1)
        if self.session_ms:
            text += f'\n[kafka.client]\n"session.timeout.ms" = {self.session_ms}\n'
        config.write_text(text)
        self.config = config

    def produce(self, messages: list[Message]) -> None:
        produce(self.suite.bootstrap, self.prefix, messages)
        self.produced += messages

    def start(self, label: str) -> ServiceProcess:
        proc = ServiceProcess(self.config, self.dir / f"{label}.log")
        self.procs.append(proc)
        return proc

    def predictions(self) -> list:
        committed = self.mode == "exactly-once"
        return drain(self.suite.bootstrap, self.prefix + "predictions", committed=committed)

    def wait_served(self, timeout: float = 180.0) -> float:
        """Seconds until every request produced so far has a prediction."""
        started = time.monotonic()
        wanted = {m.value["id"] for m in self.produced if is_request(m)}

        def served() -> bool:
            try:
                return wanted <= {orjson.loads(m.value())["id"] for m in self.predictions()}
            except (KafkaException, AssertionError):  # a broker down mid-read: ask again
                return False

        wait_until(served, timeout, f"{self.name}: every request predicted", interval=0.5)
        return round(time.monotonic() - started, 1)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGCONT)
                proc.proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                code = proc.wait(60) if proc.proc.poll() is None else proc.proc.returncode
            except subprocess.TimeoutExpired:
                code = "no exit within 60 s of SIGTERM"
            if code not in (0, -signal.SIGKILL):
                self.figures.setdefault("exits", []).append(f"{proc.log_path.stem}: {code}")
            proc.kill()

    def learners(self) -> dict:
        key = load_signing_key(value=(self.dir / "snapshot.key").read_text())
        store = CheckpointStore(self.suite.bootstrap, self.prefix + "checkpoints",
                                signing_key=key)  # fmt: skip
        try:
            catalog = store.read()
            return {k: catalog.load(k)[1]["learner"] for k in KEYS}
        finally:
            store.close()

    def summary(self, deleted: set[str] = frozenset()) -> dict:
        outputs = self.predictions()
        copies: dict[str, set[bytes]] = defaultdict(set)
        count: dict[str, int] = defaultdict(int)
        for m in outputs:
            request = orjson.loads(m.value())["id"]
            copies[request].add(m.value())
            count[request] += 1
        requests = {m.value["id"] for m in self.produced if is_request(m)}
        learners = self.learners()
        calm = self.suite.calm
        differ = sorted(k for k in KEYS if calm and fingerprint(learners[k]) != calm[k])
        return {
            "scenario": self.name,
            "mode": self.mode,
            "inputs": len(self.produced),
            "requests": len(requests),
            "predictions": len(outputs),
            "lost": len(requests - deleted - set(count)),
            "duplicates": sum(n - 1 for n in count.values()),
            "duplicates_that_differ": sum(1 for v in copies.values() if len(v) > 1),
            "models_differ": differ if not deleted else "n/a (input deleted)",
            **self.figures,
        }


class Suite:
    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.cluster = LocalCluster(3, base_port=free_port_range(6))
        self.bootstrap = ""
        self.admin: AdminClient
        self.calm: dict | None = None
        self.every_events = 1000
        self.t0 = time.time() - 3600

    def __enter__(self) -> Suite:
        self.cluster.up(timeout=180)
        self.bootstrap = self.cluster.bootstrap
        self.admin = AdminClient(client_config(self.bootstrap))
        return self

    def __exit__(self, *exc) -> None:
        self.cluster.down(purge=True, grace=15)

    def run(self, name: str, mode: str, body: Callable[[Run, list[Message]], None]) -> dict:
        started = time.monotonic()
        session = STALL_SESSION_MS if name == "stall" else None
        where = self.root / f"{name}-{mode}"
        for n in itertools.count(2):  # a scenario asked for more than once: each its logs
            if not where.exists():
                break
            where = self.root / f"{name}-{mode}-{n}"
        run = Run(self, name, mode, where, session_ms=session)
        deleted: set[str] = set()
        try:
            deleted = body(run, stream(self.t0)) or set()
        finally:
            try:
                run.stop_all()
            finally:
                self.restart_nodes()  # the next scenario starts on a whole cluster
        out = run.summary(deleted)
        out["seconds"] = round(time.monotonic() - started, 1)
        return out

    # -- helpers for the scenarios ----------------------------------------------------
    def leader(self, topic: str, partition: int = 0) -> int:
        meta = self.admin.list_topics(topic, timeout=10).topics[topic]
        return meta.partitions[partition].leader

    def kill_node(self, node_id: int) -> None:
        os.kill(self.cluster.node(node_id).status().pid, signal.SIGKILL)

    def restart_nodes(self) -> None:
        """Start whatever node is down and wait until every broker is back."""
        self.cluster.up(timeout=120)


def calm(run: Run, messages: list[Message]) -> None:
    run.produce(messages)
    proc = run.start("service")
    run.figures["recovered_s"] = run.wait_served()
    wait_until(proc.ready, 120, "calm: caught up")


def leader_kill(run: Run, messages: list[Message]) -> None:
    half = len(messages) // 2
    run.produce(messages[:half])
    proc = run.start("service")
    wait_until(lambda: proc.sample("stream_learner_events_total", outcome="learned") > 2000,
               120, "learning to start")  # fmt: skip
    run.suite.kill_node(run.suite.leader(run.prefix + "checkpoints"))
    run.produce(messages[half:])  # producers fail over as well (acks=all)
    run.figures["recovered_s"] = run.wait_served()
    run.suite.restart_nodes()


def rolling_restart(run: Run, messages: list[Message]) -> None:
    quarter = len(messages) // 4
    run.produce(messages[:quarter])
    proc = run.start("service")
    wait_until(proc.ready, 120, "ready before the restarts")
    started = time.monotonic()
    for i, node in enumerate(run.suite.cluster.members):
        node.down(grace=30)  # SIGTERM: a controlled shutdown, leadership moves first
        run.produce(messages[quarter * (i + 1) : quarter * (i + 2) if i < 2 else None])
        run.suite.restart_nodes()
    run.figures["restarts_s"] = round(time.monotonic() - started, 1)
    run.figures["recovered_s"] = run.wait_served()
    # Exactly-once batches whose transaction did not commit (given up and replayed).
    run.figures["transactions_given_up"] = proc.sample("stream_learner_fenced_total",
                                                       why="transaction")  # fmt: skip


def service_kill_x10(run: Run, messages: list[Message]) -> None:
    run.produce(messages)
    for k in range(10):
        proc = run.start(f"run{k}")
        time.sleep(run.suite.rng.uniform(0.3, 2.5))  # in restore, catch-up or learning
        proc.proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    started = time.monotonic()
    final = run.start("final")
    wait_until(final.ready, 180, "ready after the kills")
    run.figures["ready_s"] = round(time.monotonic() - started, 1)
    run.figures["recovered_s"] = run.wait_served()


def stall(run: Run, messages: list[Message]) -> None:
    pair = run.start("a"), run.start("b")
    wait_until(lambda: all(p.ready() for p in pair), 120, "both instances ready")
    third = len(messages) // 3
    run.produce(messages[:third])

    def learned(p: ServiceProcess) -> float:
        n = p.sample("stream_learner_events_total", outcome="learned")
        return 0.0 if n != n else n  # NaN: nothing learned yet

    # The group decides which instance owns the keys' partitions: stop a busy one.
    wait_until(lambda: max(map(learned, pair)) > 500, 60, "an instance busy")
    stalled, other = sorted(pair, key=learned, reverse=True)
    run.figures["stalled"] = stalled.log_path.stem
    stalled.proc.send_signal(signal.SIGSTOP)
    run.produce(messages[third : 2 * third])
    wait_until(lambda: other.sample("stream_learner_assigned_partitions") == 12, 90,
               "the takeover")  # fmt: skip
    run.wait_served()
    mark = {m.partition(): m.offset() for m in run.predictions()}
    started = time.monotonic()
    stalled.proc.send_signal(signal.SIGCONT)
    wait_until(
        lambda: (
            stalled.sample("stream_learner_fenced_total") >= 1 and stalled.ready() and other.ready()
        ),
        120,
        "the stalled instance fenced, reassigned and ready",
    )
    run.figures["ready_s"] = round(time.monotonic() - started, 1)
    run.produce(messages[2 * third :])
    run.figures["recovered_s"] = run.wait_served()
    outputs = run.predictions()
    old = [m.offset() <= mark.get(m.partition(), -1) for m in outputs]
    before = {orjson.loads(m.value())["id"] for m, o in zip(outputs, old, strict=True) if o}
    after = [orjson.loads(m.value())["id"] for m, o in zip(outputs, old, strict=True) if not o]
    run.figures["stale_outputs"] = sum(1 for i in after if i in before)
    run.figures["fenced"] = stalled.sample("stream_learner_fenced_total")


def checkpoint_leader_kill(run: Run, messages: list[Message]) -> None:
    proc = run.start("service")
    wait_until(proc.ready, 120, "ready")
    at = proc.log_path.stat().st_size
    run.produce(messages)

    def writing() -> bool:
        return b'"checkpoint"' in proc.log_path.read_bytes()[at:]

    wait_until(writing, 120, "a checkpoint round", interval=0.02)
    run.suite.kill_node(run.suite.leader(run.prefix + "checkpoints"))
    run.figures["recovered_s"] = run.wait_served()
    run.suite.restart_nodes()
    # The next rounds go to the new leader: the shutdown round must be restorable.


def retention_gap(run: Run, messages: list[Message]) -> set[str]:
    half = len(messages) // 2
    run.produce(messages[:half])
    first = run.start("first")
    wait_until(first.ready, 120, "the first half")
    first.proc.send_signal(signal.SIGTERM)  # a shutdown round checkpoints here
    first.wait(60)
    run.produce(messages[half:])
    events = run.prefix + "events"
    consumer = Consumer(client_config(run.suite.bootstrap, {"group.id": "chaos-marks"}))
    try:
        marks = {p: consumer.get_watermark_offsets(TopicPartition(events, p), timeout=10)
                 for p in range(4)}  # fmt: skip
    finally:
        consumer.close()
    partition = max(marks, key=lambda p: marks[p][1])
    low, high = marks[partition]
    cut = (low + high) // 2 + (high - low) // 4  # past the checkpoint, before the end
    for f in run.suite.admin.delete_records([TopicPartition(events, partition, cut)]).values():
        f.result(timeout=30)
    started = time.monotonic()
    second = run.start("second")
    wait_until(second.ready, 120, "ready after the gap")
    run.figures["ready_s"] = round(time.monotonic() - started, 1)
    lines = [orjson.loads(x) for x in second.log_path.read_bytes().splitlines()
             if x.startswith(b"{")]  # fmt: skip
    gaps = [x for x in lines if x.get("event") == "input_lost"]
    run.figures["gap_reported"] = [(g["partition"], g["first_lost"], g["log_start"], g["lost"])
                                   for g in gaps]  # fmt: skip
    # What the log no longer holds: the records of that partition between its checkpoint
    # and the cut. Requests among them are not expected to be predicted.
    kept = set(read_ids(run.suite.bootstrap, events))
    deleted = {m.value["id"] for m in run.produced if m.value["id"] not in kept}
    wanted = {m.value["id"] for m in run.produced if is_request(m)} - deleted
    wait_until(lambda: wanted <= {orjson.loads(m.value())["id"] for m in run.predictions()},
               120, "every retained request")  # fmt: skip
    run.figures["deleted_inputs"] = len(deleted)
    return deleted


BODIES = {
    "leader_kill": leader_kill,
    "rolling_restart": rolling_restart,
    "service_kill_x10": service_kill_x10,
    "stall": stall,
    "checkpoint_leader_kill": checkpoint_leader_kill,
    "retention_gap": retention_gap,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seed", type=int, default=20261206)
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = []
    tmp = tempfile.mkdtemp(prefix="chaos-")  # kept when a scenario fails: its logs
    with Suite(Path(tmp), args.seed) as suite:
        reference = Run(suite, "calm", "at-least-once", Path(tmp) / "calm")
        try:
            calm(reference, stream(suite.t0))
        finally:
            reference.stop_all()
        suite.calm = {k: fingerprint(v) for k, v in reference.learners().items()}
        for name in args.scenarios:
            for mode in args.modes:
                try:
                    row = suite.run(name, mode, BODIES[name])
                except Exception as exc:  # noqa: BLE001 - a failed scenario is a result
                    row = {"scenario": name, "mode": mode, "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                print(json.dumps(row), flush=True)
    total = round(time.monotonic() - started, 1)
    print(f"\n{'scenario':24} {'mode':14} {'inputs':>7} {'lost':>5} {'dups':>5} "
          f"{'differ':>6} {'models':>8} {'ready_s':>8} {'recov_s':>8}")  # fmt: skip
    for r in rows:
        if "error" in r:
            print(f"{r['scenario']:24} {r['mode']:14} ERROR {r['error'][:80]}")
            continue
        models = "same" if r["models_differ"] == [] else str(r["models_differ"])[:8]
        print(f"{r['scenario']:24} {r['mode']:14} {r['inputs']:>7} {r['lost']:>5} "
              f"{r['duplicates']:>5} {r['duplicates_that_differ']:>6} {models:>8} "
              f"{r.get('ready_s', '-')!s:>8} {r.get('recovered_s', '-')!s:>8}")  # fmt: skip
    print(f"total: {total} s")
    RESULTS.parent.mkdir(exist_ok=True)
    when = datetime.now().isoformat(timespec="seconds")
    summary = {"when": when, "total_s": total, "scenarios": rows}
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    bad = [
        r
        for r in rows
        if "error" in r
        or r.get("lost")
        or r.get("duplicates_that_differ")
        or (r["mode"] == "exactly-once" and r.get("duplicates"))
    ]
    if bad:
        print(f"logs of every run: {tmp}")
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
