"""``stream-learner demo``: the whole loop on a real broker, in a few minutes.

Starts the local Kafka when needed, creates a fresh set of topics, runs the service,
and produces a labelled synthetic stream with an abrupt concept drift half-way plus
prediction requests whose labels arrive later. The terminal shows live progress;
the summary shows the drift detected, the retrain promoted and accuracy recovering.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import orjson
from confluent_kafka.admin import AdminClient

from stream_learner.cli.service_cmd import build_service
from stream_learner.config import KafkaSettings, load_config
from stream_learner.errors import BrokerError
from stream_learner.kafka.client import (
    check_reachable,
    client_config,
    local_bootstrap,
    resolve_bootstrap,
)
from stream_learner.kafka.sink import KafkaSink
from stream_learner.kafka.topics import apply, default_topics_file, load_topics, plan
from stream_learner.logs import configure_logging
from stream_learner.synth import GENERATORS, demo_messages

EXAMPLE_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "config.toml"


def register(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo",
        help="run the full loop on a local Kafka: drift, retrain, recovery",
        description="Start the local broker if needed, create fresh demo topics, run the "
        "service, stream a synthetic labelled stream with an abrupt drift half-way, and "
        "print live progress and a summary.",
    )
    demo.add_argument("--events", type=int, default=20_000, help="events to stream")
    demo.add_argument("--generator", choices=GENERATORS, default="sea")
    demo.add_argument(
        "--unlabelled",
        type=float,
        default=0.1,
        help="share of events sent as prediction requests, labelled later",
    )
    demo.add_argument("--config", type=Path, default=EXAMPLE_CONFIG, help="service config")
    demo.add_argument("--bootstrap", help="Kafka bootstrap (default: the local broker)")
    demo.add_argument("--http-port", type=int, default=0, help="metrics port (0: any free)")
    demo.add_argument("--timeout", type=float, default=150.0, help="give up after this long")
    demo.add_argument("--keep", action="store_true", help="keep the demo topics afterwards")
    demo.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="keep the service and its metrics endpoint up this long at the end",
    )
    demo.set_defaults(func=_demo)

    produce = sub.add_parser(
        "demo-produce",
        help="produce the demo's synthetic drifting stream to a running service's topics",
        description="Produce labelled events with an abrupt concept drift, plus prediction "
        "requests whose labels follow later, to <prefix>events and <prefix>labels.",
    )
    produce.add_argument("--events", type=int, default=20_000, help="events per key")
    produce.add_argument("--change-at", type=int, help="event of the drift (default: half-way)")
    produce.add_argument("--generator", choices=GENERATORS, default="sea")
    produce.add_argument(
        "--unlabelled", type=float, default=0.1, help="share of prediction requests, labelled later"
    )
    produce.add_argument("--keys", default="default", help="comma-separated model keys")
    produce.add_argument("--prefix", default=KafkaSettings().topic_prefix, help="topic prefix")
    produce.add_argument("--bootstrap", help="Kafka bootstrap (default: $STREAM_LEARNER_BOOTSTRAP)")
    produce.set_defaults(func=_produce_only)


def produce_stream(
    bootstrap: str,
    prefix: str,
    n: int,
    generator: str,
    change_at: int,
    unlabelled: float,
    keys: tuple[str, ...] = ("default",),
) -> dict[str, int]:
    """Produce the synthetic stream; record timestamps are event time, so the service
    merges events and their delayed labels in order."""
    sink = KafkaSink(bootstrap)
    sent = {"events": 0, "labels": 0}
    for msg in demo_messages(
        n,
        generator=generator,
        change_at=change_at,
        keys=keys,
        unlabelled_share=unlabelled,
        label_delay=100,
    ):
        ts_ms = int(msg.value["ts"] * 1000)
        sink.produce(prefix + msg.topic, orjson.dumps(msg.value), key=msg.key, timestamp_ms=ts_ms)
        sent[msg.topic] += 1
    if sink.close(timeout=60) > 0:
        raise BrokerError(f"the stream was not delivered to {bootstrap} within 60 s")
    return sent


def _produce_only(args: argparse.Namespace) -> int:
    bootstrap = resolve_bootstrap(args.bootstrap)
    check_reachable(bootstrap, timeout=10)
    sent = produce_stream(
        bootstrap,
        args.prefix,
        args.events,
        args.generator,
        args.change_at if args.change_at is not None else args.events // 2,
        args.unlabelled,
        tuple(args.keys.split(",")),
    )
    print(
        f"produced {sent['events']} events and {sent['labels']} delayed labels "
        f"to {args.prefix}events / {args.prefix}labels"
    )
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _demo(args: argparse.Namespace) -> int:
    configure_logging("WARNING")
    bootstrap = resolve_bootstrap(args.bootstrap)
    if bootstrap == local_bootstrap():
        from stream_learner.kafka.local import LocalBroker

        status, started = LocalBroker().up()
        _say(f"kafka      {'started' if started else 'already up'} at {status.bootstrap}")
    run_id = time.strftime("%Y%m%d-%H%M%S")
    prefix = f"stream-learner.demo-{run_id}."
    spec = load_topics(default_topics_file(), prefix=prefix)
    admin = AdminClient(client_config(bootstrap))
    created = apply(admin, plan(spec, admin))
    _say(f"topics     {len(created)} created with prefix {prefix}")

    config = load_config(args.config)
    # A throw-away signing key for this run's snapshots (a real deployment sets its own).
    key_file = Path(tempfile.mkdtemp(prefix="stream-learner-demo-")) / "snapshot.key"
    key_file.write_text(secrets.token_hex(32))
    key_file.chmod(0o600)
    config = replace(
        config,
        checkpoints=replace(config.checkpoints, signing_key=f"file:{key_file}"),
        kafka=KafkaSettings(bootstrap, prefix, f"demo-{run_id}", config.kafka.client),
        service=replace(config.service, http_port=args.http_port),
    )
    built = build_service(config, bootstrap)
    service = built.service
    stop = threading.Event()
    built.http.start()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            service.run(stop.is_set)
        except BaseException as exc:  # reported below, in the main thread
            failure.append(exc)
            stop.set()

    worker = threading.Thread(target=serve, daemon=True)
    worker.start()
    _say(f"service    metrics at {built.http.url}/metrics (ready: {built.http.url}/readyz)")

    change_at = args.events // 2
    sent = produce_stream(
        bootstrap, prefix, args.events, args.generator, change_at, args.unlabelled
    )
    _say(
        f"producer   {sent['events']} events and {sent['labels']} delayed labels sent "
        f"({args.generator}, concept drift at event {change_at})"
    )

    total = sent["events"] + sent["labels"]
    started = time.monotonic()
    last, history = 0, []
    learner, idle = None, 0
    try:
        while time.monotonic() - started < args.timeout and not stop.is_set():
            time.sleep(1.0)
            learner = service.learners.get("default", learner)
            index = learner.index if learner else 0
            rate = index - last
            last = index
            if learner is None:
                _say("progress   waiting for the first events ...")
                continue
            acc = learner.evaluator.values().get("accuracy_rolling", float("nan"))
            drifts = sum(1 for d in learner.decisions if d.trigger == "performance")
            history.append((index, acc, learner.version))
            _say(
                f"progress   {index:>6}/{total} inputs  {rate:>6} /s  rolling accuracy "
                f"{acc:.3f}  model v{learner.version}  drift decisions {drifts}"
            )
            idle = idle + 1 if rate == 0 else 0
            if index >= total or idle >= 5:  # all in, or nothing more is coming
                break
        if failure:
            raise failure[0]
        _summary(learner, change_at)
        if history:
            accs = [acc for _, acc, _ in history]
            low = min(range(len(accs)), key=accs.__getitem__)
            _say(
                f"  rolling accuracy in the progress samples: {accs[0]:.3f} first, "
                f"{accs[low]:.3f} lowest, {accs[-1]:.3f} at the end"
            )
        if args.linger > 0:
            _say(
                f"metrics    still served at {built.http.url}/metrics for {args.linger:g} s "
                "(Ctrl-C to end sooner)"
            )
            with contextlib.suppress(KeyboardInterrupt):
                time.sleep(args.linger)
    finally:
        stop.set()
        worker.join(timeout=30)
        built.http.stop()
    if not args.keep:
        admin.delete_topics([spec.physical(t.name) for t in spec.topics], operation_timeout=30)
    return 0


def _summary(learner, change_at: int) -> None:
    if learner is None:
        _say("summary    no events were processed")
        sys.exit(1)
    _say("summary")
    for d in learner.decisions:
        if d.action in ("retrain", "promote", "keep") or d.trigger == "performance":
            _say(f"  event {d.index:>6}  {d.trigger:<12} {d.action:<8} {d.reason}")
    values = learner.evaluator.values()
    _say(
        f"  final: model v{learner.version}, accuracy {values.get('accuracy', float('nan')):.3f} "
        f"(rolling {values.get('accuracy_rolling', float('nan')):.3f}), "
        f"{learner.learned} learned, {learner.predicted} predicted"
    )
