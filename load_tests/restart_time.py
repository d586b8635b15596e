"""Restart-to-ready time against the length of the stream's history.

For each history length (default 100,000 and 2,000,000 events over 4 keys), on fresh topics
of the live broker: produce the history, run `stream-learner run` until it is ready (every
partition read to its end) and stop it with SIGTERM (a checkpoint round). Then restart each
service ``--restarts`` times, alternating between the histories so both see the same load
from the rest of the machine, and time start -> /readyz answering 200. A restart restores
the snapshots and re-reads only what came after them, so the times should be close whatever
the history.

Two figures per restart: ``to_ready`` (process start to ready, what an operator waits for,
including the Python interpreter's start-up and imports) and ``restore`` (from the service's
``started`` log line to its ``caught_up`` line: joining the group, reading the checkpoint
topic, loading the snapshots, reading to the end of the inputs). Medians are reported.

Beside them, in the same run, the restart after a crash: on the first history, an instance
runs to ready and is killed with SIGKILL (no shutdown checkpoint, no leaving the group), and
its successor is timed the same way, plus ``to_assigned`` (``started`` to the first
``assigned`` line: how long the group kept the dead member's partitions). ``--kills`` times
with static membership (the default), ``--dynamic-kills`` without it, for comparison: there
the group waits out the dead member's session (``session.timeout.ms``).

    .venv/bin/python load_tests/restart_time.py [--histories 100000 2000000] [--restarts 5]
        [--kills 5] [--dynamic-kills 1]

Prints the figures and writes load_tests/results/restart_time.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream_learner.kafka.client import client_config, resolve_bootstrap  # noqa: E402
from stream_learner.kafka.sink import KafkaSink  # noqa: E402
from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan  # noqa: E402
from tests.service.helpers import ServiceProcess, wait_until, write_config  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "restart_time.json"
KEYS = ("a", "b", "c", "d")


def produce_history(bootstrap: str, topic: str, n: int) -> float:
    started = time.perf_counter()
    sink = KafkaSink(bootstrap, {"linger.ms": 50, "batch.size": 1_000_000})
    t0 = time.time() - n / 1000
    for i in range(n):
        key = KEYS[i % 4]
        x = {"x0": (i * 7.3) % 10, "x1": (i * 3.1) % 10, "x2": (i * 1.7) % 10}
        body = {"id": f"e{i}", "key": key, "x": x, "y": x["x0"] + x["x1"] > 8}
        sink.produce(topic, orjson.dumps(body), key=key, timestamp_ms=int((t0 + i / 1000) * 1000))
    assert sink.close(120) == 0
    return time.perf_counter() - started


def first_run(bootstrap: str, admin, n: int) -> dict:
    """Fresh topics, the history, one run to ready and a clean stop: ready to restart."""
    prefix = f"restart-{uuid.uuid4().hex[:8]}."
    apply(admin, plan(load_topics(default_topics_file(), prefix=prefix), admin))
    tmp = Path(tempfile.mkdtemp())
    config = write_config(tmp, bootstrap, prefix, batch_size=1000, every_events=100_000)
    produce_s = produce_history(bootstrap, prefix + "events", n)
    first = ServiceProcess(config, tmp / "first.log")
    started = time.monotonic()
    try:
        wait_until(first.ready, 1800, "the first run to catch up", interval=0.5)
        learn_s = time.monotonic() - started
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait(120) == 0
    finally:
        first.kill()
    return {
        "history_events": n,
        "prefix": prefix,
        "config": config,
        "tmp": tmp,
        "produce_s": round(produce_s, 1),
        "first_run_to_ready_s": round(learn_s, 1),
        "to_ready_s": [],
        "restore_s": [],
    }


def timed_start(config: Path, log: Path) -> tuple[float, float, float]:
    """Start the service, time it to ready, stop it with SIGTERM; check the restored keys.
    Returns (to_ready, restore, to_assigned): start to /readyz 200, ``started`` to
    ``caught_up``, ``started`` to the first ``assigned`` line (the group's hand-back)."""
    started = time.monotonic()
    service = ServiceProcess(config, log)
    try:
        wait_until(service.ready, 300, f"ready (see {log})", interval=0.02)
        ready_s = time.monotonic() - started
        restored = service.sample("stream_learner_checkpoints_total", result="restored")
        service.proc.send_signal(signal.SIGTERM)
        service.wait(120)
    finally:
        service.kill()
    if int(restored) != len(KEYS):
        raise SystemExit(f"{log.name} restored {restored} keys, expected {len(KEYS)}: see {log}")
    stamps = {}
    for line in log.read_bytes().splitlines():
        if line.startswith(b"{"):
            rec = orjson.loads(line)
            if rec.get("event") in ("started", "assigned", "caught_up"):
                stamps.setdefault(rec["event"], _iso(rec["ts"]))
    return ready_s, stamps["caught_up"] - stamps["started"], stamps["assigned"] - stamps["started"]


def restart(run: dict, i: int) -> None:
    """One graceful restart to ready, timed (the previous instance stopped with SIGTERM)."""
    ready_s, restore_s, _ = timed_start(run["config"], run["tmp"] / f"restart-{i}.log")
    run["to_ready_s"].append(round(ready_s, 3))
    run["restore_s"].append(round(restore_s, 3))


def kill_restart(run: dict, i: int, config: Path, out: dict) -> None:
    """An instance runs to ready and is SIGKILLed; its successor's restart is timed."""
    victim_log = run["tmp"] / f"victim-{out['name']}-{i}.log"
    victim = ServiceProcess(config, victim_log)
    try:
        wait_until(victim.ready, 300, f"ready (see {victim_log})", interval=0.05)
        victim.proc.send_signal(signal.SIGKILL)
        victim.wait(30)
    finally:
        victim.kill()
    log = run["tmp"] / f"after-kill-{out['name']}-{i}.log"
    ready_s, restore_s, assigned_s = timed_start(config, log)
    out["to_ready_s"].append(round(ready_s, 3))
    out["restore_s"].append(round(restore_s, 3))
    out["to_assigned_s"].append(round(assigned_s, 3))


def dynamic_config(config: Path) -> Path:
    """The same config without static membership (the 'before' of kill restarts)."""
    path = config.with_name("config-dynamic.toml")
    text = config.read_text().replace("instance_dir =", 'instance_id = ""\ninstance_dir =')
    path.write_text(text)
    return path


def _kill_row(name: str) -> dict:
    return {"name": name, "to_ready_s": [], "restore_s": [], "to_assigned_s": []}


def _iso(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", type=int, nargs="+", default=[100_000, 2_000_000])
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument(
        "--kills", type=int, default=5, help="restarts after SIGKILL (on the first history)"
    )
    parser.add_argument(
        "--dynamic-kills",
        type=int,
        default=1,
        help="the same without static membership, for comparison (each waits out a session)",
    )
    parser.add_argument("--bootstrap")
    args = parser.parse_args()
    bootstrap = resolve_bootstrap(args.bootstrap)
    admin = AdminClient(client_config(bootstrap))
    runs = []
    try:
        for n in args.histories:
            runs.append(first_run(bootstrap, admin, n))
            print(
                f"history {n:,}: produced in {runs[-1]['produce_s']} s, first run to ready "
                f"in {runs[-1]['first_run_to_ready_s']} s",
                flush=True,
            )
        kills = [_kill_row("static"), _kill_row("dynamic")]
        for i in range(max(args.restarts, args.kills, args.dynamic_kills)):
            if i < args.restarts:
                for run in runs:
                    restart(run, i)
            if i < args.kills:
                kill_restart(runs[0], i, runs[0]["config"], kills[0])
            if i < args.dynamic_kills:
                kill_restart(runs[0], i, dynamic_config(runs[0]["config"]), kills[1])
        out = []
        for run in runs:
            row = {k: v for k, v in run.items() if k not in ("prefix", "config", "tmp")}
            row["median_to_ready_s"] = statistics.median(run["to_ready_s"])
            row["median_restore_s"] = statistics.median(run["restore_s"])
            out.append(row)
            print(
                f"history {run['history_events']:>9,}: restart to ready median "
                f"{row['median_to_ready_s']:.2f} s {run['to_ready_s']}, restore median "
                f"{row['median_restore_s']:.3f} s {run['restore_s']}"
            )
    finally:
        for run in runs:
            topics = admin.list_topics(timeout=10).topics
            admin.delete_topics([t for t in topics if t.startswith(run["prefix"])])
    after_kill = []
    for row in kills:
        if not row["to_ready_s"]:
            continue
        for name in ("to_ready_s", "restore_s", "to_assigned_s"):
            row[f"median_{name}"] = statistics.median(row[name])
        after_kill.append(row)
        membership = "static membership" if row["name"] == "static" else "dynamic membership"
        print(
            f"after SIGKILL ({membership}, history {runs[0]['history_events']:,}): restart to "
            f"ready median {row['median_to_ready_s']:.2f} s {row['to_ready_s']}, partitions "
            f"back after {row['median_to_assigned_s']:.2f} s {row['to_assigned_s']}"
        )
    ready = [r["median_to_ready_s"] for r in out]
    restore = [r["median_restore_s"] for r in out]
    result = {
        "runs": out,
        "after_sigkill": after_kill,
        # The target: the times within 20 % of each other, i.e. max / min <= 1.2.
        "to_ready_max_over_min": round(max(ready) / min(ready), 3),
        "restore_max_over_min": round(max(restore) / min(restore), 3),
    }
    print(
        f"medians, slowest / fastest: restart to ready {result['to_ready_max_over_min']}x, "
        f"restore {result['restore_max_over_min']}x (target: within 1.2x)"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
