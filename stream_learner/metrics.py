"""Prometheus metrics of the service: one object owns every series, on a registry it is given.

The service updates these once per batch (never per event), so every method is a handful of
dictionary look-ups. Decisions worth knowing:

- **No hidden globals.** Every metric is created on the registry passed in; ``registry=None``
  means a fresh private :class:`~prometheus_client.CollectorRegistry` (available as
  ``.registry``), never the process-wide default, so two instances never clash.
- **Bounded key cardinality.** At most ``max_keys`` distinct model keys get their own ``key``
  label, across all per-key series. Keys seen after that are folded into ``key="__other__"``
  (for gauges the last value written wins, so ``__other__`` shows *some* overflowed key, not an
  aggregate) and each such key is counted once in ``stream_learner_keys_overflow_total``. A key
  keeps its label until :meth:`ServiceMetrics.forget_key`, which frees its slot for the next
  *new* key; keys already folded stay in ``__other__`` so a series never changes label.
- **Ages at scrape time.** ``seconds_since_last_retrain`` and ``checkpoint_age_seconds`` are
  computed from stored timestamps when Prometheus scrapes, so they keep growing while the
  service is busy elsewhere; their size is bounded by the same key cap.
- **One label says which runtime.** ``runtime="service"`` (``stream-learner run``) or
  ``runtime="faust"`` (:mod:`stream_learner.integrations.faust`) is on every series of an
  instance built with ``runtime=``, so a dashboard can tell them apart or sum them; the
  dashboard and alerts aggregate by ``job``/``instance`` and match on named labels, so the
  extra label changes none of their results. It is added when the registry is collected
  (the series themselves are the same objects), never per update.
- **Closed label sets are checked.** Outcomes, results and signals listed below raise
  ``ValueError`` on a value outside their set (a caller bug, caught in tests) and start at 0 so
  ``rate()`` works from the first scrape. Free-form labels (reasons, detectors, triggers) come
  from closed sets in the callers; they are still cut to :data:`MAX_LABEL_CHARS`.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from stream_learner import __version__
from stream_learner.core.race import SOURCES

__all__ = [
    "CHECKPOINT_RESULTS",
    "DRIFT_SIGNALS",
    "EVENT_OUTCOMES",
    "LABEL_RESULTS",
    "PROMOTION_SOURCES",
    "RELOAD_SOURCES",
    "MAX_LABEL_CHARS",
    "OTHER_KEY",
    "RETRAIN_OUTCOMES",
    "ServiceMetrics",
]

OTHER_KEY = "__other__"
MAX_LABEL_CHARS = 100

EVENT_OUTCOMES = ("learned", "predicted", "dead_lettered", "replayed", "paused")
LABEL_RESULTS = ("joined", "unmatched", "expired")
DRIFT_SIGNALS = ("performance", "data")
RETRAIN_OUTCOMES = ("promoted", "kept", "failed")
#: Where a promoted model came from (the core's race.SOURCES): a shadow trained since the
#: change, the champion regrown, a window retrain, or a retired model from the key's pool.
PROMOTION_SOURCES = SOURCES
CHECKPOINT_RESULTS = ("written", "restored", "rejected")
#: Where an evicted key was reloaded from (``keystore.py``): the cache in memory, the local
#: file behind it (what left the cache: the service's copy, a replay's spill), the topic.
RELOAD_SOURCES = ("cache", "disk", "topic")
#: Why an instance gave up state it could no longer publish (see service/stall.py).
FENCED_WHY = ("stall", "partitions_lost", "transaction")

_ROLLING_SUFFIX = "_rolling"

# A batch takes from about a millisecond (a few events, linear model) to seconds (a big batch
# through a forest); a retrain from well under a second (stateful) to many minutes (stateless).
BATCH_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
RETRAIN_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def _bounded(value: object) -> str:
    """``value`` as a label of at most :data:`MAX_LABEL_CHARS` characters.

    A cut value ends in a short digest of the whole, so two long values that share a prefix
    (model keys may be 128 characters) still get distinct labels.
    """
    text = str(value)
    if len(text) <= MAX_LABEL_CHARS:
        return text
    digest = hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
    return f"{text[: MAX_LABEL_CHARS - 9]}~{digest}"


def _check(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


class _KeyTimes:
    """Per-key timestamps turned into gauges at scrape time (retrain and checkpoint ages).

    Written by the service thread, read by the HTTP thread that scrapes, hence the lock.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._retrain: dict[str, float] = {}
        self._checkpoint: dict[str, float] = {}

    def set_retrain(self, label: str, ts: float) -> None:
        with self._lock:
            self._retrain[label] = float(ts)

    def set_checkpoint(self, label: str, ts: float) -> None:
        with self._lock:
            self._checkpoint[label] = float(ts)

    def drop(self, label: str) -> None:
        with self._lock:
            self._retrain.pop(label, None)
            self._checkpoint.pop(label, None)

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "stream_learner_last_retrain_timestamp_seconds",
                "Unix time of the last retrain of the key's model.",
                labels=["key"],
            ),
            GaugeMetricFamily(
                "stream_learner_seconds_since_last_retrain",
                "Seconds since the last retrain of the key's model, computed at scrape time.",
                labels=["key"],
            ),
            GaugeMetricFamily(
                "stream_learner_checkpoint_age_seconds",
                "Seconds since the key's last checkpoint, computed at scrape time.",
                labels=["key"],
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            retrain = list(self._retrain.items())
            checkpoint = list(self._checkpoint.items())
        now = self._clock()
        timestamp, since, age = self._families()
        for label, ts in retrain:
            timestamp.add_metric([label], ts)
            # Clamped: a timestamp from another host's clock may be slightly ahead of ours.
            since.add_metric([label], max(0.0, now - ts))
        for label, ts in checkpoint:
            age.add_metric([label], max(0.0, now - ts))
        yield timestamp
        yield since
        yield age


_LAG_HELP = "Messages between the group's committed offset and the end of the partition."


class _ConsumerLag:
    """Per-partition lag read from the consumer when scraped (see ``ServiceMetrics``)."""

    def __init__(self, lag: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        self._lag = lag

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "stream_learner_consumer_lag", _LAG_HELP, labels=["topic", "partition"]
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for (topic, partition), lag in sorted(dict(self._lag()).items()):
            family.add_metric([_bounded(topic), str(partition)], lag)
        yield family


class _KafkaUnavailable:
    """The ages of current problems with Kafka, read at scrape time."""

    def __init__(self, ages: Callable[[], Mapping[str, float]]) -> None:
        self._ages = ages

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "stream_learner_kafka_unavailable_seconds",
            "Seconds Kafka has been unavailable for what (brokers, delivery, commit); 0: fine.",
            labels=["what"],
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        for what, age in sorted(self._ages().items()):
            family.add_metric([what], age)
        yield family


class _Labelled:
    """Every family of ``registry`` with ``labels`` added to each sample, at collect time."""

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]) -> None:
        self._registry = registry
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        extra = self._labels
        for family in self._registry.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            out.samples = [s._replace(labels={**s.labels, **extra}) for s in family.samples]
            yield out


class ServiceMetrics:
    """Every Prometheus series of one service instance.

    Parameters
    ----------
    registry
        Where the metrics are registered; ``None`` creates a private registry.
    max_keys
        How many model keys get their own ``key`` label before the rest share ``__other__``.
    instance
        Names this process (pod, ``client.id``) on ``stream_learner_build_info`` as the
        ``instance_id`` label; not ``instance``, which Prometheus sets itself at scrape time.
    clock
        Source of "now" for the scrape-time ages (tests pass a fake one).
    lag
        Where the per-partition consumer lag is read when scraped (the source's, which its
        statistics refresh every few seconds, batch or not); without it, ``set_lag`` sets it.
    runtime
        The ``runtime`` label on every series (``service``, ``faust``); ``None``: no label.

    Examples
    --------
    >>> m = ServiceMetrics(max_keys=1)
    >>> m.count_events("learned", 64)
    >>> m.set_model("fraud", 3, "lin-a")
    >>> m.set_model("churn", 1, "tree-b")
    >>> m.registry.get_sample_value("stream_learner_events_total", {"outcome": "learned"})
    64.0
    >>> m.registry.get_sample_value("stream_learner_model_version", {"key": "__other__"})
    1.0
    >>> m.registry.get_sample_value("stream_learner_keys_overflow_total")
    1.0
    >>> f = ServiceMetrics(runtime="faust")
    >>> f.count_events("learned", 2)
    >>> f.registry.get_sample_value(
    ...     "stream_learner_events_total", {"outcome": "learned", "runtime": "faust"})
    2.0
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        max_keys: int = 50,
        instance: str | None = None,
        clock: Callable[[], float] = time.time,
        lag: Callable[[], Mapping[tuple[str, int], int]] | None = None,
        runtime: str | None = None,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys={max_keys!r} must be at least 1")
        self.registry = CollectorRegistry() if registry is None else registry
        if runtime is not None:  # the series live on a private registry, labelled on collect
            self._series = CollectorRegistry()
            self.registry.register(_Labelled(self._series, {"runtime": runtime}))
        else:
            self._series = self.registry
        self.max_keys = max_keys
        self._admitted: dict[str, str] = {}  # key -> its label
        self._overflowed: set[str] = set()  # keys folded into OTHER_KEY
        self._quality_series: dict[str, set[tuple[str, str]]] = {}  # label -> (metric, window)
        self._quality_children: dict[str, dict[str, object]] = {}  # label -> name -> child
        self._race_children: dict[str, tuple[Any, Any]] = {}  # label -> (candidates, lead)
        self._lineage: dict[str, str] = {}  # label -> lineage currently exported
        reg = self._series

        self._events = Counter(
            "stream_learner_events_total",
            "Events handled, by outcome (replayed: re-learned during catch-up, not re-emitted).",
            ["outcome"],
            registry=reg,
        )
        self._dead_letters = Counter(
            "stream_learner_dead_letters_total",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=reg,
        )
        # Unlabelled, so it exports 0 from the start: a loss is an increase from there.
        self._input_lost = Counter(
            "stream_learner_input_lost_total",
            "Input records skipped because the log no longer held them when they were due "
            "(deleted by retention before they were learned).",
            registry=reg,
        )
        self._fenced = Counter(
            "stream_learner_fenced_total",
            "Times this instance gave up its partitions' unpublished state: another instance "
            "may own them now, after the process stood still (stall) or when the group took "
            "them (partitions_lost), or an exactly-once transaction did not commit "
            "(transaction; the batch is replayed).",
            ["why"],
            registry=reg,
        )
        for why in FENCED_WHY:
            self._fenced.labels(why)  # exported at 0 from the start
        self._labels = Counter(
            "stream_learner_labels_total",
            "Delayed labels received, by join result.",
            ["result"],
            registry=reg,
        )
        self._quality = Gauge(
            "stream_learner_prequential_metric",
            "Prequential (test-then-train) score of the key's model.",
            ["key", "metric", "window"],
            registry=reg,
        )
        self._drift = Counter(
            "stream_learner_drift_detections_total",
            "Drift detector alarms, by detector, signal (performance or data) and level.",
            ["detector", "signal", "level"],
            registry=reg,
        )
        self._decisions = Counter(
            "stream_learner_trigger_decisions_total",
            "Decisions taken by the trigger policy.",
            ["trigger", "action"],
            registry=reg,
        )
        self._retrains = Counter(
            "stream_learner_retrains_total",
            "Retrains finished, by trigger, kind and champion/challenger outcome.",
            ["trigger", "kind", "outcome"],
            registry=reg,
        )
        self._retrain_duration = Histogram(
            "stream_learner_retrain_duration_seconds",
            "Wall time of a retrain, by kind.",
            ["kind"],
            buckets=RETRAIN_DURATION_BUCKETS,
            registry=reg,
        )
        self._race_candidates = Gauge(
            "stream_learner_race_candidates",
            "Candidate models racing the key's champion (0: no race).",
            ["key"],
            registry=reg,
        )
        self._race_lead = Gauge(
            "stream_learner_race_lead",
            "The leading candidate's mean paired lead over the champion, in loss per event "
            "(accuracy / 100 for a classifier; 0 without a race).",
            ["key"],
            registry=reg,
        )
        self._race_promotions = Counter(
            "stream_learner_race_promotions_total",
            "Models promoted, by source: shadow, regrown (the champion's splits, fresh leaves), "
            "window (a retrain) or pool (a retired model).",
            ["source"],
            registry=reg,
        )
        for source in PROMOTION_SOURCES:  # every source has a series from the start
            self._race_promotions.labels(source)
        self._model_version = Gauge(
            "stream_learner_model_version",
            "Version of the key's serving model within its lineage.",
            ["key"],
            registry=reg,
        )
        self._model_info = Gauge(
            "stream_learner_model_info",
            "Always 1; carries the lineage of the key's serving model.",
            ["key", "lineage"],
            registry=reg,
        )
        if lag is None:
            self._lag: Gauge | None = Gauge(
                "stream_learner_consumer_lag",
                _LAG_HELP,
                ["topic", "partition"],
                registry=reg,
            )
        else:  # read when scraped: fresh while no batch comes, gone with a revoked partition
            self._lag = None
            reg.register(_ConsumerLag(lag))
        self._batch_duration = Histogram(
            "stream_learner_batch_duration_seconds",
            "Wall time to process one consumed batch.",
            buckets=BATCH_DURATION_BUCKETS,
            registry=reg,
        )
        self._batch_size = Histogram(
            "stream_learner_batch_size",
            "Messages in one consumed batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=reg,
        )
        self._checkpoint_size = Gauge(
            "stream_learner_checkpoint_size_bytes",
            "Size of the key's last checkpoint.",
            ["key"],
            registry=reg,
        )
        self._checkpoints = Counter(
            "stream_learner_checkpoints_total",
            "Checkpoints written, restored, or rejected on restore.",
            ["result"],
            registry=reg,
        )
        self._snapshot_rejections = Counter(
            "stream_learner_snapshot_rejections_total",
            "Snapshots refused on restore, by reason.",
            ["reason"],
            registry=reg,
        )
        self._ready = Gauge(
            "stream_learner_ready",
            "1 when assigned, caught up and serving a model, else 0.",
            registry=reg,
        )
        self._assigned = Gauge(
            "stream_learner_assigned_partitions",
            "Input partitions currently assigned to this instance.",
            registry=reg,
        )
        self._keys_active = Gauge(
            "stream_learner_keys_active",
            "Model keys currently held, including those folded into __other__.",
            registry=reg,
        )
        # The key budget (service.max_keys): resident and evicted keys, reloads.
        self._keys_resident = Gauge(
            "stream_learner_keys_resident",
            "Model keys whose learner is in memory.",
            registry=reg,
        )
        self._keys_evicted = Gauge(
            "stream_learner_keys_evicted",
            "Model keys held evicted: their state waits in the cache or on the topic.",
            registry=reg,
        )
        self._evictions = Counter(
            "stream_learner_key_evictions_total",
            "Keys evicted (snapshotted and dropped from memory) to keep the key budget.",
            registry=reg,
        )
        self._passes = Counter(
            "stream_learner_key_passes_total",
            "Keys brought into memory for one input and evicted right after it (not admitted:"
            " they had not come in lately; counted in evictions and reloads too).",
            registry=reg,
        )
        self._reloads = Counter(
            "stream_learner_key_reloads_total",
            "Evicted keys loaded back before their input, by source (cache, disk, topic).",
            ["source"],
            registry=reg,
        )
        for source in RELOAD_SOURCES:
            self._reloads.labels(source)
        self._reload_seconds = Histogram(
            "stream_learner_key_reload_seconds",
            "Time to load an evicted key back (decode; a topic read for source=topic).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30),
            registry=reg,
        )
        self._state_bytes = Gauge(
            "stream_learner_evicted_state_bytes",
            "Bytes of evicted keys' encoded state held in the local cache.",
            registry=reg,
        )
        self._eviction_bytes = Counter(
            "stream_learner_eviction_bytes_total",
            "Snapshot bytes of evicted keys: encoded (into the cache), or written to the topic.",
            ["to"],
            registry=reg,
        )
        for to in ("cache", "topic"):
            self._eviction_bytes.labels(to)
        self._keys_overflow = Counter(
            "stream_learner_keys_overflow_total",
            "Keys that found no free label slot and were folded into key=__other__.",
            registry=reg,
        )
        build_labels = ["version"] + (["instance_id"] if instance is not None else [])
        build_info = Gauge(
            "stream_learner_build_info",
            "Always 1; carries the stream-learner version.",
            build_labels,
            registry=reg,
        )
        build_values = [__version__] + ([_bounded(instance)] if instance is not None else [])
        build_info.labels(*build_values).set(1)

        self._times = _KeyTimes(clock)
        reg.register(self._times)

        for outcome in EVENT_OUTCOMES:
            self._events.labels(outcome)
        for result in LABEL_RESULTS:
            self._labels.labels(result)
        for result in CHECKPOINT_RESULTS:
            self._checkpoints.labels(result)

    # -- key cap -------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        """The label for ``key``: its own while slots last, else :data:`OTHER_KEY`."""
        label = self._admitted.get(key)
        if label is not None:
            return label
        if key in self._overflowed:
            return OTHER_KEY
        if len(self._admitted) < self.max_keys:
            label = self._admitted[key] = _bounded(key)
        else:
            self._overflowed.add(key)
            self._keys_overflow.inc()
            label = OTHER_KEY
        self._keys_active.set(len(self._admitted) + len(self._overflowed))
        return label

    def forget_key(self, key: str) -> None:
        """Drop every series of ``key`` (its partition was revoked) and free its label slot.

        ``__other__`` series go when the last key folded into them is forgotten.
        """
        if key in self._admitted:
            self._drop_series(self._admitted.pop(key))
        elif key in self._overflowed:
            self._overflowed.discard(key)
            if not self._overflowed:
                self._drop_series(OTHER_KEY)
        else:
            return
        self._keys_active.set(len(self._admitted) + len(self._overflowed))

    def _drop_series(self, label: str) -> None:
        self._quality_children.pop(label, None)
        self._race_children.pop(label, None)
        for metric, window in self._quality_series.pop(label, ()):
            self._quality.remove(label, metric, window)
        self._model_version.remove(label)
        self._race_candidates.remove(label)
        self._race_lead.remove(label)
        lineage = self._lineage.pop(label, None)
        if lineage is not None:
            self._model_info.remove(label, lineage)
        self._checkpoint_size.remove(label)
        self._times.drop(label)

    # -- events --------------------------------------------------------------------------------

    def count_events(self, outcome: str, n: int) -> None:
        self._events.labels(_check("outcome", outcome, EVENT_OUTCOMES)).inc(n)

    def count_dead_letters(self, reason: str, n: int = 1) -> None:
        self._dead_letters.labels(_bounded(reason)).inc(n)

    def count_input_lost(self, n: int) -> None:
        self._input_lost.inc(n)

    def count_fenced(self, why: str) -> None:
        self._fenced.labels(_check("why", why, FENCED_WHY)).inc()

    def count_labels(self, result: str, n: int) -> None:
        self._labels.labels(_check("result", result, LABEL_RESULTS)).inc(n)

    def observe_batch(self, duration_s: float, size: int) -> None:
        self._batch_duration.observe(duration_s)
        self._batch_size.observe(size)

    # -- model quality, drift and retraining ---------------------------------------------------

    def set_key_metrics(self, key: str, values: Mapping[str, float]) -> None:
        """Export prequential scores; a name ending in ``_rolling`` is the rolling window.

        ``{"accuracy": 0.91, "accuracy_rolling": 0.88}`` becomes two series of
        ``metric="accuracy"``, ``window="cumulative"`` and ``window="rolling"``.
        """
        label = self._key(key)
        # Called per key and batch: each series' child is looked up once, then reused.
        children = self._quality_children.get(label)
        if children is None:
            children = self._quality_children[label] = {}
        for name, value in values.items():
            child = children.get(name)
            if child is None:
                if name.endswith(_ROLLING_SUFFIX):
                    metric, window = _bounded(name[: -len(_ROLLING_SUFFIX)]), "rolling"
                else:
                    metric, window = _bounded(name), "cumulative"
                child = children[name] = self._quality.labels(label, metric, window)
                self._quality_series.setdefault(label, set()).add((metric, window))
            child.set(value)

    def count_drift(self, detector: str, signal: str, level: str, n: int = 1) -> None:
        signal = _check("signal", signal, DRIFT_SIGNALS)
        self._drift.labels(_bounded(detector), signal, _bounded(level)).inc(n)

    def count_decision(self, trigger: str, action: str) -> None:
        self._decisions.labels(_bounded(trigger), _bounded(action)).inc()

    def record_retrain(self, trigger: str, kind: str, outcome: str, duration_s: float) -> None:
        outcome = _check("outcome", outcome, RETRAIN_OUTCOMES)
        self._retrains.labels(_bounded(trigger), _bounded(kind), outcome).inc()
        self._retrain_duration.labels(_bounded(kind)).observe(duration_s)

    def set_model(self, key: str, version: int, lineage: str) -> None:
        """Export the serving model's version and lineage (the old lineage series goes)."""
        label = self._key(key)
        self._model_version.labels(label).set(version)
        lineage = _bounded(lineage)
        old = self._lineage.get(label)
        if old != lineage:
            if old is not None:
                self._model_info.remove(label, old)
            self._lineage[label] = lineage
            self._model_info.labels(label, lineage).set(1)

    def report_key(self, key: str, learner: Any, joins: dict[str, tuple[int, int, int]]) -> None:
        """One key's gauges after a batch (its metrics, its race) and the labels its
        joiner joined, found unmatched or expired since the counts kept in ``joins``
        (updated here): what every runtime reports per touched key."""
        self._key_gauges(key, learner)
        self._count_joins(key, learner, joins)

    def report_keys(
        self, learners: Iterable[tuple[str, Any]], joins: dict[str, tuple[int, int, int]]
    ) -> None:
        """:meth:`report_key` for each ``(key, learner)`` in turn, leaving the same series:
        the gauges of keys folded into ``__other__`` are written once, with the last such
        key's values (what writing each in turn leaves). With many keys most are folded,
        and their gauges were most of a batch's report (~5 of ~6 µs a key)."""
        folded = None
        for key, learner in learners:
            if self._key(key) == OTHER_KEY:
                folded = key, learner
            else:
                self._key_gauges(key, learner)
            self._count_joins(key, learner, joins)
        if folded is not None:
            self._key_gauges(*folded)

    def _key_gauges(self, key: str, learner: Any) -> None:
        self.set_key_metrics(key, learner.evaluator.values())
        alive, lead = learner.race_status()  # the race (core/race.py)
        self.set_race(key, alive, lead)

    def _count_joins(self, key: str, learner: Any, joins: dict[str, tuple[int, int, int]]) -> None:
        now = learner.joiner.counts
        before = joins.get(key, (0, 0, 0))
        if now != before:
            for result, b, a in zip(LABEL_RESULTS, before, now, strict=True):
                if a > b:
                    self.count_labels(result, a - b)
        joins[key] = now

    def set_race(self, key: str, candidates: int, lead: float) -> None:
        """Export the key's race: candidates alive and the best one's lead."""
        label = self._key(key)
        children = self._race_children.get(label)
        if children is None:  # looked up once per key label, then reused
            children = self._race_children[label] = (
                self._race_candidates.labels(label),
                self._race_lead.labels(label),
            )
        children[0].set(candidates)
        children[1].set(lead)

    def count_promotions(self, source: str, n: int = 1) -> None:
        self._race_promotions.labels(_check("source", source, PROMOTION_SOURCES)).inc(n)

    def mark_retrain(self, key: str, ts: float) -> None:
        """Remember when ``key`` was last retrained (Unix seconds); the age is scrape-time."""
        self._times.set_retrain(self._key(key), ts)

    # -- checkpoints ---------------------------------------------------------------------------

    def record_checkpoint(self, key: str, size_bytes: int, ts: float) -> None:
        """A checkpoint of ``key`` taken at Unix time ``ts``; :meth:`count_checkpoint` counts it."""
        label = self._key(key)
        self._checkpoint_size.labels(label).set(size_bytes)
        self._times.set_checkpoint(label, ts)

    def count_checkpoint(self, result: str, n: int = 1) -> None:
        self._checkpoints.labels(_check("result", result, CHECKPOINT_RESULTS)).inc(n)

    def count_snapshot_rejection(self, reason: str) -> None:
        self._snapshot_rejections.labels(_bounded(reason)).inc()

    # -- the key budget ------------------------------------------------------------------------

    def set_keys(self, resident: int, evicted: int) -> None:
        self._keys_resident.set(resident)
        self._keys_evicted.set(evicted)

    def evicted(self, size: int) -> None:
        """One key evicted; ``size``: its encoded snapshot's bytes (into the cache)."""
        self._evictions.inc()
        self._eviction_bytes.labels("cache").inc(size)

    def passed(self) -> None:
        """One key evicted right after its input (see ``core/processor.py``)."""
        self._passes.inc()

    def reloaded(self, source: str, seconds: float) -> None:
        self._reloads.labels(_check("source", source, RELOAD_SOURCES)).inc()
        self._reload_seconds.observe(seconds)

    def written(self, size: int) -> None:
        """An evicted key's snapshot of ``size`` bytes was written to the topic."""
        self._eviction_bytes.labels("topic").inc(size)

    def cached(self, size: int, entries: int) -> None:
        self._state_bytes.set(size)

    # -- consumer and readiness ----------------------------------------------------------------

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set a partition's lag (a no-op when the lag is read from a source when scraped)."""
        if self._lag is not None:
            self._lag.labels(_bounded(topic), str(partition)).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        """Drop the lag series of a revoked partition, so it does not freeze at its last value."""
        if self._lag is not None:
            self._lag.remove(_bounded(topic), str(partition))

    def set_assigned_partitions(self, n: int) -> None:
        self._assigned.set(n)

    def set_ready(self, ready: bool) -> None:
        """Set the ready gauge (ignored once :meth:`ready_from` gave it a check)."""
        self._ready.set(1 if ready else 0)

    def ready_from(self, check: Callable[[], tuple[bool, str]]) -> None:
        """Compute the ready gauge at scrape time from ``check`` (what ``/readyz`` asks), so
        it says the same as the probe even while the service loop waits for Kafka."""

        def value() -> float:
            try:
                return 1.0 if check()[0] else 0.0
            except Exception:  # a broken check is not ready, as on /readyz
                return 0.0

        self._ready.set_function(value)

    def watch_kafka(self, ages: Callable[[], Mapping[str, float]]) -> None:
        """Export ``stream_learner_kafka_unavailable_seconds{what}``: how long each problem
        with Kafka (see ``kafka/health.py``) has lasted, 0 when there is none; at scrape time."""
        self._series.register(_KafkaUnavailable(ages))
