from __future__ import annotations

import pytest
from prometheus_client import REGISTRY, CollectorRegistry

from stream_learner import __version__
from stream_learner.metrics import MAX_LABEL_CHARS, OTHER_KEY, ServiceMetrics


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: FakeClock) -> ServiceMetrics:
    return ServiceMetrics(registry, max_keys=3, clock=clock)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def label_values(registry: CollectorRegistry, label: str) -> set[str]:
    """Every value of ``label`` across all series in the registry."""
    return {
        sample.labels[label]
        for family in registry.collect()
        for sample in family.samples
        if label in sample.labels
    }


def test_every_family_is_prefixed(metrics: ServiceMetrics, registry: CollectorRegistry) -> None:
    metrics.set_model("k", 1, "lin")
    names = {family.name for family in registry.collect()}
    assert "stream_learner_events" in names  # counters are listed without ``_total``
    assert all(name.startswith("stream_learner_") for name in names)


def test_none_registry_is_private_not_global() -> None:
    first, second = ServiceMetrics(), ServiceMetrics()  # would clash on one shared registry
    first.count_events("learned", 5)
    assert first.registry is not second.registry
    assert first.registry.get_sample_value("stream_learner_events_total", {"outcome": "learned"})
    assert REGISTRY.get_sample_value("stream_learner_events_total", {"outcome": "learned"}) is None


def test_event_outcomes_start_at_zero_and_count(metrics, registry) -> None:
    for outcome in ("learned", "predicted", "dead_lettered", "replayed", "paused"):
        assert value(registry, "stream_learner_events_total", outcome=outcome) == 0.0
    metrics.count_events("learned", 100)
    metrics.count_events("learned", 28)
    metrics.count_events("replayed", 7)
    assert value(registry, "stream_learner_events_total", outcome="learned") == 128.0
    assert value(registry, "stream_learner_events_total", outcome="replayed") == 7.0


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("count_events", ("learnt", 1)),
        ("count_labels", ("matched", 1)),
        ("count_drift", ("adwin", "concept", "drift")),
        ("record_retrain", ("interval", "stateful", "replaced", 1.0)),
        ("count_checkpoint", ("saved",)),
    ],
)
def test_closed_label_sets_reject_unknown_values(metrics, method, args) -> None:
    with pytest.raises(ValueError, match="is not one of"):
        getattr(metrics, method)(*args)


def test_dead_letters_labels_and_decisions(metrics, registry) -> None:
    metrics.count_dead_letters("not_json")
    metrics.count_dead_letters("not_json", 4)
    metrics.count_labels("joined", 10)
    metrics.count_labels("expired", 2)
    metrics.count_decision("performance", "retrain")
    metrics.count_decision("performance", "retrain")
    assert value(registry, "stream_learner_dead_letters_total", reason="not_json") == 5.0
    assert value(registry, "stream_learner_labels_total", result="joined") == 10.0
    assert value(registry, "stream_learner_labels_total", result="expired") == 2.0
    assert value(registry, "stream_learner_labels_total", result="unmatched") == 0.0
    assert (
        value(
            registry,
            "stream_learner_trigger_decisions_total",
            trigger="performance",
            action="retrain",
        )
        == 2.0
    )


def test_drift_and_retrains(metrics, registry) -> None:
    metrics.count_drift("adwin", "performance", "drift")
    metrics.count_drift("page_hinkley", "data", "warning", 3)
    metrics.record_retrain("performance", "stateful", "promoted", 0.3)
    metrics.record_retrain("interval", "stateless", "kept", 42.0)
    drift = "stream_learner_drift_detections_total"
    assert value(registry, drift, detector="adwin", signal="performance", level="drift") == 1.0
    assert value(registry, drift, detector="page_hinkley", signal="data", level="warning") == 3.0
    retrains = "stream_learner_retrains_total"
    assert (
        value(registry, retrains, trigger="performance", kind="stateful", outcome="promoted") == 1
    )
    assert value(registry, retrains, trigger="interval", kind="stateless", outcome="kept") == 1
    duration = "stream_learner_retrain_duration_seconds"
    assert value(registry, f"{duration}_count", kind="stateful") == 1.0
    assert value(registry, f"{duration}_sum", kind="stateless") == 42.0
    assert value(registry, f"{duration}_bucket", kind="stateless", le="30.0") == 0.0
    assert value(registry, f"{duration}_bucket", kind="stateless", le="60.0") == 1.0


def test_prequential_metrics_split_rolling_window(metrics, registry) -> None:
    metrics.set_key_metrics("fraud", {"accuracy": 0.91, "accuracy_rolling": 0.88, "logloss": 0.3})
    name = "stream_learner_prequential_metric"
    assert value(registry, name, key="fraud", metric="accuracy", window="cumulative") == 0.91
    assert value(registry, name, key="fraud", metric="accuracy", window="rolling") == 0.88
    assert value(registry, name, key="fraud", metric="logloss", window="cumulative") == 0.3
    assert (
        value(registry, name, key="fraud", metric="accuracy_rolling", window="cumulative") is None
    )


def test_model_lineage_series_is_replaced(metrics, registry) -> None:
    metrics.set_model("fraud", 1, "lin-a")
    metrics.set_model("fraud", 2, "lin-a")
    assert value(registry, "stream_learner_model_version", key="fraud") == 2.0
    assert value(registry, "stream_learner_model_info", key="fraud", lineage="lin-a") == 1.0
    metrics.set_model("fraud", 1, "tree-b")
    assert value(registry, "stream_learner_model_info", key="fraud", lineage="tree-b") == 1.0
    assert value(registry, "stream_learner_model_info", key="fraud", lineage="lin-a") is None
    assert value(registry, "stream_learner_model_version", key="fraud") == 1.0


def test_ages_are_computed_at_scrape_time(metrics, registry, clock) -> None:
    metrics.mark_retrain("fraud", 900.0)
    metrics.record_checkpoint("fraud", 2048, 990.0)
    assert value(registry, "stream_learner_last_retrain_timestamp_seconds", key="fraud") == 900.0
    assert value(registry, "stream_learner_seconds_since_last_retrain", key="fraud") == 100.0
    assert value(registry, "stream_learner_checkpoint_age_seconds", key="fraud") == 10.0
    assert value(registry, "stream_learner_checkpoint_size_bytes", key="fraud") == 2048.0
    clock.now = 1_060.0  # no further calls: the next scrape still sees the ages grow
    assert value(registry, "stream_learner_seconds_since_last_retrain", key="fraud") == 160.0
    assert value(registry, "stream_learner_checkpoint_age_seconds", key="fraud") == 70.0
    metrics.record_checkpoint("fraud", 4096, 2_000.0)  # ahead of our clock: clamped, not < 0
    assert value(registry, "stream_learner_checkpoint_age_seconds", key="fraud") == 0.0


def test_checkpoint_counters(metrics, registry) -> None:
    metrics.count_checkpoint("written")
    metrics.count_checkpoint("restored", 3)
    metrics.count_snapshot_rejection("digest_mismatch")
    assert value(registry, "stream_learner_checkpoints_total", result="written") == 1.0
    assert value(registry, "stream_learner_checkpoints_total", result="restored") == 3.0
    assert value(registry, "stream_learner_checkpoints_total", result="rejected") == 0.0
    assert (
        value(registry, "stream_learner_snapshot_rejections_total", reason="digest_mismatch") == 1.0
    )


def test_batches_land_in_millisecond_buckets(metrics, registry) -> None:
    metrics.observe_batch(0.003, 500)
    metrics.observe_batch(2.0, 7)
    duration = "stream_learner_batch_duration_seconds_bucket"
    assert value(registry, duration, le="0.001") == 0.0
    assert value(registry, duration, le="0.0025") == 0.0
    assert value(registry, duration, le="0.005") == 1.0
    assert value(registry, duration, le="5.0") == 2.0
    assert value(registry, "stream_learner_batch_size_sum") == 507.0
    assert value(registry, "stream_learner_batch_size_bucket", le="10.0") == 1.0


def test_lag_and_revoked_partition(metrics, registry) -> None:
    metrics.set_lag("events", 0, 1200)
    metrics.set_lag("events", 1, 5)
    assert value(registry, "stream_learner_consumer_lag", topic="events", partition="0") == 1200.0
    metrics.forget_partition("events", 0)
    assert value(registry, "stream_learner_consumer_lag", topic="events", partition="0") is None
    assert value(registry, "stream_learner_consumer_lag", topic="events", partition="1") == 5.0


def test_readiness_and_assignment(metrics, registry) -> None:
    assert value(registry, "stream_learner_ready") == 0.0
    metrics.set_ready(True)
    metrics.set_assigned_partitions(6)
    assert value(registry, "stream_learner_ready") == 1.0
    assert value(registry, "stream_learner_assigned_partitions") == 6.0
    metrics.set_ready(False)
    assert value(registry, "stream_learner_ready") == 0.0


def test_build_info(registry) -> None:
    ServiceMetrics(registry)
    assert value(registry, "stream_learner_build_info", version=__version__) == 1.0
    other = CollectorRegistry()
    ServiceMetrics(other, instance="pod-7")
    info = value(other, "stream_learner_build_info", version=__version__, instance_id="pod-7")
    assert info == 1.0


def test_keys_beyond_the_cap_share_other(metrics, registry) -> None:
    for i, key in enumerate(["a", "b", "c", "d", "e"]):
        metrics.set_model(key, i, "lin")
        metrics.set_key_metrics(key, {"accuracy": i / 10})
        metrics.record_checkpoint(key, 100 + i, 999.0)
        metrics.mark_retrain(key, 999.0)
    metrics.set_model("d", 9, "lin")  # a folded key writing again is not a new overflow
    assert label_values(registry, "key") == {"a", "b", "c", OTHER_KEY}
    assert value(registry, "stream_learner_keys_overflow_total") == 2.0
    assert value(registry, "stream_learner_keys_active") == 5.0
    # Gauges under __other__ hold the last value written by any folded key.
    assert value(registry, "stream_learner_model_version", key=OTHER_KEY) == 9.0
    assert value(registry, "stream_learner_checkpoint_size_bytes", key=OTHER_KEY) == 104.0
    assert value(registry, "stream_learner_model_version", key="c") == 2.0


def test_forget_key_frees_its_slot(metrics, registry) -> None:
    for key in ["a", "b", "c", "d"]:
        metrics.set_model(key, 1, "lin")
        metrics.set_key_metrics(key, {"accuracy": 0.5, "accuracy_rolling": 0.4})
        metrics.record_checkpoint(key, 10, 999.0)
        metrics.mark_retrain(key, 999.0)
    metrics.forget_key("a")
    assert "a" not in label_values(registry, "key")
    assert value(registry, "stream_learner_keys_active") == 3.0
    metrics.set_model("d", 2, "lin")  # already folded: stays in __other__
    metrics.set_model("new", 1, "lin")  # a new key takes the freed slot
    assert label_values(registry, "key") == {"b", "c", "new", OTHER_KEY}
    assert value(registry, "stream_learner_keys_overflow_total") == 1.0


def test_other_series_go_with_the_last_folded_key(metrics, registry) -> None:
    for key in ["a", "b", "c", "d", "e"]:
        metrics.set_model(key, 1, "lin")
        metrics.set_key_metrics(key, {"accuracy": 0.5})
        metrics.mark_retrain(key, 999.0)
    metrics.forget_key("d")
    assert OTHER_KEY in label_values(registry, "key")  # "e" is still folded there
    metrics.forget_key("e")
    metrics.forget_key("never-seen")  # no-op
    assert label_values(registry, "key") == {"a", "b", "c"}
    assert value(registry, "stream_learner_keys_active") == 3.0


def test_long_labels_are_cut_but_stay_distinct(metrics, registry) -> None:
    prefix = "x" * 120
    metrics.count_dead_letters("r" * 500)
    metrics.set_model(prefix + "1", 1, "lin")
    metrics.set_model(prefix + "2", 2, "lin")
    reasons = label_values(registry, "reason")
    keys = label_values(registry, "key")
    assert all(len(label) <= MAX_LABEL_CHARS for label in reasons | keys)
    assert len(keys) == 2
    assert all(label.startswith("x" * 50) for label in keys)


def test_max_keys_must_be_positive(registry) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        ServiceMetrics(registry, max_keys=0)


def test_lag_read_from_a_source_when_scraped():
    from stream_learner.kafka.source import partition_lag

    lag = {("events", 0): 7}
    metrics = ServiceMetrics(lag=lambda: lag)
    metrics.set_lag("events", 1, 99)  # ignored: the source is the truth
    get = metrics.registry.get_sample_value
    assert get("stream_learner_consumer_lag", {"topic": "events", "partition": "0"}) == 7
    lag[("events", 0)] = 0
    assert get("stream_learner_consumer_lag", {"topic": "events", "partition": "0"}) == 0
    assert get("stream_learner_consumer_lag", {"topic": "events", "partition": "1"}) is None
    # From a partition's statistics: the end (last stable offset) minus the committed offset;
    # never committed: from the log's start; unknown end: no figure.
    stats = {"hi_offset": 120, "ls_offset": 110, "lo_offset": 5, "committed_offset": 100}
    assert partition_lag(stats) == 10
    assert partition_lag(stats, committed_reads=False) == 20
    assert partition_lag({**stats, "committed_offset": -1001}) == 105
    assert partition_lag({"hi_offset": 0, "ls_offset": 0, "lo_offset": 0}) == 0
    assert partition_lag({"hi_offset": -1001, "ls_offset": -1001}) is None


class _Reported:
    """What report_key reads of a learner: its scores, its race and its joiner's counts."""

    def __init__(self, i: int) -> None:
        self.scores = {"accuracy": i / 10, "accuracy_rolling": i / 20}
        self.race = (i % 3, i / 7)
        self.counts = (i, i // 2, i // 3)  # the joiner's (joined, unmatched, expired)
        self.evaluator, self.joiner = self, self

    def values(self) -> dict[str, float]:
        return self.scores

    def race_status(self) -> tuple[int, float]:
        return self.race


def _samples(registry: CollectorRegistry) -> dict:
    """Every sample but the ``_created`` times (when each registry made its counters)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_reporting_keys_together_leaves_what_reporting_each_in_turn_does(clock) -> None:
    """Keys folded into __other__ write its gauges once, with the last one's values."""
    one, together = CollectorRegistry(), CollectorRegistry()
    each = ServiceMetrics(one, max_keys=3, clock=clock)
    batch = ServiceMetrics(together, max_keys=3, clock=clock)
    joins_each: dict = {}
    joins_batch: dict = {}
    batches = [["a", "d", "b", "e", "c", "f"], ["f", "a", "g"], ["e", "d"], ["b"]]
    for n, keys in enumerate(batches):
        reported = [(key, _Reported(n * 10 + i)) for i, key in enumerate(keys)]
        for key, learner in reported:
            each.report_key(key, learner, joins_each)
        batch.report_keys(reported, joins_batch)
        assert _samples(together) == _samples(one)
        assert joins_batch == joins_each
    # a, d and b took the three labels; "e" (batch 3, its first key: 20) was the last folded.
    assert value(together, "stream_learner_race_candidates", key=OTHER_KEY) == 20 % 3
    assert value(together, "stream_learner_keys_overflow_total") == 4.0
