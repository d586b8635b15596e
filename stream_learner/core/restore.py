"""Restore planning: from a checkpoint catalog and the partitions an instance now owns,
what to load and where each input partition starts.

A checkpoint *round* of events partition *p* snapshots every changed key of *p*, then
writes *p*'s partition record (:func:`partition_record`) with the input positions the
round reflects. To take *p* over, an instance loads each key's newest valid snapshot and
starts every input partition at the partition record's position, moved back to the
earliest position any restored key reflects (each key then skips what its own snapshot
already holds). A partition never checkpointed starts at 0, and so does a partition with
a key whose snapshots are all refused (``lost``): its state is rebuilt from the log.

The plan is plain values and reads nothing but the catalog: the service logs its notes,
counts its rejections, adopts its keys and seeks to its starts, and moves the starts no
further back for offsets the consumer group committed (that part is Kafka's).

A start a partition record, a snapshot or a committed offset *claims* may be below the
partition's log start: retention (or an operator) deleted records the state was to
re-learn. :func:`retention_gaps` moves such a start up to the log start and names the
:class:`Gap`, so the loss is said once and never silently papered over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_learner.core.checkpoints import Catalog, Rejection, VersionInfo, Want
from stream_learner.core.keystate import KeyState
from stream_learner.core.snapshot import SnapshotMeta

__all__ = [
    "Gap",
    "Note",
    "Reflected",
    "RestorePlan",
    "Restored",
    "keep_none",
    "partition_record",
    "plan_restore",
    "restore_want",
    "retention_gaps",
    "snapshot_meta",
]

TopicPartition = tuple[str, int]


def partition_record(topic: str, partition: int) -> str:
    """The name of the service record holding a round's positions for ``partition`` of the
    events ``topic`` (``publish_record`` key; a checkpoint-format name, never change it)."""
    return f"__partition__\x1f{topic}\x1f{partition}"


def snapshot_meta(
    key: str,
    state: KeyState,
    *,
    partition: int,
    events_topic: str,
    offsets: Mapping[str, Mapping[int | str, int]],
    trigger: str,
) -> SnapshotMeta:
    """The header of ``key``'s snapshot, as every runtime writes it (the service, an
    embedding, the Faust integration): what :func:`plan_restore` and ``stream-learner
    checkpoints`` read back. ``offsets``: the input positions the state reflects.

    >>> from stream_learner.core.learner import Learner
    >>> from stream_learner.core.models import ModelSpec
    >>> spec = ModelSpec.from_dict({"task": "binary", "pipeline": [
    ...     {"estimator": "linear_model.LogisticRegression"}]})
    >>> meta = snapshot_meta("fraud", KeyState(Learner("fraud", spec)), partition=2,
    ...     events_topic="ev", offsets={"ev": {2: 10}}, trigger="periodic")
    >>> meta.model_version, meta.extra
    (1, {'partition': 2, 'events_topic': 'ev'})
    """
    learner = state.learner
    return SnapshotMeta(
        key=key,
        lineage=learner.lineage,
        model_version=learner.version,
        trigger=trigger,
        decision=learner.decisions[-1].reason if learner.decisions else None,
        metrics=learner.evaluator.values(),
        offsets=offsets,
        extra={
            "partition": partition,
            "events_topic": events_topic,
            # An adopted lineage says which one it replaced (see plan_restore()).
            **({"adopted_from": learner.adopted_from} if learner.adopted_from else {}),
        },
    )


class Reflected:
    """Per restored key, the input positions its snapshot already reflects: a record of
    that key below them is skipped (learning it again would count it twice), and the
    key's entry goes once its inputs pass them.

    A key's positions are a flat tuple, ``(topic-partition, next offset, ...)``, with one
    shared tuple per topic-partition: 126 bytes a key against a dict's 262 (three
    topic-partitions, the offsets aside), and a restart of a million keys holds every
    key's until its plan is made.

    >>> r = Reflected()
    >>> r.add("fraud", {"ev": {"0": 5}})
    >>> r.known("fraud", "ev", 0, 4), r.known("fraud", "ev", 0, 5), bool(r)
    (True, False, False)
    """

    __slots__ = ("by_key", "_tps")

    def __init__(self) -> None:
        self.by_key: dict[str, tuple] = {}
        self._tps: dict[TopicPartition, TopicPartition] = {}  # one tuple each, shared

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def add(self, key: str, offsets: Mapping[str, Mapping[Any, int]]) -> None:
        """``offsets``: a snapshot header's ``offsets`` (topic -> partition -> next)."""
        tps = self._tps
        self.by_key[key] = tuple(
            x
            for t, by in offsets.items()
            for p, off in by.items()
            for x in (tps.setdefault((t, int(p)), (t, int(p))), off)
        )

    def positions(self, key: str) -> dict[TopicPartition, int]:
        """``key``'s positions still ahead of its input (empty: none)."""
        skip = self.by_key.get(key, ())
        return dict(zip(skip[::2], skip[1::2], strict=True))

    def prune(self, starts: Mapping[TopicPartition, int]) -> None:
        """Forget the positions at or below where their partition starts (``starts``):
        no record read from there on is below them. A restart of a million restored keys
        would otherwise keep each key's every position until that key's input passes it
        (an idle key's, forever).

        >>> r = Reflected()
        >>> r.add("a", {"ev": {"0": 5}, "ctl": {"0": 0}})
        >>> r.add("b", {"ev": {"0": 3}})
        >>> r.prune({("ev", 0): 3, ("ctl", 0): 0})
        >>> r.by_key
        {'a': (('ev', 0), 5)}
        """
        by_key = self.by_key
        for key in list(by_key):
            skip = by_key[key]
            kept = tuple(
                x
                for tp, off in zip(skip[::2], skip[1::2], strict=True)
                if off > starts.get(tp, 0)
                for x in (tp, off)
            )
            if not kept:
                del by_key[key]
            elif len(kept) < len(skip):
                by_key[key] = kept

    def discard(self, key: str) -> None:
        self.by_key.pop(key, None)

    def known(self, key: str, topic: str, partition: int, offset: int) -> bool:
        """Whether ``key``'s restored state already reflects this record."""
        skip = self.by_key.get(key)
        if skip is None:
            return False
        tp = (topic, partition)
        for i in range(0, len(skip), 2):
            if skip[i] == tp:
                if offset < skip[i + 1]:
                    return True
                rest = skip[:i] + skip[i + 2 :]  # passed: this partition's goes
                if rest:
                    self.by_key[key] = rest
                else:
                    del self.by_key[key]
                return False
        return False


def restore_want(owned: Iterable[int], events_topic: str) -> Want:
    """The snapshots a restore of ``owned`` may load, for ``store.read(want=...)``: only
    their bytes are held in memory (the catalog still lists every key and the writer
    learns every slot). The header is not verified yet, so anything is expected."""
    mine = frozenset(owned)

    def want(header: Mapping[str, Any]) -> bool:
        extra = header.get("extra")
        try:
            return (
                isinstance(extra, dict)
                and extra.get("partition") in mine
                and extra.get("events_topic") == events_topic
            )
        except TypeError:  # an unhashable partition: not one of ours
            return False

    return want


def keep_none(header: Mapping[str, Any]) -> bool:
    """A ``want`` for ``store.read`` that keeps no snapshot's bytes: the first pass of a
    restore that fetches them afterwards (``plan_restore(..., fetch=store.fetch)``)."""
    return False


@dataclass(frozen=True, slots=True)
class Restored:
    """A key to take over: its snapshot's (verified) header and state, on ``partition``."""

    key: str
    partition: int
    header: dict[str, Any]
    state: KeyState


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the service's log: ``event`` name, ``fields``, and whether it warns."""

    event: str
    fields: dict[str, Any]
    warning: bool = False


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What :func:`plan_restore` decided.

    ``restored`` in the catalog's key order (empty when they were handed to ``adopt``
    instead); ``starts`` by (topic, partition) for every
    input partition of the owned partitions (and any other a partition record or snapshot
    names); ``lost`` the owned partitions that start over from 0 because a key of theirs
    has no valid snapshot; ``notes`` the log lines in order (lineage notes, then one per
    rejection, then one per lost partition); ``rejections`` what the catalog refused,
    to count by reason; ``claimed`` the starts a partition record or snapshot gives (the
    others are the 0 of a partition rebuilt from its log, which claims nothing).
    """

    restored: tuple[Restored, ...]
    starts: dict[TopicPartition, int]
    lost: frozenset[int] = frozenset()
    notes: tuple[Note, ...] = ()
    rejections: tuple[Rejection, ...] = field(default=())
    claimed: frozenset[TopicPartition] = frozenset()


@dataclass(frozen=True, slots=True)
class Gap:
    """Offsets ``first_lost`` to ``log_start - 1`` of ``topic[partition]``: input a start
    position claimed but the log no longer holds (deleted by retention, or by an operator)."""

    topic: str
    partition: int
    first_lost: int
    log_start: int

    @property
    def lost(self) -> int:
        return self.log_start - self.first_lost


def retention_gaps(
    starts: Mapping[TopicPartition, int],
    claimed: Mapping[TopicPartition, int],
    log_starts: Mapping[TopicPartition, int],
) -> tuple[dict[TopicPartition, int], list[Gap]]:
    """``starts`` moved up to each partition's log start (a position below it is out of
    range), and a :class:`Gap` for each ``claimed`` position below the log start, in
    partition order. ``claimed``: the position a partition record, snapshot or committed
    offset says the state needs input from; a partition absent from it starts wherever
    its log starts, and nothing is lost. A partition whose log start is unknown keeps its
    start."""
    moved = dict(starts)
    for tp, low in log_starts.items():
        if tp in moved and moved[tp] < low:
            moved[tp] = low
    gaps = [
        Gap(tp[0], tp[1], claimed[tp], low)
        for tp, low in sorted(log_starts.items())
        if tp in claimed and 0 <= claimed[tp] < low
    ]
    return moved, gaps


def plan_restore(
    catalog: Catalog,
    owned: Iterable[int],
    events_topic: str,
    inputs: Sequence[str],
    lineage: str,
    adopt: Callable[[Restored], None] | None = None,
    fetch: Callable[[Mapping[str, VersionInfo]], Iterable[tuple[VersionInfo, bytes]]] | None = None,
) -> RestorePlan:
    """Plan taking over the events partitions ``owned`` (``inputs``: the input topics,
    events first; ``lineage``: the configured model's).

    A key belongs to the plan when its newest snapshot (last written, valid or not) names
    an owned partition of ``events_topic``. A key whose newest lineage is not the
    configured one starts fresh, unless that lineage was adopted from the configured one
    (``replay --rebuild --publish``, a rollback): the adoption stands. A restored learner
    whose lineage the config names now drops its ``adopted_from`` (it is its own). The
    catalog's :meth:`~Catalog.load` may add rejections, so they are read last.

    ``adopt``: called with each restored key as soon as it is loaded, which the plan then
    does not keep — so the states of every key are never held at once (a million keys'
    learners do not fit in memory; a runtime under a key budget evicts them as it adopts
    them).

    ``fetch``: the payloads come from it, not from the catalog (read keeping none, so a
    restore never holds every key's bytes at once): given the snapshots to load by key, it
    yields each with its payload (:meth:`~stream_learner.core.checkpoints.LogStore.fetch`).
    Each key's candidates are tried in :meth:`~Catalog.load`'s order, a pass per round of
    failures (a payload that does not decode is rare), and keys are adopted in the order
    their payloads arrive. The catalog then forgets each key once it is decided (adopted,
    another instance's, or starting fresh): it is read for this restore alone, and a
    million keys' versions need not outlive their adoption.
    """
    owned = sorted(set(owned))
    records = catalog.records()
    starts: dict[TopicPartition, int] = {}
    claimed: set[TopicPartition] = set()
    for partition in owned:
        record = records.get(partition_record(events_topic, partition))
        if record is None:
            # Never checkpointed: the state is whatever the log holds, from its start.
            for topic in inputs:
                starts[topic, partition] = 0
            continue
        for topic, by in record["offsets"].items():
            for p, off in by.items():
                starts[topic, int(p)] = off
                claimed.add((topic, int(p)))
    restored: list[Restored] = []
    notes: list[Note] = []
    lost: set[int] = set()
    chosen: dict[str, int] = {}  # key -> partition, for fetch

    def take(key: str, partition: int, header: dict[str, Any], raw: object) -> None:
        state = KeyState.of(raw)
        if state.learner.lineage == lineage:
            state.learner.adopted_from = None  # the config names it now: its own
        if adopt is None:
            restored.append(Restored(key, partition, header, state))
        else:
            adopt(Restored(key, partition, header, state))
        for topic, by in header["offsets"].items():
            for p, off in by.items():
                tp = (topic, int(p))
                starts[tp] = min(starts.get(tp, off), off)
                claimed.add(tp)

    for key in catalog.keys():  # noqa: SIM118 - a Catalog, not a dict
        newest = max(catalog.versions(key), key=lambda v: v.recency)
        header = newest.header  # parsed at every read (VersionInfo): once here
        extra, found = header.get("extra", {}), header.get("lineage", "")
        partition = extra.get("partition")
        if partition not in owned or extra.get("events_topic") != events_topic:
            if fetch is not None:
                catalog.forget(key)
            continue
        if found != lineage:
            if extra.get("adopted_from") != lineage:
                # The config's [model] changed: a new model iteration starts fresh.
                notes.append(
                    Note(
                        "checkpoint_lineage_changed",
                        {
                            "key": key,
                            "old": found,
                            "new": lineage,
                            "action": "starting a new lineage fresh",
                        },
                    )
                )
                if fetch is not None:
                    catalog.forget(key)
                continue
            # The key adopted another lineage while the config still names the one it
            # replaced: the adoption stands.
            notes.append(
                Note(
                    "adopted_lineage_kept",
                    {
                        "key": key,
                        "lineage": found,
                        "configured": lineage,
                        "action": "restoring the adopted lineage; put its [model] in the "
                        "config to make that explicit",
                    },
                    warning=True,
                )
            )
        if fetch is None:
            loaded = catalog.load(key)
            if loaded is None:
                lost.add(partition)
            else:
                take(key, partition, *loaded)
        else:
            chosen[key] = partition
    pending: Iterable[str] = chosen  # keys whose first `tried` candidates all failed
    tried = 0
    while pending:
        wanted: dict[str, VersionInfo] = {}
        for key in pending:
            candidates = catalog.candidates(key)
            if tried < len(candidates):
                wanted[key] = candidates[tried]
            else:
                lost.add(chosen[key])  # every candidate failed: no valid snapshot
        for info, payload in fetch(wanted) if wanted else ():
            loaded = catalog.decode(info, payload)
            if loaded is not None:
                take(info.key, chosen[info.key], *loaded)
                del wanted[info.key]
                catalog.forget(info.key)
        pending, tried = list(wanted), tried + 1
    rejections = tuple(catalog.rejections)
    for rejection in rejections:
        notes.append(
            Note(
                "checkpoint_rejected",
                {
                    "key": rejection.key,
                    "version": rejection.model_version,
                    "reason": rejection.reason,
                    "detail": rejection.detail,
                },
                warning=True,
            )
        )
    for partition in sorted(lost):  # no valid snapshot at all: rebuild from the start
        notes.append(
            Note(
                "checkpoint_lost",
                {
                    "partition": partition,
                    "action": "re-learning the partition from its first retained record",
                },
                warning=True,
            )
        )
        for topic in inputs:
            starts[topic, partition] = 0
            claimed.discard((topic, partition))
    return RestorePlan(
        tuple(restored), starts, frozenset(lost), tuple(notes), rejections, frozenset(claimed)
    )
