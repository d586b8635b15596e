"""The trigger policy: one place that decides when a key's model is retrained, and why.

Every retraining cadence goes through :class:`TriggerPolicy`, so they share one set of guards
and one log format:

============  =========================================================================
trigger       fires when
============  =========================================================================
on_demand     someone asks (:meth:`TriggerPolicy.request`, from the control topic)
label_volume  ``label_volume`` new labelled events since the last retrain
interval      ``interval_events`` events and/or ``interval_seconds`` of event time since
              the last retrain
performance   the error detector reports a *drift* (a warning is only logged)
data_drift    an input feature moved; alone it is only a warning, unless
              ``data_drift_triggers`` is set or a performance warning comes within
              ``confirm_within`` events of it (either order)
============  =========================================================================

Guards, checked in this order: a retrain already *in flight* (decided and not yet applied or
abandoned) blocks everything, on-demand requests included, because two retrains of one model
would race and the second would be built on the model the first is about to replace; ask again
once it is done. *Warm-up* (fewer than ``warmup`` labelled events), *cooldown*
(``cooldown_events`` / ``cooldown_seconds`` since the last retrain decision) and the hourly
*budget* (``max_per_hour`` retrains within the last hour of event time) stop automatic triggers
only: they exist to keep automation from retraining too early or too often, and a person who
asks has made that call. On-demand retrains still count toward the budget.

What gets a :class:`Decision`: every trigger that fires and every drift signal, whatever the
outcome (``retrain``, ``skip`` with the guard that blocked it, or ``warn``). Events on which
nothing fires get none, or the log would be one line per event. A scheduled trigger that is
blocked is skipped, not queued: its count restarts, so a blocked interval is logged once per
interval, not once per event.

Time is event time: the event's ``ts``, or its index when it has none (then "seconds" are
events). The core never reads the wall clock, so a replay makes the same decisions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from stream_learner.core.drift import DriftSignal
from stream_learner.core.events import DEFAULT_KEY
from stream_learner.errors import ConfigError

__all__ = [
    "ACTIONS",
    "KINDS",
    "TRIGGERS",
    "Decision",
    "PolicyConfig",
    "TriggerPolicy",
    "config_from_dict",
]

#: ``retention`` is not the policy's: the service records it when input the key's state
#: should reflect was deleted from the log before it was learned (``input_lost``).
TRIGGERS = ("on_demand", "label_volume", "interval", "performance", "data_drift", "retention")
#: ``promote`` and ``keep`` are the learner's, when a retrain's result is applied, and
#: ``rollback`` when an earlier version is served again; ``race`` (a race starts, or a
#: candidate enters it), ``abandon`` (a candidate is given up) and ``promote`` are also the
#: race's (see :mod:`stream_learner.core.race`).
ACTIONS = ("retrain", "skip", "warn", "promote", "keep", "rollback", "race", "abandon")
KINDS = ("stateful", "stateless")

_HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Decision:
    """One logged decision: what fired, what was done, and why.

    ``code`` is for machines (``performance_degraded``, ``blocked_by_cooldown``, ...),
    ``reason`` for people. ``index`` is the learner's input counter (offset-like) and ``ts``
    the event time. ``values`` holds the numbers the decision was made on; treat it as
    read-only.
    """

    key: str
    index: int
    ts: float
    trigger: str
    action: str
    code: str
    reason: str
    kind: str | None = None
    signal: DriftSignal | None = None
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyConfig:
    """The ``[policy]`` section. Counts are events; ``0`` switches a count-based trigger off,
    and ``max_per_hour = 0`` means no budget.

    ``kind_on_change`` is the retrain kind after a detected change (the old model learned a
    concept that no longer holds, so start cold); ``kind_on_schedule`` the kind for on-demand,
    label-volume and interval retrains (nothing is known to be wrong: refresh warm).
    """

    on_demand: bool = True
    performance: bool = True
    data_drift: bool = True
    data_drift_triggers: bool = False
    confirm_within: int = 1000
    label_volume: int = 0
    interval_events: int = 0
    interval_seconds: float = 0.0
    warmup: int = 1000
    cooldown_events: int = 1000
    cooldown_seconds: float = 0.0
    max_per_hour: int = 12
    kind_on_change: str = "stateless"
    kind_on_schedule: str = "stateful"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "policy") -> PolicyConfig:
        """Validate a ``[policy]`` table; an unknown key or a bad value names the key."""
        return config_from_dict(cls, d, where)

    def __post_init__(self) -> None:
        for name in ("kind_on_change", "kind_on_schedule"):
            if getattr(self, name) not in KINDS:
                raise ConfigError(
                    f"policy.{name}: {getattr(self, name)!r}; choose one of: {', '.join(KINDS)}"
                )


def config_from_dict(cls: type, d: Mapping[str, Any], where: str) -> Any:
    """Build a config dataclass from a table, checked against its fields' defaults.

    Unknown keys are an error naming the key and the accepted ones. Booleans must be
    booleans, integers non-negative integers, floats finite non-negative numbers (a bool is
    never taken for a number), tables tables, and a setting that defaults to ``None`` a
    string. Shared by every config section (the core's and the service's).
    """
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a table, got {type(d).__name__}")
    defaults = {
        f.name: f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        for f in fields(cls)
    }
    values = {}
    for name, value in d.items():
        if name not in defaults:
            accepted = ", ".join(defaults)
            raise ConfigError(f"{where}.{name}: unknown key; accepted: {accepted}")
        default = defaults[name]
        if type(default) is bool:
            ok, expected = type(value) is bool, "true or false"
        elif type(default) is int:
            ok, expected = type(value) is int and value >= 0, "an integer >= 0"
        elif type(default) is float:
            ok = type(value) in (int, float) and 0 <= value < math.inf
            expected = "a number >= 0"
            value = float(value) if ok else value
        elif isinstance(default, Mapping):
            ok, expected = isinstance(value, Mapping), "a table"
            value = dict(value) if ok else value
        elif default is None:  # an optional setting, a string when set
            ok, expected = type(value) is str, "a string"
        else:
            ok, expected = isinstance(value, type(default)), type(default).__name__
        if not ok:
            raise ConfigError(f"{where}.{name}: {value!r}; expected {expected}")
        values[name] = value
    return cls(**values)


class TriggerPolicy:
    """Decides, for one key, when to retrain; see the module docstring for the rules.

    The learner calls :meth:`observe` once per input (cheap: counters and comparisons),
    :meth:`signal` for each drift signal, :meth:`request` for an on-demand retrain, and
    :meth:`finished` when a retrain's result has been applied or abandoned. ``observe`` is
    ``labels += 1`` (for a labelled input) then :meth:`due` when ``scheduled``; the learner's
    hot path does just that inline, as no scheduled trigger can be due when none is set.

    >>> policy = TriggerPolicy(PolicyConfig(warmup=2))
    >>> policy.request("backfill done", index=1, ts=1.0).code
    'on_demand'
    >>> policy.request("again", index=2, ts=2.0).code
    'blocked_by_in_flight'
    """

    scheduled = True  # a policy pickled before this flag existed checks every input

    def __init__(self, config: PolicyConfig | None = None, key: str = DEFAULT_KEY) -> None:
        self.config = config = config or PolicyConfig()
        self.key = key
        self.labels = 0  # labelled inputs seen
        self.in_flight: Decision | None = None
        self._last_index: int | None = None  # the last retrain decision
        self._last_ts = 0.0
        self._last_labels = 0
        self._recent: deque[float] = deque()  # event times of retrains within the last hour
        self._warning_at: int | None = None  # last performance warning, for confirmation
        self._data_drift_at: int | None = None  # last unconfirmed data drift
        # When the scheduled triggers are next due (inf: switched off).
        self._due_labels = config.label_volume or math.inf
        self._due_index = config.interval_events or math.inf
        self._due_ts = math.inf
        self._clock_unset = bool(config.interval_seconds)
        #: Whether any scheduled trigger (label volume, interval) is set: if not, :meth:`due`
        #: never decides anything and need not be called.
        self.scheduled = bool(
            config.label_volume or config.interval_events or config.interval_seconds
        )

    # -- inputs -------------------------------------------------------------------------

    def observe(self, index: int, ts: float, labelled: bool) -> Decision | None:
        """Count one input; return a decision when a scheduled trigger is due."""
        if labelled:
            self.labels += 1
        return self.due(index, ts) if self.scheduled else None

    def due(self, index: int, ts: float) -> Decision | None:
        """The decision of the scheduled trigger due at this input (already counted), if any."""
        if self.labels >= self._due_labels or index >= self._due_index or ts >= self._due_ts:
            return self._scheduled(index, ts)
        if self._clock_unset:  # the first input starts the interval clock
            self._clock_unset = False
            self._due_ts = ts + self.config.interval_seconds
        return None

    def signal(self, signal: DriftSignal, index: int, ts: float) -> Decision:
        """Decide on one drift signal (every signal gets a decision, most of them not to act)."""
        c = self.config
        s = signal
        if s.kind == "performance":
            if s.level == "warning":
                self._warning_at = index
                if c.data_drift and _within(self._data_drift_at, index, c.confirm_within):
                    self._data_drift_at = None
                    reason = "data drift confirmed by a performance warning"
                    return self._retrain(index, ts, "data_drift", "data_drift_confirmed", reason, s)
                reason = f"performance warning: loss {s.before:.4g} -> {s.after:.4g}"
                return self._decide(
                    index, ts, "performance", "warn", "performance_warning", reason, s
                )
            if not c.performance:
                reason = "performance degraded, but the performance trigger is off"
                return self._decide(index, ts, "performance", "skip", "trigger_disabled", reason, s)
            reason = f"performance degraded: loss {s.before:.4g} -> {s.after:.4g} ({s.detector})"
            return self._retrain(index, ts, "performance", "performance_degraded", reason, s)
        moved = f"feature {s.feature!r} moved {s.direction}: mean {s.before:.4g} -> {s.after:.4g}"
        if not c.data_drift:
            reason = f"{moved}, but the data-drift trigger is off"
            return self._decide(index, ts, "data_drift", "skip", "trigger_disabled", reason, s)
        if c.data_drift_triggers:
            return self._retrain(index, ts, "data_drift", "data_drift", moved, s)
        if _within(self._warning_at, index, c.confirm_within):
            self._warning_at = None
            reason = f"{moved}, confirmed by a performance warning"
            return self._retrain(index, ts, "data_drift", "data_drift_confirmed", reason, s)
        self._data_drift_at = index
        reason = f"{moved}; data drift alone, not confirmed by performance"
        return self._decide(index, ts, "data_drift", "warn", "data_drift_unconfirmed", reason, s)

    def request(self, reason: str, index: int, ts: float, kind: str | None = None) -> Decision:
        """An on-demand retrain (``kind`` defaults to ``kind_on_schedule``)."""
        if kind is not None and kind not in KINDS:
            raise ConfigError(f"kind: {kind!r}; choose one of: {', '.join(KINDS)}")
        text = f"on demand: {reason}" if reason else "on demand"
        if not self.config.on_demand:
            return self._decide(
                index,
                ts,
                "on_demand",
                "skip",
                "trigger_disabled",
                text + ", but on-demand retrains are off",
            )
        return self._retrain(index, ts, "on_demand", "on_demand", text, kind=kind)

    def finished(self) -> None:
        """The in-flight retrain is over (its result was applied, or it was abandoned)."""
        self.in_flight = None

    # -- decisions ------------------------------------------------------------------------

    def _scheduled(self, index: int, ts: float) -> Decision:
        c = self.config
        if self.labels >= self._due_labels:
            trigger, code = "label_volume", "label_volume_reached"
            reason = f"{self.labels - self._last_labels} new labels since the last retrain"
        elif index >= self._due_index:
            trigger, code = "interval", "interval_events_elapsed"
            reason = f"{c.interval_events} events since the last retrain or interval"
        else:
            trigger, code = "interval", "interval_seconds_elapsed"
            reason = f"{c.interval_seconds:g} s of event time since the last retrain or interval"
        self._reschedule(index, ts)  # blocked or not, the count restarts: skipped, not queued
        return self._retrain(index, ts, trigger, code, reason)

    def _reschedule(self, index: int, ts: float) -> None:
        c = self.config
        self._due_labels = self.labels + c.label_volume if c.label_volume else math.inf
        self._due_index = index + c.interval_events if c.interval_events else math.inf
        self._due_ts = ts + c.interval_seconds if c.interval_seconds else math.inf
        self._clock_unset = False

    def _retrain(
        self,
        index: int,
        ts: float,
        trigger: str,
        code: str,
        reason: str,
        signal: DriftSignal | None = None,
        kind: str | None = None,
    ) -> Decision:
        blocked = self._blocked(index, ts, automatic=trigger != "on_demand")
        if blocked is not None:
            code, why = blocked
            return self._decide(
                index, ts, trigger, "skip", code, f"{reason}; blocked: {why}", signal
            )
        c = self.config
        if kind is None:
            change = trigger in ("performance", "data_drift")
            kind = c.kind_on_change if change else c.kind_on_schedule
        values = {"labels_since_last": self.labels - self._last_labels}
        if self._last_index is not None:
            values["events_since_last"] = index - self._last_index
        decision = Decision(
            self.key, index, ts, trigger, "retrain", code, reason, kind, signal, values
        )
        self.in_flight = decision
        self._last_index, self._last_ts, self._last_labels = index, ts, self.labels
        self._recent.append(ts)
        self._reschedule(index, ts)
        return decision

    def _blocked(self, index: int, ts: float, automatic: bool) -> tuple[str, str] | None:
        c = self.config
        if self.in_flight is not None:
            started = self.in_flight
            return (
                "blocked_by_in_flight",
                f"the {started.trigger} retrain decided at {started.index} is still running",
            )
        recent = self._recent
        while recent and recent[0] <= ts - _HOUR:
            recent.popleft()
        if not automatic:
            return None
        if self.labels < c.warmup:
            return "blocked_by_warmup", f"warm-up, {self.labels} of {c.warmup} labelled events"
        if self._last_index is not None:
            since = index - self._last_index
            if since < c.cooldown_events:
                return (
                    "blocked_by_cooldown",
                    f"cooldown, {since} of {c.cooldown_events} events since the last retrain",
                )
            elapsed = ts - self._last_ts
            if elapsed < c.cooldown_seconds:
                return (
                    "blocked_by_cooldown",
                    f"cooldown, {elapsed:g} of {c.cooldown_seconds:g} s since the last retrain",
                )
        if c.max_per_hour and len(recent) >= c.max_per_hour:
            return (
                "blocked_by_budget",
                f"budget, {len(recent)} retrains in the last hour (max {c.max_per_hour})",
            )
        return None

    def _decide(
        self,
        index: int,
        ts: float,
        trigger: str,
        action: str,
        code: str,
        reason: str,
        signal: DriftSignal | None = None,
    ) -> Decision:
        return Decision(self.key, index, ts, trigger, action, code, reason, None, signal)


def _within(at: int | None, index: int, window: int) -> bool:
    return at is not None and index - at <= window
