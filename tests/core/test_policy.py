from __future__ import annotations

import dataclasses
import pickle

import pytest

from stream_learner.core.drift import DriftSignal
from stream_learner.core.policy import Decision, PolicyConfig, TriggerPolicy
from stream_learner.errors import ConfigError


def perf(level: str = "drift", index: int = 0) -> DriftSignal:
    return DriftSignal("performance", "adwin", level, "up", index, 0.1, 0.3)


def data(index: int = 0) -> DriftSignal:
    return DriftSignal("data", "page_hinkley", "drift", "up", index, 0.0, 1.0, "amount")


def warmed(**config) -> TriggerPolicy:
    """A policy that has seen ``warmup`` labelled events (indices 1..warmup, ts = index)."""
    policy = TriggerPolicy(PolicyConfig(**config), key="k")
    for i in range(1, policy.config.warmup + 1):
        assert policy.observe(i, float(i), True) is None
    return policy


def codes(decisions: list[Decision | None]) -> list[str]:
    return [d.code for d in decisions if d is not None]


# -- configuration ------------------------------------------------------------------------


def test_from_dict_reads_every_key_and_keeps_defaults():
    config = PolicyConfig.from_dict({"warmup": 10, "interval_seconds": 60, "performance": False})
    assert config == PolicyConfig(warmup=10, interval_seconds=60.0, performance=False)
    assert isinstance(config.interval_seconds, float)
    assert PolicyConfig.from_dict({}) == PolicyConfig()


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"cooldown": 10}, "policy.cooldown: unknown key; accepted: on_demand, performance"),
        ({"warmup": -1}, "policy.warmup: -1; expected an integer >= 0"),
        ({"warmup": 1.5}, "policy.warmup: 1.5; expected an integer >= 0"),
        ({"warmup": True}, "policy.warmup: True; expected an integer >= 0"),
        ({"performance": "yes"}, "policy.performance: 'yes'; expected true or false"),
        ({"interval_seconds": "1h"}, "policy.interval_seconds: '1h'; expected a number >= 0"),
        ({"cooldown_seconds": float("inf")}, "policy.cooldown_seconds: inf; expected a number"),
        ({"kind_on_change": "warm"}, "policy.kind_on_change: 'warm'; choose one of: stateful"),
    ],
)
def test_bad_tables_are_config_errors_naming_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig.from_dict(table)


def test_a_non_table_is_a_config_error():
    with pytest.raises(ConfigError, match="policy: expected a table"):
        PolicyConfig.from_dict(["warmup"])  # type: ignore[arg-type]


# -- performance and the guards --------------------------------------------------------------


def test_nothing_is_decided_on_quiet_events():
    policy = TriggerPolicy(PolicyConfig(warmup=0))
    assert [policy.observe(i, float(i), i % 2 == 0) for i in range(1, 5000)] == [None] * 4999


def test_a_performance_drift_after_warmup_decides_a_stateless_retrain():
    policy = warmed(warmup=100)
    d = policy.signal(perf(index=150), 150, 150.0)
    assert (d.key, d.index, d.ts, d.trigger, d.action) == (
        "k",
        150,
        150.0,
        "performance",
        "retrain",
    )
    assert (d.code, d.kind, d.signal) == ("performance_degraded", "stateless", perf(index=150))
    assert "0.1 -> 0.3" in d.reason
    assert d.values == {"labels_since_last": 100}
    assert policy.in_flight is d


def test_warmup_blocks_automatic_triggers_only():
    policy = TriggerPolicy(PolicyConfig(warmup=100))
    policy.observe(1, 1.0, True)
    d = policy.signal(perf(), 1, 1.0)
    assert (d.action, d.code) == ("skip", "blocked_by_warmup")
    assert "1 of 100 labelled events" in d.reason
    assert policy.in_flight is None
    assert policy.request("asked", 2, 2.0).code == "on_demand"


def test_a_performance_warning_is_logged_not_acted_on():
    policy = warmed(warmup=10)
    d = policy.signal(perf("warning"), 11, 11.0)
    assert (d.trigger, d.action, d.code, d.kind) == (
        "performance",
        "warn",
        "performance_warning",
        None,
    )
    assert policy.in_flight is None


def test_a_disabled_performance_trigger_logs_a_skip():
    policy = warmed(warmup=10, performance=False)
    d = policy.signal(perf(), 11, 11.0)
    assert (d.action, d.code) == ("skip", "trigger_disabled")


def test_in_flight_blocks_every_trigger_until_finished():
    policy = warmed(warmup=10, cooldown_events=0)
    first = policy.signal(perf(), 11, 11.0)
    blocked = [policy.signal(perf(), 12, 12.0), policy.request("please", 13, 13.0)]
    assert codes(blocked) == ["blocked_by_in_flight", "blocked_by_in_flight"]
    assert f"decided at {first.index}" in blocked[1].reason
    policy.finished()
    assert policy.signal(perf(), 14, 14.0).action == "retrain"


def test_cooldown_in_events():
    policy = warmed(warmup=10, cooldown_events=100)
    policy.signal(perf(), 20, 20.0)
    policy.finished()
    assert policy.signal(perf(), 119, 119.0).code == "blocked_by_cooldown"
    assert policy.request("now", 119, 119.0).code == "on_demand"  # a person may
    policy.finished()
    # The cooldown counts from the last retrain decision, the on-demand one included.
    assert policy.signal(perf(), 200, 200.0).code == "blocked_by_cooldown"
    assert policy.signal(perf(), 219, 219.0).code == "performance_degraded"


def test_cooldown_in_seconds_of_event_time():
    policy = warmed(warmup=10, cooldown_events=0, cooldown_seconds=60)
    policy.signal(perf(), 20, 1000.0)
    policy.finished()
    d = policy.signal(perf(), 30, 1059.0)
    assert d.code == "blocked_by_cooldown"
    assert d.reason.endswith("blocked: cooldown, 59 of 60 s since the last retrain")
    assert policy.signal(perf(), 31, 1060.0).action == "retrain"


def test_the_hourly_budget_counts_retrains_in_the_last_hour_of_event_time():
    policy = warmed(warmup=10, cooldown_events=0, max_per_hour=2)
    for ts in (100.0, 200.0):
        assert policy.signal(perf(), 20, ts).action == "retrain"
        policy.finished()
    assert policy.signal(perf(), 21, 300.0).code == "blocked_by_budget"
    assert policy.request("asked", 22, 400.0).action == "retrain"  # on demand: not blocked...
    policy.finished()
    assert policy.signal(perf(), 23, 3699.0).code == "blocked_by_budget"  # ...but counted
    assert policy.signal(perf(), 24, 3700.0).code == "blocked_by_budget"  # 200 and 400 left
    assert policy.signal(perf(), 25, 4000.0).action == "retrain"  # an hour is over for both


def test_on_demand_can_be_switched_off_and_can_choose_its_kind():
    assert TriggerPolicy(PolicyConfig(on_demand=False)).request("x", 1, 1.0).code == (
        "trigger_disabled"
    )
    policy = TriggerPolicy()
    d = policy.request("backfill", 1, 1.0, kind="stateless")
    assert (d.trigger, d.kind, d.reason) == ("on_demand", "stateless", "on demand: backfill")
    assert TriggerPolicy().request("", 1, 1.0).kind == "stateful"
    with pytest.raises(ConfigError, match="kind: 'hot'; choose one of: stateful, stateless"):
        TriggerPolicy().request("", 1, 1.0, kind="hot")


# -- scheduled triggers ----------------------------------------------------------------------


def test_label_volume_counts_labelled_events_since_the_last_retrain():
    policy = TriggerPolicy(PolicyConfig(warmup=0, cooldown_events=0, label_volume=50))
    decided = {}
    for i in range(1, 301):
        d = policy.observe(i, float(i), labelled=i % 2 == 0)  # one event in two is labelled
        if d is not None:
            decided[i] = d
            policy.finished()
    assert list(decided) == [100, 200, 300]
    assert {(d.trigger, d.code, d.kind) for d in decided.values()} == {
        ("label_volume", "label_volume_reached", "stateful")
    }
    assert decided[100].reason == "50 new labels since the last retrain"


def test_interval_in_events_restarts_after_any_retrain():
    policy = TriggerPolicy(PolicyConfig(warmup=0, cooldown_events=0, interval_events=100))
    decided = []
    for i in range(1, 351):
        if i == 150:
            decided.append(policy.signal(perf(), i, float(i)))
        elif (d := policy.observe(i, float(i), True)) is not None:
            decided.append(d)
        if decided and decided[-1].action == "retrain":
            policy.finished()
    assert [(d.index, d.code) for d in decided] == [
        (100, "interval_events_elapsed"),
        (150, "performance_degraded"),
        (250, "interval_events_elapsed"),
        (350, "interval_events_elapsed"),
    ]


def test_interval_in_seconds_starts_with_the_first_event():
    policy = TriggerPolicy(PolicyConfig(warmup=0, cooldown_events=0, interval_seconds=60))
    decided = []
    for i in range(1, 400):
        if (d := policy.observe(i, 1000.0 + 0.5 * i, True)) is not None:
            decided.append(d)
            policy.finished()
    assert [(d.index, d.code) for d in decided] == [
        (121, "interval_seconds_elapsed"),
        (241, "interval_seconds_elapsed"),
        (361, "interval_seconds_elapsed"),
    ]


def test_a_blocked_tick_is_skipped_once_not_repeated_on_every_event():
    policy = TriggerPolicy(PolicyConfig(warmup=1000, interval_events=100))
    decided = [d for i in range(1, 501) if (d := policy.observe(i, float(i), True))]
    assert [(d.index, d.code) for d in decided] == [
        (i, "blocked_by_warmup") for i in (100, 200, 300, 400, 500)
    ]


# -- data drift --------------------------------------------------------------------------------


def test_data_drift_alone_is_a_warning():
    policy = warmed(warmup=10)
    d = policy.signal(data(), 20, 20.0)
    assert (d.trigger, d.action, d.code) == ("data_drift", "warn", "data_drift_unconfirmed")
    assert "feature 'amount' moved up: mean 0 -> 1" in d.reason
    assert policy.in_flight is None


@pytest.mark.parametrize("order", ["data_first", "warning_first"])
def test_data_drift_confirmed_by_a_performance_warning_within_the_window(order):
    policy = warmed(warmup=10, confirm_within=100)
    if order == "data_first":
        first = policy.signal(data(), 20, 20.0)
        second = policy.signal(perf("warning"), 120, 120.0)
    else:
        first = policy.signal(perf("warning"), 20, 20.0)
        second = policy.signal(data(), 120, 120.0)
    assert first.action == "warn"
    assert (second.trigger, second.action, second.code) == (
        "data_drift",
        "retrain",
        "data_drift_confirmed",
    )
    assert second.kind == "stateless"


def test_no_confirmation_outside_the_window():
    policy = warmed(warmup=10, confirm_within=100)
    policy.signal(data(), 20, 20.0)
    assert policy.signal(perf("warning"), 121, 121.0).code == "performance_warning"


def test_data_drift_can_trigger_alone_or_be_switched_off():
    assert warmed(warmup=10, data_drift_triggers=True).signal(data(), 20, 20.0).code == (
        "data_drift"
    )
    d = warmed(warmup=10, data_drift=False).signal(data(), 20, 20.0)
    assert (d.action, d.code) == ("skip", "trigger_disabled")


# -- records and state -------------------------------------------------------------------------


def test_decisions_are_frozen():
    d = TriggerPolicy().request("", 1, 1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.action = "skip"  # type: ignore[misc]


def test_the_policy_pickles_mid_stream_and_decides_the_same_afterwards():
    def drive(policy: TriggerPolicy, start: int, stop: int) -> list[Decision]:
        out = []
        for i in range(start, stop):
            d = policy.signal(perf(), i, float(i)) if i % 700 == 0 else policy.observe(i, i, True)
            if d is not None:
                out.append(d)
                if d.action == "retrain" and i % 3:
                    policy.finished()
        return out

    config = PolicyConfig(warmup=500, label_volume=300, interval_seconds=450, max_per_hour=3)
    policy = TriggerPolicy(config)
    drive(policy, 1, 2000)
    clone = pickle.loads(pickle.dumps(policy))
    assert drive(clone, 2000, 6000) == drive(policy, 2000, 6000) != []


@pytest.mark.parametrize(
    ("schedule", "scheduled"),
    [
        ({}, False),
        ({"label_volume": 50}, True),
        ({"interval_events": 70}, True),
        ({"interval_seconds": 30.0}, True),
    ],
)
def test_due_is_only_needed_when_a_schedule_is_set(schedule, scheduled):
    """``observe`` skips ``due`` when nothing is scheduled: ``due`` must then never decide."""
    policy = TriggerPolicy(PolicyConfig(warmup=0, cooldown_events=0, **schedule))
    assert policy.scheduled is scheduled
    decided = []
    for i in range(1, 2000):
        policy.labels += i % 3 != 0
        if (d := policy.due(i, 1000.0 + 0.5 * i)) is not None:
            decided.append(d)
            policy.finished()
    assert bool(decided) is scheduled


def test_a_policy_pickled_before_scheduled_existed_checks_every_input():
    policy = TriggerPolicy(PolicyConfig(warmup=0, cooldown_events=0, interval_events=100))
    del policy.__dict__["scheduled"]  # the state of such a snapshot
    restored = pickle.loads(pickle.dumps(policy))
    decided = [d.index for i in range(1, 301) if (d := restored.observe(i, float(i), True))]
    assert decided == [100, 200, 300] and restored.labels == 300
