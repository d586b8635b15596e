"""The service loop: records in, one learner per model key, outputs out, offsets committed.

It receives its adapters (a record source, an output sink, metrics) through small
interfaces and imports no Kafka itself. One batch at a time:

1. every record is decoded and handed to the core's
   :class:`~stream_learner.core.processor.Processor`, the one engine the replay drives too
   (events: learn or predict; labels: join and learn; control: commands; a retrain result
   whose apply point was reached is applied, run by the worker in ``retrainer.py``); what
   does not fit the contract or the model goes to the dead-letter topic with its reason,
   and the batch goes on; the processor's effects become logs and metrics here;
2. outputs are flushed, *then* the input positions are committed: an event whose
   prediction was not delivered is never marked done.

One key is one sequential learner; keys scale out over partitions and instances. A key
lives on one partition (Kafka message key = model key), so it has exactly one writer.

Checkpoints (when a store is given). A *round* for partition *p* snapshots every key of
*p* whose state changed since its last snapshot, each with the input positions it
reflects, then writes a partition record with those positions: every key of *p* is
captured as of them (a key unchanged since its own older snapshot had no input since).
On assignment the service loads each key's newest valid snapshot, starts *p* at the
partition record's positions, skips for each key what its snapshot already reflects,
and re-learns the rest; records before the group's committed offsets (outputs already
delivered) are re-learned *without* re-emitting their outputs. So a crash at any
instant loses nothing and learns nothing twice, and restart time depends on the
snapshot sizes and the records since the last round, not on the stream's history.
With a key budget (:meth:`Service.limit_keys`, ``service.max_keys``) the processor evicts
the least recently used keys (or a key that only passes through; see ``core/processor.py``)
to :class:`~stream_learner.keystore.EvictedKeys`: a cache
of their signed snapshots (trigger ``evict``, with the positions they reflect) that a
round writes to the checkpoint topic before its partition record, so the record's promise
— every key of the partition is on the topic as of its positions — holds for evicted keys
too, and a restart restores their newest snapshot like any other.
What the log no longer holds cannot be re-learned: a start below a partition's log start
(retention deleted records not learned yet) is moved up to it and reported once
(:meth:`Service.lost`: ``input_lost``), never reset silently.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from stream_learner.core.codec import KeyCodec
from stream_learner.core.collector import learning_thresholds
from stream_learner.core.commands import Command
from stream_learner.core.events import (
    MAX_EVENT_BYTES,
    MAX_FEATURE_NAME_CHARS,
    MAX_FEATURES,
    Event,
    RecordDecoder,
)
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import Learner, LearnerConfig, Outcome
from stream_learner.core.models import ModelSpec
from stream_learner.core.ordering import Merger
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.processor import (
    PAUSED,
    CommandIgnored,
    CommandTaken,
    Drift,
    KeyEvicted,
    KeyOpened,
    KeyReloaded,
    Pending,
    Processor,
    RetrainApplied,
    RetrainFailed,
    RetrainStarted,
    prediction,
)
from stream_learner.core.restore import (
    Gap,
    Reflected,
    Restored,
    RestorePlan,
    keep_none,
    partition_record,
    plan_restore,
    retention_gaps,
    snapshot_meta,
)
from stream_learner.core.retrain import RetrainConfig
from stream_learner.core.snapshot import SnapshotMeta
from stream_learner.errors import (
    BrokerError,
    ConfigError,
    DecodeError,
    FencedError,
    TransactionAborted,
)
from stream_learner.keystore import CheckpointTier, EvictedKeys, SpillFile
from stream_learner.logs import log_decision, log_event
from stream_learner.metrics import ServiceMetrics
from stream_learner.service.retrainer import Retrainer
from stream_learner.service.stall import StallWatch

if TYPE_CHECKING:
    from stream_learner.config import Config

log = logging.getLogger("stream_learner.service")

_JSON = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY  # predictions may hold numpy values

TopicPartition = tuple[str, int]

#: Decision actions after which a key serves another model version (its gauge follows).
_NEW_VERSION = frozenset({"promote", "rollback"})

# A periodic checkpoint round pickles each changed key, and pickling reads the live objects'
# __dict__, which CPython 3.11 makes them keep (a 5-12 % slower learner, for good; see
# core/pickling.py). After the round, a key that learned at least one event per this many
# bytes of its snapshot since it was last renewed is replaced by a copy (a pickle and an
# unpickle through the codec, ~0.05 us per byte of state, against ~1 us saved per event).
RENEW_BYTES_PER_EVENT = 8


class Record(Protocol):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None


class Source(Protocol):
    """The inputs (``kafka/source.py``; an in-memory one in the tests). ``start`` joins
    and, inside ``poll``, calls the service's ``on_assign``/``on_revoke``."""

    lag: Mapping[TopicPartition, int]
    assignment: set[TopicPartition]

    def start(self) -> None: ...
    def poll(self, max_messages: int, timeout: float) -> list[Record]: ...
    def commit(self, positions: Mapping[TopicPartition, int], *, wait: bool = True) -> None: ...
    def committed(self, tps: list[TopicPartition]) -> Mapping[TopicPartition, int]: ...
    def high_watermark(self, tp: TopicPartition) -> int | None: ...
    def log_starts(self, tps: list[TopicPartition]) -> Mapping[TopicPartition, int]: ...
    def group_metadata(self) -> Any: ...
    def rejoin(self) -> None: ...
    def close(self) -> None: ...


class Sink(Protocol):
    """The outputs (``kafka/sink.py``). A ``transactional`` sink commits the input
    positions with its outputs (``commit_transaction``); ``start`` runs before the first
    poll (an exactly-once sink fences a crashed predecessor there)."""

    transactional: bool

    def start(self) -> None: ...
    def produce(self, topic: str, value: bytes | None, *, key=None, headers=None) -> None: ...
    def flush(self, timeout: float = 10.0) -> int: ...
    def commit_transaction(
        self, positions: Mapping[TopicPartition, int], group_metadata: Any
    ) -> None: ...


class Store(Protocol):
    def publish(self, state: object, meta: SnapshotMeta) -> dict: ...
    def publish_record(self, key: str, value: dict | None) -> None: ...
    def read(
        self, timeout: float = 30.0, *, want: Callable[[Mapping[str, Any]], bool] | None = None
    ) -> Any: ...


@dataclass(frozen=True)
class CheckpointPolicy:
    """When rounds run: every ``every_events`` inputs of a partition or ``every_seconds``
    (whichever first; 0 switches one off), after a promoted retrain (that key), on
    revoke and on shutdown (always)."""

    every_events: int = 100_000
    every_seconds: float = 60.0
    after_retrain: bool = True


@dataclass(frozen=True)
class Topics:
    """Physical topic names, from the configured prefix."""

    events: str
    labels: str
    control: str
    predictions: str
    dead_letters: str
    checkpoints: str

    @classmethod
    def from_prefix(cls, prefix: str) -> Topics:
        return cls(
            events=f"{prefix}events",
            labels=f"{prefix}labels",
            control=f"{prefix}control",
            predictions=f"{prefix}predictions",
            dead_letters=f"{prefix}dead-letters",
            checkpoints=f"{prefix}checkpoints",
        )

    @property
    def inputs(self) -> list[str]:
        return [self.events, self.labels, self.control]


@dataclass(frozen=True)
class LearnerFactory:
    """Everything needed to start a key's learner from scratch."""

    spec: ModelSpec
    config: LearnerConfig
    policy: PolicyConfig
    retrain: RetrainConfig
    max_pending: int = 100_000
    max_age_s: float | None = 3600.0

    @classmethod
    def from_config(cls, config: Config) -> LearnerFactory:
        """The config's ``[model]``, ``[learner]``, ``[policy]`` and ``[retrain]`` (and the
        label bounds of ``[service]``); a bad or missing section is a ``ConfigError``."""
        if not config.model:
            raise ConfigError("model: the [model] section is missing; see examples/config.toml")
        return cls(
            spec=ModelSpec.from_dict(config.model, where="model"),
            config=LearnerConfig.from_dict(config.learner),
            policy=PolicyConfig.from_dict(config.policy),
            retrain=RetrainConfig.from_dict(config.retrain),
            max_pending=config.service.label_max_pending,
            max_age_s=config.service.label_max_age_s or None,
        )

    def __call__(self, key: str) -> Learner:
        return Learner(
            key,
            self.spec,
            config=self.config,
            policy=self.policy,
            retrain=self.retrain,
            max_pending=self.max_pending,
            max_age_s=self.max_age_s,
        )


def report_restore(plan: RestorePlan, metrics: ServiceMetrics) -> None:
    """Log a restore plan's notes and count what it refused (every runtime that restores)."""
    for note in plan.notes:
        level = logging.WARNING if note.warning else logging.INFO
        log_event(log, note.event, level=level, **note.fields)
    for rejection in plan.rejections:
        metrics.count_checkpoint("rejected")
        metrics.count_snapshot_rejection(rejection.reason)


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The headers of a dead letter, as every runtime writes them: the machine-readable
    ``dlq.reason``, the human ``dlq.detail`` (cut to 1,000 characters), where the record
    came from, and when it was dead-lettered (epoch milliseconds)."""
    return [
        ("dlq.reason", reason.encode()),
        ("dlq.detail", detail[:1000].encode()),
        ("dlq.source.topic", topic.encode()),
        ("dlq.source.partition", str(partition).encode()),
        ("dlq.source.offset", str(offset).encode()),
        ("dlq.timestamp", str(int(time.time() * 1000)).encode()),
    ]


class Service:
    """One instance of the continual-learning service; see the module docstring."""

    def __init__(
        self,
        *,
        factory: LearnerFactory,
        topics: Topics,
        source: Source,
        sink: Sink,
        metrics: ServiceMetrics,
        retrainer: Retrainer,
        batch_size: int = 500,
        poll_timeout_s: float = 0.02,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_event_features: int = MAX_FEATURES,
        max_feature_name_chars: int = MAX_FEATURE_NAME_CHARS,
        max_unseen_keys: int = 1000,
        store: Store | None = None,
        checkpoint_policy: CheckpointPolicy | None = None,
        stall: StallWatch | None = None,
        stall_limit_s: float = 10.0,
    ) -> None:
        self.factory = factory
        self.topics = topics
        self.source = source
        self.sink = sink
        self.metrics = metrics
        self.retrainer = retrainer
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        # New keys come from the codec's prototype (the factory's learner, cheaper to make);
        # with a key budget the codec also encodes the evicted ones.
        self.codec = KeyCodec(factory)
        # The keys, their learners and retrains: the core's one copy of the per-record steps.
        self.processor = Processor(self.codec.fresh, retrainer, max_unseen_keys=max_unseen_keys)
        self._renewed: dict[str, int] = {}  # key -> its learner's `learned` when last renewed
        self.positions: dict[TopicPartition, int] = {}
        self.caught_up = False
        self.batches = 0
        self.decoder = RecordDecoder(  # the same rules and bounds as a replay's
            max_event_bytes,
            max_features=max_event_features,
            max_name_chars=max_feature_name_chars,
        )
        self._touched: set[str] = set()
        self._counts: Counter[str] = Counter()
        self._learned = 0  # events learned in this batch (the hot path's own counter)
        self._dead: Counter[str] = Counter()
        # Resident key -> its join counts as last reported (see _evicted_key).
        self._joins: dict[str, tuple[int, int, int]] = {}
        # Checkpointing and restore.
        self.store = store
        self.checkpoint_policy = checkpoint_policy or CheckpointPolicy()
        self.consumed: dict[TopicPartition, int] = {}  # next offset, kept across commits
        self.dirty: set[str] = set()
        self._round_at: dict[int, tuple[int, float]] = {}  # partition -> (inputs, time)
        self._skip = Reflected()  # key -> input positions its restored state reflects
        self._replay: dict[TopicPartition, int] = {}  # committed offsets: outputs delivered
        self._emit = True
        self._snapshot_soon: set[str] = set()
        self.merger = Merger(topics.inputs)
        self.evicted: EvictedKeys | None = None  # with a key budget: see limit_keys
        # Fencing (service/stall.py): a batch's outputs are held until its end, and given up
        # with the state of every partition if the process stood still for stall_limit_s.
        self._held: list[tuple[str, bytes | None, Any, Any]] = []
        self.stall = stall
        self.stall_limit_s = stall_limit_s
        self._fenced = False  # state given up; the next assignment restores it afresh

    def limit_keys(self, max_keys: int, cache_bytes: int) -> None:
        """Keep at most ``max_keys`` keys in memory (0: no bound), evicting the least
        recently used ones to a cache of ``cache_bytes`` in front of the checkpoint topic
        (so a store is needed), with a local file of what left the cache for the topic:
        this process reads a key back from it, never from the topic. Call before
        :meth:`run`."""
        if not max_keys:
            return
        if self.store is None:
            raise ValueError("a key budget needs the checkpoint store (checkpoints.enabled)")
        self.evicted = EvictedKeys(  # the codec's compact pickles in the cache
            CheckpointTier(self.store, self.codec),
            self._eviction_meta,
            cache_bytes=cache_bytes,
            observer=self.metrics,
            trim_on_save=False,  # end_batch trims: a snapshot never precedes its outputs
            codec=self.codec,
            local=SpillFile(codec=self.codec),
        )
        self.processor.limit(max_keys, self.evicted)

    def _eviction_meta(self, key: str, partition: int, state: KeyState) -> SnapshotMeta:
        """An evicted key's snapshot reflects every input of its partition processed so far
        (the one in hand included: it is another key's, or a command the key already
        carried out) and, for a key still catching up, what its restored snapshot held."""
        offsets = self._positions(partition)
        for topic, by in offsets.items():
            now = self.positions.get((topic, partition))
            if now is not None and now > by[partition]:
                by[partition] = now
        for (topic, p), off in self._skip.positions(key).items():
            if p == partition and off > offsets.get(topic, {}).get(p, 0):
                offsets.setdefault(topic, {})[p] = off
        return self._meta(key, state, partition, "evict", offsets)

    @property
    def learners(self) -> dict[str, Learner]:
        return self.processor.learners

    @property
    def pending(self) -> dict[str, Pending]:
        return self.processor.pending

    # -- readiness ----------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        if not self.source.assignment:
            return False, "no partitions assigned yet"
        if not self.caught_up:
            return False, "catching up with the assigned partitions"
        return True, f"{len(self.source.assignment)} partitions, {len(self.learners)} keys"

    # -- the hot path -------------------------------------------------------------------
    def process(self, records: list[Record]) -> int:
        """Route a batch of records through the processor; returns how many were handled
        (all of them: what does not fit goes to the dead-letter topic)."""
        events, labels, control = self.topics.events, self.topics.labels, self.topics.control
        proc, decode_event, decode_label = self.processor, self.decoder.event, self.decoder.label
        effects = proc.effects
        positions = self.positions
        touched, counts = self._touched, self._counts
        skipping = self._skip.by_key  # keys restored mid-way through their input; mostly empty
        replay = self._replay
        # Per input, locals: a key is added to `touched` when it differs from the input's
        # before (an effect may take it out: after one, the next input adds it again).
        last_key, learned = None, 0
        try:
            for rec in records:
                # Unpacked once: a Record's fields read by name cost a descriptor call each.
                topic, partition, offset, raw_key, value, timestamp_ms = rec
                positions[topic, partition] = offset + 1
                if replay:
                    self._emit = self._replaying(rec)
                try:
                    if topic == events:
                        event = decode_event(value, raw_key, timestamp_ms)
                        key = event.key
                        if skipping and self._known(key, rec):
                            continue
                        out = proc.event(event, partition)
                        if out is PAUSED:
                            counts["paused"] += 1
                        else:
                            if key is not last_key:
                                touched.add(key)
                                last_key = key
                            if event.y is None:
                                self._predicted(event, out)
                            else:
                                learned += 1
                    elif topic == labels:
                        label = decode_label(value, raw_key, timestamp_ms)
                        key = label.key
                        if skipping and self._known(key, rec):
                            continue
                        out = proc.label(label, partition)
                        if out is PAUSED:
                            counts["paused"] += 1
                        else:
                            if key is not last_key:
                                touched.add(key)
                                last_key = key
                            if out is not None:
                                counts["learned"] += 1
                    elif topic == control:
                        cmd = self.decoder.command(value, raw_key)
                        skip = (lambda key, rec=rec: self._known(key, rec)) if skipping else None
                        proc.command(cmd, partition, skip=skip)
                except DecodeError as exc:
                    self.dead_letter(rec, exc.reason, exc.detail)
                if effects:
                    self._effects(effects)
                    last_key = None
        finally:
            self._learned += learned
        self._emit = True
        self.consumed.update(positions)
        return len(records)

    def _replaying(self, rec: Record) -> bool:
        """Whether outputs of ``rec`` are due: not when they were delivered before a crash."""
        tp = (rec.topic, rec.partition)
        end = self._replay.get(tp)
        if end is None:
            return True
        if rec.offset < end:
            self._counts["replayed"] += 1  # reported with the batch, like every count
            return False
        del self._replay[tp]
        return True

    def _known(self, key: str, rec: Record) -> bool:
        """Whether ``key``'s restored state already reflects ``rec`` (then it is skipped)."""
        return self._skip.known(key, rec.topic, rec.partition, rec.offset)

    def _predicted(self, event: Event, out: Outcome) -> None:
        if not self._emit:
            return
        body = prediction(event, out)
        self._held.append(
            (self.topics.predictions, orjson.dumps(body, option=_JSON), event.key, None)
        )
        self._counts["predicted"] += 1

    def dead_letter(self, rec: Record, reason: str, detail: str) -> None:
        if not self._emit:
            return
        headers = dead_letter_headers(reason, detail, rec.topic, rec.partition, rec.offset)
        self._held.append((self.topics.dead_letters, rec.value, rec.key, headers))
        self._dead[reason] += 1

    # -- what the processor did: logs, metrics, checkpoints ------------------------------
    def _effects(self, effects: list) -> None:
        """Turn the processor's effects into logs and metrics, then clear them. A rollback
        appends its decision while this runs; the loop reaches it too."""
        for effect in effects:
            kind = type(effect)
            if kind is Drift:
                self._drift(effect)
            elif kind is KeyOpened:
                learner = effect.learner
                self.metrics.set_model(effect.key, learner.version, learner.lineage)
            elif kind is RetrainStarted:
                job = effect.job
                log_event(
                    log,
                    "retrain_started",
                    key=effect.key,
                    number=job.number,
                    kind=job.kind,
                    n_train=len(job.train),
                    n_holdout=len(job.holdout),
                    apply_at=effect.due,
                )
            elif kind is RetrainApplied:
                self._applied(effect)
            elif kind is RetrainFailed:
                job = effect.job
                self.metrics.record_retrain(job.decision.trigger, job.kind, "failed", 0.0)
                log_event(
                    log, "retrain_failed", level=logging.ERROR, key=effect.key, error=effect.error
                )
                if effect.decision is not None:
                    self.metrics.count_decision(effect.decision.trigger, effect.decision.action)
            elif kind is CommandTaken:
                self._command_taken(effect.key, effect.command)
            elif kind is CommandIgnored:
                log_event(log, "command_ignored", key=effect.key, why=effect.why)
            elif kind is KeyEvicted:
                self._evicted_key(effect.key, effect.learner)
                if effect.passed:
                    self.metrics.passed()
            elif kind is KeyReloaded:
                # Its state may be newer than its snapshot on the topic: the next round
                # writes it (or its next eviction does).
                self.dirty.add(effect.key)
                self._renewed[effect.key] = effect.learner.learned  # unpickled: new objects
                self._joins[effect.key] = effect.joins
        effects.clear()

    def _evicted_key(self, key: str, learner: Learner) -> None:
        """A key left memory: its metrics as it left (the batch's report cannot see it),
        and its state is the evicted-key store's to write now, not a round's."""
        if key in self._touched:
            self.metrics.report_key(key, learner, self._joins)
            self._touched.discard(key)
        self.dirty.discard(key)
        self._renewed.pop(key, None)
        # Its join counts are reported up to here (they change only while it is touched),
        # and its state keeps them: they come back with it, not held for a million keys.
        self._joins.pop(key, None)

    def _drift(self, effect: Drift) -> None:
        for s in effect.signals:
            self.metrics.count_drift(s.detector, s.kind, s.level)
            log_event(
                log,
                "drift",
                key=effect.key,
                kind=s.kind,
                detector=s.detector,
                drift_level=s.level,
                direction=s.direction,
                index=s.index,
                before=s.before,
                after=s.after,
                feature=s.feature,
            )
        for d in effect.decisions:
            self.metrics.count_decision(d.trigger, d.action)
            log_decision(log, d)
            if d.action in _NEW_VERSION:
                learner = self.processor.learners[effect.key]
                self.metrics.set_model(effect.key, learner.version, learner.lineage)
                if d.code == "candidate_leads":  # the race promoted: as after a retrain
                    self._promoted(effect.key, d.values["source"])

    def _promoted(self, key: str, source: str) -> None:
        """A new model serves ``key`` (from a retrain, or the race's shadow or pool)."""
        self.metrics.count_promotions(source)
        self.metrics.mark_retrain(key, time.time())
        if self.store is not None and self.checkpoint_policy.after_retrain:
            self._snapshot_soon.add(key)

    def _applied(self, effect: RetrainApplied) -> None:
        key, decision, result = effect
        learner = self.processor.learners[key]
        outcome = "promoted" if decision.action == "promote" else "kept"
        self.metrics.count_decision(decision.trigger, decision.action)
        self.metrics.record_retrain(
            result.decision.trigger, result.kind, outcome, result.duration_s
        )
        self.metrics.set_model(key, learner.version, learner.lineage)
        if outcome == "promoted":
            self._promoted(key, "window")
        log_event(
            log,
            "retrain_" + outcome,
            key=key,
            version=learner.version,
            reason=decision.reason,
            duration_s=round(result.duration_s, 4),
            champion=result.champion_score,
            challenger=result.challenger_score,
        )

    def _command_taken(self, key: str, cmd: Command) -> None:
        """Log a command; carry out the ones that need the checkpoint store."""
        log_event(
            log,
            "command",
            command=cmd.command,
            key=key,
            reason=cmd.reason,
            requested_by=cmd.requested_by,
        )
        if cmd.command == "snapshot":
            if self.store is not None and key in self.processor.learners:
                self.dirty.add(key)
                self._snapshot_soon.add(key)
        elif cmd.command == "rollback":
            self._rollback(key, cmd)

    # -- batch boundaries ---------------------------------------------------------------
    def end_batch(self, *, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Deliver outputs, then commit positions, then update metrics; nothing of it if
        the process stood still meanwhile (:meth:`stood_still`)."""
        if self.stood_still():
            return
        self.flush(should_stop)
        self.commit(should_stop, wait=False)
        self.dirty |= self._touched
        self._report()
        if self.store is not None:
            self._checkpoints()  # FencedError if it stood still meanwhile: see run()
        if self.evicted is not None:
            # Evicted keys' snapshots reflect this batch's inputs: written to the topic
            # only now that its outputs are delivered and its offsets committed.
            self.evicted.trim()

    def flush(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Hand the held outputs to the sink and wait until every one is delivered."""
        held, self._held = self._held, []
        produce = self.sink.produce
        for topic, value, key, headers in held:
            produce(topic, value, key=key, headers=headers)
        waited = 0.0
        while self.sink.flush(1.0) > 0:
            waited += 1.0
            if int(waited) % 10 == 0:
                log_event(
                    log,
                    "waiting_for_kafka",
                    level=logging.WARNING,
                    what="output delivery",
                    waited_s=waited,
                )
            if should_stop() and waited >= 30:
                raise BrokerError("outputs could not be delivered within 30 s of shutdown")

    def commit(self, should_stop: Callable[[], bool] = lambda: False, *, wait: bool = True):
        """Commit the positions processed since the last commit (outputs are delivered).
        Per batch it does not wait for the broker; on revoke and shutdown it does."""
        if not self.positions:
            return
        positions = self.positions
        if self._replay:
            # Below the committed offset a restart only rebuilds state: committing those
            # positions would move the group's offset back, and the next restart would emit
            # again what was delivered before (exactly-once duplicates after two crashes).
            replay = self._replay
            positions = {tp: off for tp, off in positions.items() if off > replay.get(tp, -1)}
        if self.sink.transactional:
            # Outputs and input positions in one transaction. One that did not commit is
            # given up whole, as a stall is (:meth:`fence`): its outputs are invisible, so
            # the state that produced them goes too and the batch is read again from the
            # last committed positions.
            try:
                self.sink.commit_transaction(positions, self.source.group_metadata())
            except TransactionAborted as exc:
                self.fence("transaction", rejoin=False, error=str(exc), code=exc.code)
                # An abandoned producer is fenced now, before the committed offsets are read
                # again: a commit of its still in flight either lands first or never.
                self.sink.start()
                raise FencedError(str(exc)) from None
            self.positions = {}
            return
        delay = 0.5
        while positions:
            try:
                self.source.commit(positions, wait=wait)
                break
            except BrokerError as exc:
                if should_stop():
                    raise
                log_event(log, "commit_retry", level=logging.WARNING, error=str(exc))
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.positions = {}

    def _report(self) -> None:
        m = self.metrics
        if self._learned:
            self._counts["learned"] += self._learned
            self._learned = 0
        for outcome, n in self._counts.items():
            m.count_events(outcome, n)
        self._counts.clear()
        for reason, n in self._dead.items():
            m.count_events("dead_lettered", n)
            m.count_dead_letters(reason, n)
        self._dead.clear()
        learners = self.learners
        m.report_keys(
            ((key, learners[key]) for key in self._touched if key in learners), self._joins
        )
        self._touched.clear()
        m.set_keys(len(self.learners), len(self.processor.evicted))
        for (topic, partition), lag in list(self.source.lag.items()):
            m.set_lag(topic, partition, lag)
        m.set_assigned_partitions(len(self.source.assignment))
        ready, _ = self.readiness()
        m.set_ready(ready)

    # -- checkpoints --------------------------------------------------------------------
    def _positions(self, partition: int) -> dict[str, dict[int, int]]:
        return {t: {partition: self.consumed.get((t, partition), 0)} for t in self.topics.inputs}

    def _inputs(self, partition: int) -> int:
        return sum(self.consumed.get((t, partition), 0) for t in self.topics.inputs)

    def snapshot(self, key: str, trigger: str) -> dict:
        """Publish ``key``'s whole state (learner, retrain in flight, paused) with the input
        positions it reflects."""
        state = self.processor.state(key)
        learner = state.learner
        partition = self.processor.partitions[key]
        meta = self._meta(key, state, partition, trigger, self._positions(partition))
        started = time.perf_counter()
        header = self.store.publish(state, meta)
        self.dirty.discard(key)
        self.metrics.record_checkpoint(key, header["payload_size"], time.time())
        self.metrics.count_checkpoint("written")
        log_event(
            log,
            "checkpoint",
            key=key,
            trigger=trigger,
            version=learner.version,
            bytes=header["payload_size"],
            ms=round(1000 * (time.perf_counter() - started), 1),
        )
        return header

    def _meta(
        self, key: str, state: KeyState, partition: int, trigger: str, offsets: dict
    ) -> SnapshotMeta:
        return snapshot_meta(
            key,
            state,
            partition=partition,
            events_topic=self.topics.events,
            offsets=offsets,
            trigger=trigger,
        )

    def checkpoint_round(self, partition: int, trigger: str) -> int:
        """Snapshot every changed key of ``partition``, then record the round's positions."""
        partitions, learners = self.processor.partitions, self.processor.learners
        keys = sorted(k for k in self.dirty if partitions.get(k) == partition and k in learners)
        for key in keys:
            header = self.snapshot(key, trigger)
            if trigger == "periodic":
                self._renew(key, header["payload_size"])
        if self.evicted is not None:  # evicted keys' snapshots not on the topic yet
            written = self.evicted.flush(partition)
            if written:
                log_event(log, "evicted_written", partition=partition, keys=written)
        offsets = {
            t: {str(p): o for p, o in by.items()} for t, by in self._positions(partition).items()
        }
        self.store.publish_record(
            partition_record(self.topics.events, partition),
            {"offsets": offsets, "keys": len(keys), "trigger": trigger, "ts": time.time()},
        )
        self._round_at[partition] = (self._inputs(partition), time.monotonic())
        return len(keys)

    def _renew(self, key: str, size: int) -> None:
        """Replace ``key``'s learner by a copy once it learned enough since its last one
        (see :data:`RENEW_BYTES_PER_EVENT`)."""
        learned = self.processor.learners[key].learned
        if (learned - self._renewed.get(key, 0)) * RENEW_BYTES_PER_EVENT < size:
            return
        if self.processor.renew(key, self.codec.copy):
            self._renewed[key] = learned

    def _owned(self) -> list[int]:
        return sorted({p for t, p in self.source.assignment if t == self.topics.events})

    def _checkpoints(self) -> None:
        for key in sorted(self._snapshot_soon):
            if key in self.processor.learners:
                self.snapshot(key, "command" if key in self.dirty else "retrain")
        self._snapshot_soon.clear()
        policy, now = self.checkpoint_policy, time.monotonic()
        partitions = self.processor.partitions
        for partition in self._owned():
            inputs_at, time_at = self._round_at.setdefault(partition, (0, now))
            if not any(partitions.get(k) == partition for k in self.dirty) and not (
                self.evicted is not None and self.evicted.unwritten(partition)
            ):
                continue
            by_count = (
                policy.every_events and self._inputs(partition) - inputs_at >= policy.every_events
            )
            by_time = policy.every_seconds and now - time_at >= policy.every_seconds
            if by_count or by_time:
                self.checkpoint_round(partition, "periodic")

    def restore(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Load the newest valid snapshot of each key of the assigned partitions; return
        where each input partition must start (see the module docstring): never below its
        log start, and a start claimed below it is reported as lost input (:meth:`lost`)."""
        committed = {tp: off for tp, off in self.source.committed(partitions).items() if off >= 0}
        log_starts = self.source.log_starts(partitions)
        # Every partition gets an explicit start: the consumer never resets one by itself.
        starts = {tp: committed.get(tp, 0) for tp in partitions}
        claimed = dict(committed)
        if self.store is not None:
            owned = {p for t, p in partitions if t == self.topics.events}
            events = self.topics.events
            # Two passes over the topic: the headers, then each chosen snapshot's bytes as
            # they stream by, adopted at once (a million keys' bytes are not held at once).
            catalog = self.store.read(want=keep_none)  # waits out a new topic
            lineage = self.factory.spec.lineage
            if self.evicted is not None:  # what restored keys evict is on the topic already
                self.evicted.restoring = True
            try:  # each key adopted as it is loaded (evicted at once past the budget)
                plan = plan_restore(
                    catalog,
                    owned,
                    events,
                    self.topics.inputs,
                    lineage,
                    adopt=self._adopt,
                    fetch=self.store.fetch,
                )
            finally:
                if self.evicted is not None:
                    self.evicted.restoring = False
                    if self.processor.effects:
                        self._effects(self.processor.effects)
            report_restore(plan, self.metrics)
            self._skip.prune(plan.starts)  # the final starts are never below the plan's
            starts.update(plan.starts)
            # Restored state needs input from its own positions; a partition rebuilt from
            # its log needs none, but its outputs need it from the committed offset on.
            claimed.update({tp: plan.starts[tp] for tp in plan.claimed})
        starts, gaps = retention_gaps(starts, claimed, log_starts)
        for tp, start in starts.items():
            self.consumed[tp] = start
            if committed.get(tp, -1) > start:
                self._replay[tp] = committed[tp]
        # Where each input resumes and up to where its outputs were delivered before: what a
        # duplicate or a gap after a restart is traced back to.
        log_event(
            log,
            "resuming",
            starts={f"{t}[{p}]": off for (t, p), off in sorted(starts.items())},
            committed={f"{t}[{p}]": off for (t, p), off in sorted(committed.items())},
        )
        for gap in gaps:
            self.lost(gap)
        for partition in {p for t, p in partitions if t == self.topics.events}:
            # The next periodic round counts from here, not from 0.
            self._round_at[partition] = (self._inputs(partition), time.monotonic())
        return starts

    def lost(self, gap: Gap) -> None:
        """Say once that ``gap``'s records were deleted before they were learned: a warning,
        the lost-input counter, and an ``input_lost`` decision on every key of the partition
        this instance holds. The source then reads on from the log start."""
        log_event(
            log,
            "input_lost",
            level=logging.WARNING,
            topic=gap.topic,
            partition=f"{gap.topic}[{gap.partition}]",
            first_lost=gap.first_lost,
            log_start=gap.log_start,
            lost=gap.lost,
            action="continuing from the log start; the records before it were deleted "
            "(retention) before they were learned",
        )
        self.metrics.count_input_lost(gap.lost)
        tp = (gap.topic, gap.partition)
        if self.consumed.get(tp, 0) < gap.log_start:
            self.consumed[tp] = gap.log_start
        partitions = self.processor.partitions
        for key in sorted(k for k, p in partitions.items() if p == gap.partition):
            learner = self.processor.resident(key)  # an evicted key is reloaded for it
            if self.processor.effects:
                self._effects(self.processor.effects)
            d = learner.input_lost(gap.topic, gap.partition, gap.first_lost, gap.log_start)
            self.metrics.count_decision(d.trigger, d.action)
            self.dirty.add(key)  # the next round keeps the record
            log_decision(log, d)

    def _adopt(self, restored: Restored) -> None:
        key, header, state = restored.key, restored.header, restored.state
        learner = state.learner
        self.processor.adopt(
            key, learner, restored.partition, paused=state.paused, pending=state.pending
        )
        if self.processor.effects:  # an eviction's: not kept for every key restored
            self._effects(self.processor.effects)
        self._skip.add(key, header["offsets"])
        self._renewed[key] = learner.learned  # unpickled: new objects
        self._joins[key] = learner.joiner.counts
        self.metrics.set_model(key, learner.version, learner.lineage)
        self.metrics.count_checkpoint("restored")
        log_event(
            log,
            "restored",
            key=key,
            version=learner.version,
            index=learner.index,
            bytes=header.get("payload_size"),
            trigger=header.get("trigger"),
        )

    def _rollback(self, key: str, cmd: Command) -> None:
        """Serve an older version again, as a new version (the log says which). A version
        of another lineage (``replay --rebuild --publish``) is adopted with its spec.

        The version may be in the key's staging slot, where the CLI stages a rebuild: the
        store's writer never touches that slot, so the snapshot is still there however many
        checkpoints this instance wrote meanwhile. Adopting it does not delete it (the slot
        is the CLI's to write; its next staged publish replaces it); the snapshot taken
        soon after is what a restart restores."""
        learner = self.learners.get(key)
        if self.store is None or learner is None or cmd.version is None:
            log_event(
                log,
                "rollback_ignored",
                level=logging.WARNING,
                key=key,
                why="no checkpoint store or no such key on this instance",
            )
            return
        catalog = self.store.read(want=lambda header: header.get("key") == key)  # its bytes only
        loaded = catalog.load(key, cmd.version, staged=cmd.staged)
        if loaded is None:
            _rollback_failed(key, cmd.version, "no valid snapshot of that version")
            return
        restored = KeyState.of(loaded[1]).learner
        before = learner.lineage
        try:  # a snapshot of another lineage (a rebuild) switches the spec too
            self.processor.rollback(key, restored.model, cmd.version, cmd.reason, restored.spec)
        except ValueError as exc:
            _rollback_failed(key, cmd.version, str(exc))
            return
        if learner.lineage != before:
            log_event(
                log,
                "lineage_adopted",
                key=key,
                version=learner.version,
                lineage=learner.lineage,
                previous_lineage=before,
                from_version=cmd.version,
            )
        self._snapshot_soon.add(key)  # its decision is the processor's next effect

    # -- rebalancing --------------------------------------------------------------------
    def on_assign(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.caught_up = False
        self._fenced = False
        log_event(log, "assigned", partitions=[f"{t}[{p}]" for t, p in partitions])
        starts = self.restore(partitions)
        self.metrics.set_assigned_partitions(len(self.source.assignment))
        return starts

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        """Hand off cleanly: deliver outputs, commit, and snapshot before partitions move
        (unless the state was given up already: :meth:`fence`)."""
        if not self._fenced and not self.stood_still(rejoin=False):
            try:
                self.flush()
                self.commit()
                if self.store is not None:
                    self.dirty |= self._touched
                    for partition in sorted({p for t, p in partitions if t == self.topics.events}):
                        self.checkpoint_round(partition, "revoke")
            except FencedError:  # fenced already (a transaction), or it stood still now
                self.stood_still(rejoin=False)
        self._drop(partitions)
        log_event(log, "revoked", partitions=[f"{t}[{p}]" for t, p in partitions])

    def on_lost_partitions(self, partitions: list[TopicPartition]) -> None:
        """The group gave ``partitions`` to another instance while this one was not there
        (its session expired): their state here is a stale owner's, so none of it is
        handed over (no outputs, commits or snapshots); the new owner restored them from the
        last checkpoint and the committed offsets."""
        # Called from a poll: the last batch's outputs and positions are handed over already.
        self.metrics.count_fenced("partitions_lost")
        log_event(
            log,
            "partitions_lost",
            level=logging.WARNING,
            partitions=[f"{t}[{p}]" for t, p in partitions],
            action="dropped their state unpublished; the group's new owner has them",
        )
        self._drop(partitions)

    def stood_still(self, *, rejoin: bool = True) -> bool:
        """Whether the process stood still long enough since the last look that another
        instance may own its partitions now; if so, it :meth:`fence` s itself first."""
        gap = self._stale()
        if not gap:
            return False
        self.stall.clear()
        self.fence("stall", rejoin=rejoin, stood_still_s=round(gap, 1), limit_s=self.stall_limit_s)
        return True

    def _stale(self) -> float:
        """How long the process stood still, if that was long enough to be a stale owner
        now (0.0 if not): looked at before anything is handed over."""
        stall = self.stall
        if stall is None:
            return 0.0
        gap = stall.stood_still_s()
        return gap if gap >= self.stall_limit_s else 0.0

    def fence(self, why: str, *, rejoin: bool = True, **details: object) -> None:
        """Give up everything not handed over yet — the batch's held outputs, uncommitted
        positions, every key's state — and rejoin the group. Its next assignment restores
        each partition from the last checkpoint and the committed offsets, as a restart
        would. ``why``: ``stall`` (the group may have given its partitions to another while
        it stood still, and publishing what it held would be a stale owner's) or
        ``transaction`` (an exactly-once batch that did not commit: its outputs are gone,
        so the state that learned from it must go too)."""
        partitions = sorted(self.source.assignment)
        log_event(
            log,
            "fenced",
            level=logging.WARNING,
            why=why,
            **details,
            partitions=[f"{t}[{p}]" for t, p in partitions],
            dropped_outputs=len(self._held),
            action="state dropped unpublished; rejoining the group to restore from checkpoints",
        )
        self.metrics.count_fenced(why)
        self._held = []
        self.positions = {}
        self._touched.clear()
        self._counts.clear()
        self._dead.clear()
        self._learned = 0
        self._drop(partitions)
        self._fenced = True
        self.caught_up = False
        self.metrics.set_ready(False)
        if rejoin:  # not from inside a rebalance: that one assigns afresh by itself
            self.source.rejoin()

    def _drop(self, partitions: list[TopicPartition]) -> None:
        """Forget ``partitions``: their keys, buffered records and positions."""
        gone = {p for t, p in partitions if t == self.topics.events}
        for key in self.processor.drop(gone):
            self._joins.pop(key, None)
            self._renewed.pop(key, None)
            self._skip.discard(key)
            self.dirty.discard(key)
            self.metrics.forget_key(key)
        self.merger.drop(partitions)
        for t, p in partitions:
            self.metrics.forget_partition(t, p)
            self._replay.pop((t, p), None)
            self.consumed.pop((t, p), None)
        for p in gone:
            self._round_at.pop(p, None)
        self.metrics.set_assigned_partitions(len(self.source.assignment) - len(partitions))

    def _all_caught_up(self) -> bool:
        """Ready: partitions assigned, every one read to its end, nothing left buffered."""
        assignment = self.source.assignment
        return (
            bool(assignment)
            and not self.merger.pending()
            and all(self._caught_up(tp) for tp in assignment)
        )

    def _caught_up(self, tp: TopicPartition) -> bool:
        high = self.source.high_watermark(tp)
        return high is not None and self.consumed.get(tp, 0) >= high

    # -- the loop -----------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool]) -> None:
        """Consume until ``should_stop()``; then finish the batch, flush, commit, close."""
        self.retrainer.start(self.factory.spec)
        self.sink.start()  # before consuming: see KafkaSink.start (exactly-once restarts)
        self.source.start()
        if self.stall is not None:
            self.stall.start()
        if self.store is not None:
            self.store.may_write = lambda: not self._stale()
        with learning_thresholds():  # the loop's garbage collection: core/collector.py
            try:
                while not should_stop():
                    polled = self.source.poll(self.batch_size, self.poll_timeout_s)
                    if self.stood_still():
                        continue  # fenced: what was polled is read again after the rejoin
                    self.merger.push(polled)
                    records = self.merger.pop_ready(self._caught_up, time.monotonic())
                    if records:
                        started = time.perf_counter()
                        try:
                            self.process(records)
                            self.end_batch(should_stop=should_stop)
                        except FencedError:  # a write it may no longer make, or a lost transaction
                            if not self.stood_still() and self._fenced:
                                self.source.rejoin()
                            continue
                        self.metrics.observe_batch(time.perf_counter() - started, len(records))
                        self.batches += 1
                    if not self.caught_up and self._all_caught_up():
                        self.caught_up = True
                        self.metrics.set_ready(True)
                        log_event(log, "caught_up", keys=len(self.learners))
            finally:
                try:
                    if not self._fenced and not self.stood_still(rejoin=False):
                        try:
                            self.flush(should_stop)
                            self.commit(should_stop)
                            if self.store is not None:
                                for partition in self._owned():
                                    self.checkpoint_round(partition, "shutdown")
                        except FencedError:  # the next owner replays what was not handed over
                            self.stood_still(rejoin=False)
                    self.source.close()
                    self.retrainer.close()
                    if self.evicted is not None:
                        self.evicted.close()
                    self.metrics.set_ready(False)
                finally:
                    if self.stall is not None:
                        self.stall.stop()


def _rollback_failed(key: str, version: int | None, why: str) -> None:
    log_event(log, "rollback_failed", level=logging.WARNING, key=key, version=version, why=why)
