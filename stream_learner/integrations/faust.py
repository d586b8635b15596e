"""Continual learning inside a Faust app (``pip install 'stream-learner[faust]'``).

:class:`FaustLearner` adds to a ``faust.App`` one agent over the service's input topics
(events, labels, control: the same contract) that feeds an embedded
:class:`~stream_learner.embed.StreamLearner`, so the app learns exactly as ``stream-learner
run`` does and shares everything around it with the service:

- predictions go to the same predictions topic, one per request, keyed by model key;
- what the contract or the model refuses goes to the same dead-letter topic with the
  service's headers (``dlq.reason``, ``dlq.detail``, ``dlq.source.*``);
- every key gets its learner on first sight; retrains run inline or, with
  ``service.retrain_in_worker``, in the service's worker process;
- Prometheus series of the same names as the service's, labelled ``runtime="faust"``, on
  the app's own web server at ``/metrics`` (so the dashboard and alerts apply);
- checkpoints on the service's checkpoint topic — keyed, signed and laid out as the
  service writes them, on the config's ``[checkpoints]`` cadence, a round per partition on
  revoke and at shutdown — restored when the app's partitions are assigned. ``stream-learner
  checkpoints``, ``replay --from-checkpoint`` and ``run`` read them, and the app restores
  what the service wrote.

Positions live in the checkpoints, not in the app's consumer group: the input topics are
consumed with ``acks=False`` (Faust commits no offset for them), and on assignment each
partition is sought to where its restored state needs input from (the service's restore
plan), records a key's snapshot already holds being skipped. So a crash loses no learning
and learns nothing twice. Outputs of the records between the last round and a crash are
published again after the restart (at least once; the service, which also commits offsets,
re-emits none).

Faust's agent is much slower than the service's loop (see the README's figures): this is
for teams whose processing already runs in Faust; the service stays the fast path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from stream_learner.config import Config, load_config
from stream_learner.core.ordering import Merger
from stream_learner.core.processor import (
    Drift,
    KeyOpened,
    RetrainApplied,
    RetrainFailed,
)
from stream_learner.embed import Result, StreamLearner, checkpoint_store
from stream_learner.errors import ConfigError, DecodeError, StreamLearnerError
from stream_learner.logs import JsonFormatter, log_decision, log_event
from stream_learner.metrics import ServiceMetrics
from stream_learner.service.runtime import dead_letter_headers, report_restore

try:
    import faust
    from faust.types import TP
except ImportError as exc:  # pragma: no cover - the base install has no Faust
    raise ConfigError(
        "the Faust integration needs faust-streaming: pip install 'stream-learner[faust]'"
    ) from exc

__all__ = ["FaustLearner", "faust_app"]

log = logging.getLogger("stream_learner.faust")

_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_RAW = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
#: Inputs between two looks at the checkpoint cadence and two metric updates.
REPORT_EVERY = 500
#: The agent takes up to BATCH records at a time, waiting at most BATCH_WITHIN_S for them.
BATCH = 500
BATCH_WITHIN_S = 0.02


def faust_app(config: Config, *, app_id: str | None = None, **settings: Any) -> faust.App:
    """A ``faust.App`` on the config's broker (``$STREAM_LEARNER_BOOTSTRAP`` first), its
    consumer group named after the config's (``<group_id>-faust``) unless ``app_id``;
    ``settings`` go to ``faust.App`` (``web_port``, ...)."""
    import os

    from stream_learner.kafka.client import BOOTSTRAP_ENV, resolve_bootstrap

    bootstrap = resolve_bootstrap(os.environ.get(BOOTSTRAP_ENV) or config.kafka.bootstrap)
    brokers = ";".join(f"kafka://{b.strip()}" for b in bootstrap.split(","))
    # Faust declares only its internal topics (its assignor's); the service's topics are
    # `stream-learner topics apply`'s, and the app reads a partition never checkpointed
    # from its start, as the service does.
    settings.setdefault("consumer_auto_offset_reset", "earliest")
    return faust.App(app_id or f"{config.kafka.group_id}-faust", broker=brokers, **settings)


class FaustLearner:
    """The learner of a Faust app; see the module docstring.

    ``config``: a :class:`~stream_learner.config.Config` or the path of the service's TOML
    file. ``store``: where checkpoints go (default: the config's checkpoint topic, if
    ``checkpoints.enabled``). ``json_logs``: the integration's log lines (checkpoints,
    decisions, restores) as the service's JSON lines on stderr.
    """

    def __init__(
        self,
        app: faust.App,
        config: Config | str | Path,
        *,
        store: Any = None,
        json_logs: bool = True,
    ) -> None:
        if not isinstance(config, Config):
            config = load_config(config)
        if store is None and config.checkpoints.enabled:
            store = checkpoint_store(config)
        self.app = app
        self.config = config
        self.learner = StreamLearner(config, store=store)
        self.metrics = ServiceMetrics(
            runtime="faust", max_keys=config.service.max_key_labels, lag=self.lag
        )
        self.topics = topics = self.learner.topics
        self.inputs = app.topic(topics.events, topics.labels, topics.control, acks=False, **_RAW)
        self.predictions = app.topic(topics.predictions, **_RAW)
        self.dead_letters = app.topic(topics.dead_letters, **_RAW)
        self.owned: set[int] = set()  # events partitions whose keys this app holds
        self._touched: set[str] = set()
        self._counts: Counter[str] = Counter()  # events by outcome, since the last report
        self._joins: dict[str, tuple[int, int, int]] = {}  # key -> joiner counts reported
        self._since = 0
        self._last_report = time.monotonic()
        # A key's events, labels and commands in event-time order, as the service merges
        # them (core/ordering.py): Faust fetches the topics independently.
        self.merger = Merger(topics.inputs)
        self._fetched: dict[tuple[str, int], int] = {}  # next offset fetched per partition
        self._draining = asyncio.Lock()
        app.agent(self.inputs, name="stream_learner.learn")(self._agent)
        app.timer(0.2)(self._drain)  # what waited for other partitions, once they are read
        app.task(self._start)
        app.page("/metrics")(self._metrics_page)
        app.on_partitions_assigned.connect(self._on_assigned)
        app.on_partitions_revoked.connect(self._on_revoked)
        app.on_before_shutdown.connect(self._on_shutdown)
        if json_logs:
            _json_logs()

    # -- the agent -------------------------------------------------------------------------

    async def _start(self) -> None:
        self.learner.start()  # the retrain worker, when the config runs retrains in one

    async def _agent(self, stream: Any) -> None:
        # In batches (up to BATCH records or BATCH_WITHIN_S): one merge per batch, and
        # Faust's per-message hand-over costs less.
        fetched = self._fetched
        async for events in stream.take_events(BATCH, within=BATCH_WITHIN_S):
            records = []
            for event in events:
                m = event.message
                ts = None if m.timestamp is None else int(m.timestamp * 1000)
                records.append(_Record(m.topic, m.partition, m.offset, m.key, m.value, ts))
                fetched[m.topic, m.partition] = m.offset + 1
            self.merger.push(records)
            await self._drain()

    async def _drain(self) -> None:
        """Handle what the merger releases, in event-time order (one drain at a time: the
        agent and the timer both call it)."""
        async with self._draining:
            for record in self.merger.pop_ready(self._caught_up, time.monotonic()):
                await self.handle(
                    record.topic,
                    record.partition,
                    record.offset,
                    record.key,
                    record.value,
                    record.timestamp_ms,
                )

    def _caught_up(self, tp: tuple[str, int]) -> bool:
        """Whether ``tp`` has nothing more to read now (the merger waits for the others)."""
        try:
            high = self.app.consumer.highwater(TP(*tp))
        except Exception:  # not assigned (any more)
            return True
        if high is None:
            return False
        return max(self._fetched.get(tp, 0), self.learner.consumed.get(tp, 0)) >= high

    async def handle(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
    ) -> Result | None:
        """One input record: learn or predict (and publish the prediction), join a label,
        or carry out a command; a record that does not fit is dead-lettered."""
        sl, topics, metrics = self.learner, self.topics, self.metrics
        result: Result | None = None
        try:
            if topic == topics.events:
                result = sl.event(
                    value, key=key, timestamp_ms=timestamp_ms, partition=partition, offset=offset
                )
            elif topic == topics.labels:
                result = sl.label(
                    value, key=key, timestamp_ms=timestamp_ms, partition=partition, offset=offset
                )
            else:
                self._effects(sl.command(value, key=key, partition=partition, offset=offset))
        except DecodeError as exc:
            headers = dead_letter_headers(exc.reason, exc.detail, topic, partition, offset)
            await self.dead_letters.send(key=key, value=value, headers=headers)
            metrics.count_events("dead_lettered", 1)
            metrics.count_dead_letters(exc.reason)
        except StreamLearnerError as exc:  # a rollback the store cannot serve: logged
            log_event(log, "command_failed", level=logging.WARNING, error=str(exc))
        if result is not None:
            self._result(result)
            if result.prediction is not None:
                body = orjson.dumps(result.prediction, option=_JSON)
                await self.predictions.send(key=result.key.encode(), value=body)
        self._since += 1
        if self._since >= REPORT_EVERY or time.monotonic() - self._last_report >= 1.0:
            self.tick()
        return result

    def _result(self, result: Result) -> None:
        kind = result.kind
        if kind == "learned" or kind == "predicted":
            self._touched.add(result.key)
            self._counts[kind] += 1  # to the metric at the next report, as the service does
        elif kind == "paused" or kind == "skipped":
            self._counts["paused" if kind == "paused" else "replayed"] += 1
        else:
            self._touched.add(result.key)
        if result.effects:
            self._effects(result.effects)

    # -- what happened: metrics, logs, checkpoints ------------------------------------------

    def _effects(self, effects: Iterable[Any]) -> None:
        m = self.metrics
        for effect in effects:
            kind = type(effect)
            if kind is KeyOpened:
                m.set_model(effect.key, effect.learner.version, effect.learner.lineage)
            elif kind is Drift:
                for s in effect.signals:
                    m.count_drift(s.detector, s.kind, s.level)
                for d in effect.decisions:
                    m.count_decision(d.trigger, d.action)
                    log_decision(log, d)
                    if d.action in ("promote", "rollback"):
                        learner = self.learner.learners[effect.key]
                        m.set_model(effect.key, learner.version, learner.lineage)
                        if d.code == "candidate_leads":
                            m.count_promotions(d.values["source"])
                            m.mark_retrain(effect.key, time.time())
            elif kind is RetrainApplied:
                d, result = effect.decision, effect.result
                outcome = "promoted" if d.action == "promote" else "kept"
                m.count_decision(d.trigger, d.action)
                m.record_retrain(result.decision.trigger, result.kind, outcome, result.duration_s)
                log_decision(log, d)
                if outcome == "promoted":
                    learner = self.learner.learners[effect.key]
                    m.set_model(effect.key, learner.version, learner.lineage)
                    m.count_promotions("window")
                    m.mark_retrain(effect.key, time.time())
            elif kind is RetrainFailed:
                m.record_retrain(effect.job.decision.trigger, effect.job.kind, "failed", 0.0)
                log_event(
                    log, "retrain_failed", level=logging.ERROR, key=effect.key, error=effect.error
                )

    def tick(self) -> None:
        """Per-key metrics, then the checkpoints the cadence says are due (the agent calls
        it every few hundred inputs or every second)."""
        self._since = 0
        self._last_report = time.monotonic()
        self.report()
        if self.learner.store is not None:
            for header in self.learner.checkpoint_due():
                self._written(header)

    def report(self) -> None:
        """Event counts, and per-key metrics of the keys touched, since the last report."""
        m, learners = self.metrics, self.learner.learners
        for outcome, n in self._counts.items():
            m.count_events(outcome, n)
        self._counts.clear()
        m.report_keys(
            ((key, learners[key]) for key in self._touched if key in learners), self._joins
        )
        self._touched.clear()

    def lag(self) -> dict[tuple[str, int], int]:
        """Records not handled yet per assigned input partition: the broker's high
        watermark (as of the consumer's last fetch) less the next offset to handle."""
        out: dict[tuple[str, int], int] = {}
        try:
            consumer = self.app.consumer
            assignment = consumer.assignment()
        except Exception:  # not started, or stopping: no partitions to speak of
            return out
        consumed = self.learner.consumed
        for tp in assignment:
            high = consumer.highwater(tp)
            if high is not None:
                out[tp.topic, tp.partition] = max(
                    high - consumed.get((tp.topic, tp.partition), 0), 0
                )
        return out

    def _written(self, header: dict[str, Any]) -> None:
        key = header["key"]
        self.metrics.count_checkpoint("written")
        self.metrics.record_checkpoint(key, header["payload_size"], time.time())
        log_event(
            log,
            "checkpoint",
            key=key,
            trigger=header.get("trigger"),
            version=header.get("model_version"),
            bytes=header["payload_size"],
        )

    def checkpoint(self, partitions: Iterable[int], trigger: str) -> None:
        """A round for each of ``partitions`` (its changed keys, then its positions)."""
        if self.learner.store is None:
            return
        for partition in sorted(partitions):
            for header in self.learner.checkpoint(partition, trigger):
                self._written(header)

    # -- rebalancing and shutdown ---------------------------------------------------------

    async def _on_assigned(self, app: Any, assigned: set[TP], **_: Any) -> None:
        """Restore the newly assigned partitions' keys and seek every input partition to
        where their state needs input from."""
        events = self.topics.events
        mine = {tp.partition for tp in assigned if tp.topic == events}
        new = sorted(mine - self.owned)
        self.owned |= mine
        self.metrics.set_assigned_partitions(len(assigned))
        if not new or self.learner.store is None:
            return
        plan = self.learner.restore(new)
        report_restore(plan, self.metrics)
        for restored in plan.restored:
            learner = restored.state.learner
            self.metrics.set_model(restored.key, learner.version, learner.lineage)
            self.metrics.count_checkpoint("restored")
            self._joins[restored.key] = learner.joiner.counts
            log_event(
                log, "restored", key=restored.key, version=learner.version, index=learner.index
            )
        for (topic, partition), start in sorted(plan.starts.items()):
            tp = TP(topic, partition)
            if tp in assigned:
                await app.consumer.seek(tp, start)
                self._fetched[topic, partition] = start

    async def _on_revoked(self, app: Any, revoked: set[TP], **_: Any) -> None:
        """Checkpoint the revoked partitions' keys, then let them go."""
        gone = {tp.partition for tp in revoked if tp.topic == self.topics.events} & self.owned
        if not gone:
            return
        async with self._draining:
            self.merger.drop([(tp.topic, tp.partition) for tp in revoked])
            for tp in revoked:
                self._fetched.pop((tp.topic, tp.partition), None)
        self.tick()
        self.checkpoint(gone, "revoke")
        for key in self.learner.forget(gone):
            self.metrics.forget_key(key)
            self._joins.pop(key, None)
        self.owned -= gone

    async def _on_shutdown(self, app: Any, **_: Any) -> None:
        """A last round for every partition held, then the retrain worker and the store."""
        self.tick()
        self.checkpoint(self.owned, "shutdown")
        for key, learner in sorted(self.learner.learners.items()):
            log_event(
                log,
                "final",
                key=key,
                version=learner.version,
                lineage=learner.lineage,
                metrics=learner.evaluator.values(),
            )
        self.learner.close()
        close = getattr(self.learner.store, "close", None)
        if close is not None:
            close()

    async def _metrics_page(self, request: Any) -> Any:
        """``GET /metrics`` on the app's web server (Faust calls a method view with the
        request alone)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        self.report()
        body = generate_latest(self.metrics.registry)
        return self.app.web.bytes(body, content_type=CONTENT_TYPE_LATEST.split(";")[0])


class _Record:
    """A fetched input record, as the merger orders them."""

    __slots__ = ("key", "offset", "partition", "timestamp_ms", "topic", "value")

    def __init__(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp_ms = timestamp_ms


def _json_logs() -> None:
    """The integration's lines as JSON on stderr, whatever Faust does with the root logger."""
    root = logging.getLogger("stream_learner")
    if any(h.get_name() == "stream_learner.faust" for h in root.handlers):
        return
    handler = logging.StreamHandler()
    handler.set_name("stream_learner.faust")
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False
