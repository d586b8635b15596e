"""``stream-learner run`` (the service) and ``stream-learner retrain`` (an on-demand request).

This is where configuration meets adapters: the config file picks the model, the
policy and the topics; the Kafka source and sink, the metrics endpoint and the
retrain worker are built here and handed to :class:`~stream_learner.service.Service`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass

from stream_learner.config import (
    CheckpointSettings,
    Config,
    KafkaSettings,
    load_config,
    resolve_secret,
)
from stream_learner.core.commands import ALL_KEYS, Command
from stream_learner.core.restore import Gap
from stream_learner.core.snapshot import load_signing_key
from stream_learner.errors import BrokerError, ConfigError
from stream_learner.http import HealthServer
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.client import BOOTSTRAP_ENV, check_reachable, resolve_bootstrap
from stream_learner.kafka.health import KafkaHealth
from stream_learner.kafka.identity import AUTO, Identity, claim_instance_id
from stream_learner.kafka.sink import KafkaSink
from stream_learner.kafka.source import SESSION_TIMEOUT_MS, KafkaSource
from stream_learner.logs import configure_logging, json_stderr, log_event
from stream_learner.metrics import ServiceMetrics
from stream_learner.service.retrainer import Retrainer
from stream_learner.service.runtime import CheckpointPolicy, LearnerFactory, Service, Topics
from stream_learner.service.stall import StallWatch

log = logging.getLogger("stream_learner.cli")


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run the continual-learning service",
        description="Join the consumer group on the events, labels and control topics, learn "
        "one model per key, publish predictions, dead-letter bad input, serve /metrics, "
        "/healthz and /readyz. Stops cleanly on SIGTERM/SIGINT.",
    )
    run.add_argument("--config", required=True, help="TOML config file (see examples/)")
    run.add_argument("--bootstrap", help=f"Kafka bootstrap (default: ${BOOTSTRAP_ENV}, config)")
    run.add_argument("--http-port", type=int, help="metrics/health port (0: any free port)")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    run.add_argument(
        "--max-seconds", type=float, help="stop by itself after this long (demos and tests)"
    )
    run.set_defaults(func=_run)

    retrain = sub.add_parser(
        "retrain",
        help="ask the running service to retrain a key now",
        description="Produce a 'retrain' command to the control topic; the instance that owns "
        "the key runs it through the trigger policy like any other trigger.",
    )
    retrain.add_argument("--key", required=True, help=f"model key, or '{ALL_KEYS}' for all")
    retrain.add_argument("--reason", default="", help="why (kept in the decision log)")
    retrain.add_argument("--config", help="TOML config file (for the topic prefix)")
    retrain.add_argument("--prefix", help="topic prefix (default: the config's)")
    retrain.add_argument("--bootstrap", help=f"Kafka bootstrap (default: ${BOOTSTRAP_ENV})")
    retrain.set_defaults(func=_retrain)


@dataclass
class Built:
    service: Service
    http: HealthServer
    bootstrap: str
    identity: Identity | None = None  # the source holds the claimed slot until it closes
    health: KafkaHealth | None = None


def group_identity(kafka: KafkaSettings) -> Identity | None:
    """The instance's static group membership id (see ``kafka/identity.py``): a
    ``group.instance.id`` under ``[kafka.client]`` wins, then ``kafka.instance_id``
    ("auto": claimed and persisted per machine; "": dynamic membership)."""
    explicit = kafka.client.get("group.instance.id")
    if explicit:
        return Identity(str(explicit))
    if not kafka.instance_id:
        return None
    if kafka.instance_id != AUTO:
        return Identity(kafka.instance_id)
    return claim_instance_id(kafka.group_id, kafka.instance_dir or None)


def core_factory(config: Config) -> LearnerFactory:
    return LearnerFactory.from_config(config)


def signing_key(settings: CheckpointSettings, env=None) -> bytes | None:
    """The snapshot HMAC key; refuses to go on without one unless ``insecure_dev``."""
    env = os.environ if env is None else env
    ref = settings.signing_key
    if ref:
        if not ref.startswith(("env:", "file:")):
            raise ConfigError(
                "checkpoints.signing_key: give a reference (env:NAME or file:PATH), "
                "never the key itself"
            )
        key = load_signing_key(env, value=resolve_secret(ref, "checkpoints.signing_key", env))
    else:
        key = load_signing_key(env)
    if key is None and not settings.insecure_dev:
        raise ConfigError(
            "checkpoints: no snapshot signing key; set STREAM_LEARNER_SNAPSHOT_KEY (or "
            'STREAM_LEARNER_SNAPSHOT_KEY_FILE, or checkpoints.signing_key = "env:NAME"). '
            "Unsigned snapshots are for development only: checkpoints.insecure_dev = true"
        )
    if key is None:
        log_event(
            log,
            "insecure_checkpoints",
            level=logging.WARNING,
            why="checkpoints.insecure_dev is set: snapshots are not signed",
        )
    return key


def stall_limit_s(client: dict) -> float:
    """How long the process may stand still before it gives up its partitions' unpublished
    state (service/stall.py): half the group session, so it always fences itself before
    the group could have given its partitions to another member."""
    value = client.get("session.timeout.ms", SESSION_TIMEOUT_MS)
    try:
        session_ms = int(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f'kafka.client."session.timeout.ms": must be a whole number of ms, got {value!r}'
        ) from None
    return session_ms / 2000


def build_service(config: Config, bootstrap: str, *, http_port: int | None = None) -> Built:
    """Wire a config to real adapters; nothing touches the network until ``run``."""
    factory = core_factory(config)
    settings = config.service
    topics = Topics.from_prefix(config.kafka.topic_prefix)
    identity = group_identity(config.kafka)
    metrics = ServiceMetrics(
        runtime="service",  # the Faust integration's say "faust" (see metrics.py)
        max_keys=settings.max_key_labels,
        instance=identity.id if identity else None,
        lag=lambda: source.lag,  # the broker's view, fresh between batches too
    )
    extra = dict(config.kafka.client)
    extra.pop("group.instance.id", None)  # the consumer's alone: see group_identity()
    health = KafkaHealth(settings.outage_grace_s)
    # Exactly-once outputs. The consumer group's metadata fences a zombie's offset commits
    # (KIP-447); a transactional id that is stable across restarts also lets the restarted
    # instance abort a crashed predecessor's open transaction at once, instead of readers
    # waiting for it to time out. With static membership (group.instance.id) it is derived
    # from that; otherwise it is unique per process and transaction.timeout.ms bounds the wait.
    txn_id = None
    if settings.exactly_once:
        txn_id = f"{config.kafka.group_id}-{identity.id if identity else uuid.uuid4().hex[:12]}"
    sink = KafkaSink(bootstrap, extra, transactional_id=txn_id, health=health)
    service: Service

    def on_assign(tps):
        return service.on_assign(tps)  # start offsets of restored state

    def on_revoke(tps):
        service.on_revoke(tps)

    def on_lost(tps):
        service.on_lost_partitions(tps)

    def on_gap(topic, partition, first_lost, log_start):
        service.lost(Gap(topic, partition, first_lost, log_start))

    source = KafkaSource(
        bootstrap,
        config.kafka.group_id,
        topics.inputs,
        extra=extra,
        on_assign=on_assign,
        on_revoke=on_revoke,
        on_lost=on_lost,
        on_gap=on_gap,
        identity=identity,
        health=health,
    )
    service = Service(
        factory=factory,
        topics=topics,
        source=source,
        sink=sink,
        metrics=metrics,
        retrainer=Retrainer(
            workers=1 if settings.retrain_in_worker else 0, apply_after=settings.retrain_apply_after
        ),
        batch_size=settings.batch_size,
        poll_timeout_s=settings.poll_timeout_s,
        max_event_bytes=settings.max_event_bytes,
        max_event_features=settings.max_event_features,
        max_feature_name_chars=settings.max_feature_name_chars,
        max_unseen_keys=settings.label_max_unseen_keys,
        stall=StallWatch(),
        stall_limit_s=stall_limit_s(extra),
    )
    port = settings.http_port if http_port is None else http_port
    if config.checkpoints.enabled:
        cp = config.checkpoints
        service.store = CheckpointStore(
            bootstrap,
            topics.checkpoints,
            signing_key=signing_key(cp),
            keep_versions=cp.keep_versions,
            chunk_bytes=cp.chunk_bytes,
            extra=extra,
        )
        service.checkpoint_policy = CheckpointPolicy(
            cp.every_events, cp.every_seconds, cp.after_retrain
        )
        service.limit_keys(settings.max_keys, int(settings.evicted_cache_mb * 1024 * 1024))
    elif settings.max_keys:
        raise ConfigError(
            "service.max_keys: a key budget keeps evicted keys on the checkpoint topic; "
            "set checkpoints.enabled = true (or max_keys = 0)"
        )

    def ready() -> tuple[bool, str]:
        """Doing its job: Kafka usable (problems within the grace ridden out), then the
        service's own answer (assigned, caught up)."""
        usable, reason = health.check()
        return service.readiness() if usable else (False, reason)

    metrics.ready_from(ready)
    metrics.watch_kafka(health.ages)
    http = HealthServer(metrics.registry, host=settings.http_host, port=port, ready=ready)
    return Built(service, http, bootstrap, identity, health)


def wait_for_broker(bootstrap: str, extra: dict, max_wait_s: float) -> None:
    """Wait with backoff for Kafka to answer, logging each attempt; bounded."""
    deadline = time.monotonic() + max_wait_s
    delay, attempt = 1.0, 0
    while True:
        attempt += 1
        try:
            check_reachable(bootstrap, timeout=10, extra=extra)
            return
        except BrokerError as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrokerError(f"{exc} (gave up after {max_wait_s:g}s)") from None
            log_event(
                log,
                "waiting_for_kafka",
                level=logging.WARNING,
                bootstrap=bootstrap,
                attempt=attempt,
                retry_in_s=round(min(delay, left), 1),
                error=str(exc),
            )
            time.sleep(min(delay, left))
            delay = min(delay * 2, 30.0)


def _run(args: argparse.Namespace) -> int:
    configure_logging(args.log_level)
    json_stderr()  # Python's warnings, stray prints and crashes as JSON lines too
    config = load_config(args.config)
    # --bootstrap, then $STREAM_LEARNER_BOOTSTRAP, then the config file, then the local broker.
    bootstrap = resolve_bootstrap(
        args.bootstrap or os.environ.get(BOOTSTRAP_ENV) or config.kafka.bootstrap
    )
    built = build_service(config, bootstrap, http_port=args.http_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, stop.set)
        timer.daemon = True  # must not keep a stopped service alive
        timer.start()
    wait_for_broker(bootstrap, dict(config.kafka.client), config.service.broker_wait_s)
    built.http.start()
    built.health.start()  # an outage past the grace is an ERROR line even if nobody asks
    log_event(
        log,
        "started",
        bootstrap=bootstrap,
        http=built.http.url,
        group=config.kafka.group_id,
        instance_id=built.identity.id if built.identity else None,
        topics=built.service.topics.inputs,
        lineage=built.service.factory.spec.lineage,
    )
    try:
        built.service.run(stop.is_set)
    finally:
        built.http.stop()
        built.health.close()
    log_event(log, "stopped", batches=built.service.batches)
    return 0


def _retrain(args: argparse.Namespace) -> int:
    from confluent_kafka.admin import AdminClient

    from stream_learner.kafka.client import client_config

    prefix = args.prefix
    extra: dict = {}
    if prefix is None:
        if args.config:
            config = load_config(args.config)
            prefix, extra = config.kafka.topic_prefix, dict(config.kafka.client)
        else:
            prefix = KafkaSettings().topic_prefix
    bootstrap = resolve_bootstrap(args.bootstrap)
    check_reachable(bootstrap, timeout=10, extra=extra)
    topic = Topics.from_prefix(prefix).control
    cmd = Command("retrain", key=args.key, reason=args.reason, requested_by="cli", ts=time.time())
    sink = KafkaSink(bootstrap, extra)
    if args.key == ALL_KEYS:
        meta = AdminClient(client_config(bootstrap, extra)).list_topics(topic, timeout=10)
        partitions = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        if not partitions:
            raise BrokerError(f"control topic {topic} does not exist; run 'topics apply'")
        for p in partitions:
            sink.produce(topic, cmd.to_json(), partition=p)
    else:
        sink.produce(topic, cmd.to_json(), key=args.key)
    if sink.close(timeout=15) > 0:
        raise BrokerError(f"the retrain command was not delivered to {topic} within 15 s")
    print(f"retrain requested for key {args.key!r} on {topic}")
    return 0
