"""The learner as a library: for teams whose stream processing already runs elsewhere.

:class:`StreamLearner` is built from the same TOML file (or dict) as ``stream-learner run``
and holds one learner per model key, created on a key's first input. Feed it events and
delayed labels — raw message bytes, dicts of the same contract, or decoded
:class:`~stream_learner.core.events.Event` / :class:`~stream_learner.core.events.Label` —
and it says what happened in a :class:`Result`: the prediction message the service would
publish, the outcome, the trigger policy's decisions. Input that does not fit raises
:class:`~stream_learner.errors.DecodeError` whose ``reason`` is the one the service
dead-letters it with (``bad_label``, ``x_not_object``, ``unseen_key``, ...).

It is a thin layer over the core's :class:`~stream_learner.core.processor.Processor`, the
one engine the service and the replay drive: the decoding, the per-record steps and the
retrain points are theirs. Retrains run inline or, with ``service.retrain_in_worker``, in
the service's worker process (``service/retrainer.py``); either way a result is applied
``service.retrain_apply_after`` inputs of its key later, so the same input promotes the
same model everywhere.

Checkpoints (with a ``store``): each key's snapshot is signed and written exactly as the
service writes it, with the input positions it reflects, to the same keys of the same
store; :meth:`StreamLearner.checkpoint` writes a partition's round and
:meth:`StreamLearner.restore` takes partitions over from the newest valid snapshots, so
the service restores what an embedding wrote and the other way round. Positions are the
caller's (``offset=`` of each input); without them a snapshot reflects no input.

>>> sl = StreamLearner.from_dict({"model": {"task": "binary", "pipeline": [
...     {"estimator": "linear_model.LogisticRegression"}]}})
>>> sl.event({"id": "e1", "key": "fraud", "x": {"amount": 3.0}}).prediction["y_pred"]
False
>>> sl.label(b'{"id": "e1", "y": true}', key="fraud").kind
'learned'
>>> sl.label({"id": "e1", "key": "fraud", "y": "yes"})
Traceback (most recent call last):
...
stream_learner.errors.DecodeError: bad_label: y: 'yes' does not fit task 'binary'; ...
>>> sl.close()
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_learner.config import Config, load_config, parse_config
from stream_learner.core.commands import Command
from stream_learner.core.events import Event, Label, RecordDecoder
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import Learner, Outcome
from stream_learner.core.policy import Decision
from stream_learner.core.processor import (
    PAUSED,
    CommandTaken,
    Drift,
    InlineRunner,
    Processor,
    RetrainApplied,
    prediction,
)
from stream_learner.core.restore import (
    Reflected,
    RestorePlan,
    partition_record,
    plan_restore,
    restore_want,
    snapshot_meta,
)
from stream_learner.errors import ConfigError, DecodeError, SnapshotError
from stream_learner.service.retrainer import Retrainer
from stream_learner.service.runtime import CheckpointPolicy, LearnerFactory, Topics

__all__ = ["Result", "StreamLearner", "checkpoint_store"]

TopicPartition = tuple[str, int]

#: What one input did (:attr:`Result.kind`).
KINDS = ("learned", "predicted", "parked", "paused", "skipped")


@dataclass(frozen=True, slots=True)
class Result:
    """What one event or label did.

    ``kind``: ``learned`` (a labelled event, or a label joined to its prediction),
    ``predicted`` (a prediction request: ``prediction`` is the message the service
    publishes), ``parked`` (a label before its prediction, or after it expired),
    ``paused`` (the key is paused), ``skipped`` (a restored snapshot already holds it).
    ``effects``: the processor's effects of this input (drift, decisions, retrains).
    """

    kind: str
    key: str
    outcome: Outcome | None = None
    prediction: dict[str, Any] | None = None
    effects: tuple[Any, ...] = ()

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """The trigger policy's decisions taken on this input, retrain results included."""
        out: list[Decision] = []
        for effect in self.effects:
            if type(effect) is Drift:
                out.extend(effect.decisions)
            elif type(effect) is RetrainApplied:
                out.append(effect.decision)
        return tuple(out)


class StreamLearner:
    """Per-key learners of one config; see the module docstring.

    ``store``: a checkpoint store (:func:`checkpoint_store` for the config's checkpoint
    topic, or the core's ``MemoryCheckpointStore``). ``retrain_in_worker`` overrides the
    config's ``service.retrain_in_worker``: the worker process starts with :meth:`start`
    or the first retrain, and stops with :meth:`close`.
    """

    def __init__(
        self,
        config: Config,
        *,
        store: Any = None,
        retrain_in_worker: bool | None = None,
    ) -> None:
        self.config = config
        self.factory = LearnerFactory.from_config(config)
        self.topics = Topics.from_prefix(config.kafka.topic_prefix)
        service = config.service
        if retrain_in_worker is None:
            retrain_in_worker = service.retrain_in_worker
        if retrain_in_worker:  # the worker starts with start(), or with the first retrain
            runner: Any = Retrainer(workers=1, apply_after=service.retrain_apply_after)
        else:
            runner = InlineRunner(service.retrain_apply_after)
        self.runner = runner
        self.processor = Processor(
            self.factory, runner, max_unseen_keys=service.label_max_unseen_keys
        )
        self.decoder = RecordDecoder(
            service.max_event_bytes,
            max_features=service.max_event_features,
            max_name_chars=service.max_feature_name_chars,
        )
        self.store = store
        cp = config.checkpoints
        self.cadence = CheckpointPolicy(cp.every_events, cp.every_seconds, cp.after_retrain)
        self.consumed: dict[TopicPartition, int] = {}  # next offset of each input partition
        self.dirty: set[str] = set()  # keys changed since their last snapshot
        self.promoted: set[str] = set()  # keys to snapshot now (after_retrain)
        self._reflected = Reflected()
        self._round_at: dict[int, tuple[int, float]] = {}

    @classmethod
    def from_toml(cls, path: str | Path, **kwargs: Any) -> StreamLearner:
        """Build from a TOML file, as ``stream-learner run --config`` reads it."""
        return cls(load_config(path), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **kwargs: Any) -> StreamLearner:
        """Build from the config's tables as a dict (environment overrides apply)."""
        return cls(parse_config(data), **kwargs)

    @property
    def learners(self) -> Mapping[str, Learner]:
        return self.processor.learners

    # -- inputs ------------------------------------------------------------------------

    def event(
        self,
        value: bytes | Mapping[str, Any] | Event,
        *,
        key: bytes | str | None = None,
        timestamp_ms: int | None = None,
        partition: int = 0,
        offset: int | None = None,
    ) -> Result:
        """Learn a labelled event or predict a request. ``key``: the message key (it
        routes; the body's ``key`` may only repeat it); ``timestamp_ms``: the record's
        time, used when the body has no ``ts``; ``offset``: its position on the events
        topic (for checkpoints and restores)."""
        topic = self.topics.events
        if offset is not None:  # a record that does not fit is handled too (dead-lettered)
            self.consumed[topic, partition] = offset + 1
        if isinstance(value, Event):
            event = value
        else:
            event = self.decoder.event(_raw(value), _key(key), timestamp_ms)
        if self._known(event.key, topic, partition, offset):
            return Result("skipped", event.key)
        out = self.processor.event(event, partition)
        if out is PAUSED:
            return Result("paused", event.key, effects=self._drain())
        self.dirty.add(event.key)
        if event.y is None:
            return Result("predicted", event.key, out, prediction(event, out), self._drain())
        return Result("learned", event.key, out, None, self._drain())

    def label(
        self,
        value: bytes | Mapping[str, Any] | Label,
        *,
        key: bytes | str | None = None,
        timestamp_ms: int | None = None,
        partition: int = 0,
        offset: int | None = None,
    ) -> Result:
        """Join a delayed label to its prediction and learn it (see :meth:`event`)."""
        topic = self.topics.labels
        if offset is not None:
            self.consumed[topic, partition] = offset + 1
        if isinstance(value, Label):
            label = value
        else:
            label = self.decoder.label(_raw(value), _key(key), timestamp_ms)
        if self._known(label.key, topic, partition, offset):
            return Result("skipped", label.key)
        out = self.processor.label(label, partition)
        if out is PAUSED:
            return Result("paused", label.key, effects=self._drain())
        self.dirty.add(label.key)
        kind = "parked" if out is None else "learned"
        return Result(kind, label.key, out, None, self._drain())

    def command(
        self,
        value: bytes | Mapping[str, Any] | Command,
        *,
        key: bytes | str | None = None,
        partition: int = 0,
        offset: int | None = None,
    ) -> tuple[Any, ...]:
        """Carry out a control command (``pause``, ``resume``, ``retrain``, ``snapshot``,
        ``rollback``; ``*`` for every key of ``partition``), as the service does; returns
        the effects. ``snapshot`` and ``rollback`` need the store."""
        topic = self.topics.control
        if offset is not None:
            self.consumed[topic, partition] = offset + 1
        cmd = value if isinstance(value, Command) else self.decoder.command(_raw(value), _key(key))
        skip = None
        if offset is not None and self._reflected:

            def skip(k: str) -> bool:
                return self._reflected.known(k, topic, partition, offset)

        self.processor.command(cmd, partition, skip=skip)
        effects = list(self._drain())
        for effect in list(effects):
            if type(effect) is not CommandTaken or effect.key not in self.processor.learners:
                continue
            self.dirty.add(effect.key)  # paused, resumed or retraining: a new state
            if effect.command.command == "snapshot" and self.store is not None:
                self.promoted.add(effect.key)  # written by the next checkpoint_due()
            elif effect.command.command == "rollback":
                self._rollback(effect.key, effect.command)
                effects += self._drain()
        return tuple(effects)

    def _rollback(self, key: str, cmd: Command) -> None:
        """Serve an older version (of any lineage) again as the key's next version; a
        version that is not in the store, or of another task, is a ``SnapshotError``."""
        if cmd.version is None:
            raise SnapshotError(f"rollback of {key!r}: the command names no version")
        catalog = self._store().read(want=lambda header: header.get("key") == key)
        loaded = catalog.load(key, cmd.version, staged=cmd.staged)
        if loaded is None:
            raise SnapshotError(f"rollback of {key!r}: no valid snapshot of v{cmd.version}")
        restored = KeyState.of(loaded[1]).learner
        try:
            self.processor.rollback(key, restored.model, cmd.version, cmd.reason, restored.spec)
        except ValueError as exc:
            raise SnapshotError(f"rollback of {key!r} to v{cmd.version}: {exc}") from None
        self.promoted.add(key)

    def _known(self, key: str, topic: str, partition: int, offset: int | None) -> bool:
        """Whether a restored snapshot of ``key`` already holds this record."""
        if offset is None or not self._reflected:
            return False
        return self._reflected.known(key, topic, partition, offset)

    def _drain(self) -> tuple[Any, ...]:
        effects = self.processor.effects
        if not effects:
            return ()
        out = tuple(effects)
        effects.clear()
        for effect in out:
            if self._promotes(effect):
                self.promoted.add(effect.key)
        return out

    @staticmethod
    def _promotes(effect: Any) -> bool:
        if type(effect) is RetrainApplied:
            return effect.decision.action == "promote"
        return type(effect) is Drift and any(d.action == "promote" for d in effect.decisions)

    # -- checkpoints -------------------------------------------------------------------

    def _positions(self, partition: int) -> dict[str, dict[int, int]]:
        return {t: {partition: self.consumed.get((t, partition), 0)} for t in self.topics.inputs}

    def _inputs(self, partition: int) -> int:
        return sum(self.consumed.get((t, partition), 0) for t in self.topics.inputs)

    def snapshot(self, key: str, trigger: str = "command") -> dict[str, Any]:
        """Write ``key``'s whole state (learner, retrain in flight, paused) to the store,
        signed, with the input positions it reflects; returns the header written."""
        partition = self.processor.partitions[key]
        state = self.processor.state(key)
        meta = snapshot_meta(
            key,
            state,
            partition=partition,
            events_topic=self.topics.events,
            offsets=self._positions(partition),
            trigger=trigger,
        )
        header = self._store().publish(state, meta)
        self.dirty.discard(key)
        self.promoted.discard(key)
        return header

    def checkpoint(self, partition: int, trigger: str = "periodic") -> list[dict[str, Any]]:
        """A round for ``partition``: snapshot its changed keys, then record the positions
        the round reflects (what a restore starts from); returns the headers written."""
        store = self._store()
        partitions = self.processor.partitions
        keys = sorted(k for k in self.dirty if partitions.get(k) == partition)
        headers = [self.snapshot(key, trigger) for key in keys]
        offsets = {
            t: {str(p): o for p, o in by.items()} for t, by in self._positions(partition).items()
        }
        store.publish_record(
            partition_record(self.topics.events, partition),
            {"offsets": offsets, "keys": len(keys), "trigger": trigger, "ts": time.time()},
        )
        self._round_at[partition] = (self._inputs(partition), time.monotonic())
        return headers

    def checkpoint_due(self) -> list[dict[str, Any]]:
        """Write what the config's ``[checkpoints]`` cadence says is due now: a snapshot of
        each key just promoted (``after_retrain``), a round of each partition past
        ``every_events`` inputs or ``every_seconds`` since its last. Call it between inputs
        (cheap when nothing is due); returns the headers written."""
        if self.store is None:
            return []
        written = []
        if self.cadence.after_retrain:
            for key in sorted(self.promoted):
                if key in self.processor.learners:
                    written.append(self.snapshot(key, "retrain"))
        self.promoted.clear()
        cadence, now = self.cadence, time.monotonic()
        partitions = self.processor.partitions
        for partition in sorted({partitions[k] for k in self.dirty if k in partitions}):
            inputs_at, time_at = self._round_at.setdefault(partition, (0, now))
            by_count = (
                cadence.every_events and self._inputs(partition) - inputs_at >= cadence.every_events
            )
            by_time = cadence.every_seconds and now - time_at >= cadence.every_seconds
            if by_count or by_time:
                written += self.checkpoint(partition, "periodic")
        return written

    def restore(self, partitions: Iterable[int]) -> RestorePlan:
        """Take over events partitions ``partitions``: hold each key's newest valid
        snapshot (signature verified), skip later the inputs it already reflects, and
        return the plan, whose ``starts`` say where each input partition must be read
        from (``(topic, partition) -> offset``) and ``notes`` / ``rejections`` what was
        refused and why."""
        owned = sorted(set(partitions))
        events = self.topics.events
        catalog = self._store().read(want=restore_want(owned, events))
        plan = plan_restore(catalog, owned, events, self.topics.inputs, self.factory.spec.lineage)
        for restored in plan.restored:
            state = restored.state
            self.processor.adopt(
                restored.key,
                state.learner,
                restored.partition,
                paused=state.paused,
                pending=state.pending,
            )
            self._reflected.add(restored.key, restored.header["offsets"])
        for tp, start in plan.starts.items():
            self.consumed[tp] = start
        now = time.monotonic()
        for partition in owned:
            self._round_at[partition] = (self._inputs(partition), now)
        return plan

    def forget(self, partitions: Iterable[int]) -> list[str]:
        """Drop every key of ``partitions`` (handed to another instance; write their round
        first with :meth:`checkpoint`); returns the keys dropped."""
        gone = set(partitions)
        keys = self.processor.drop(gone)
        for key in keys:
            self.dirty.discard(key)
            self.promoted.discard(key)
            self._reflected.discard(key)
        for tp in [tp for tp in self.consumed if tp[1] in gone]:
            del self.consumed[tp]
        for p in gone:
            self._round_at.pop(p, None)
        return keys

    def _store(self) -> Any:
        if self.store is None:
            raise ConfigError("checkpoints: this StreamLearner was built without a store")
        return self.store

    def start(self) -> None:
        """Start the retrain worker now (it imports the model's estimators meanwhile), so
        the first retrain does not wait for it; nothing when retrains run inline. Not at
        import time: the worker process imports the ``__main__`` module again."""
        start = getattr(self.runner, "start", None)
        if start is not None:
            start(self.factory.spec)

    def close(self) -> None:
        """Stop the retrain worker, if one runs."""
        close = getattr(self.runner, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> StreamLearner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raw(value: bytes | Mapping[str, Any]) -> bytes:
    """A message's bytes; a dict is written as a producer would write it, and what no
    producer could write (NaN, a set) is refused with the reason the service gives."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    try:
        return json.dumps(value, allow_nan=False).encode()
    except ValueError as exc:
        raise DecodeError("non_finite", str(exc)) from None
    except TypeError as exc:
        raise DecodeError("not_json", str(exc)) from None


def _key(key: bytes | str | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def checkpoint_store(config: Config, bootstrap: str | None = None) -> Any:
    """The service's checkpoint store for ``config``: its checkpoint topic on Kafka, its
    signing key (a ``ConfigError`` without one, unless ``checkpoints.insecure_dev``), its
    versions kept and chunk size. ``bootstrap``: default as ``stream-learner run``'s."""
    from stream_learner.cli.service_cmd import signing_key
    from stream_learner.kafka.checkpoints import CheckpointStore
    from stream_learner.kafka.client import BOOTSTRAP_ENV, resolve_bootstrap

    cp = config.checkpoints
    return CheckpointStore(
        resolve_bootstrap(bootstrap or os.environ.get(BOOTSTRAP_ENV) or config.kafka.bootstrap),
        Topics.from_prefix(config.kafka.topic_prefix).checkpoints,
        signing_key=signing_key(cp),
        keep_versions=cp.keep_versions,
        chunk_bytes=cp.chunk_bytes,
        extra=dict(config.kafka.client),
    )
