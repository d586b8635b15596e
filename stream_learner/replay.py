"""Backtests of trigger policies: which policy would have served best on our own history?

:func:`replay` runs each policy over the same recorded history, with a learner per key
(fresh from the config's model spec, or continued from a checkpoint) exactly as the service
would have run it: results of a retrain are applied ``apply_after`` inputs of its key after
the retrain started (the service's ``retrain_apply_after``), so a replay promotes the same
models at the same events; pause, resume and retrain commands in a Kafka history are carried
out as the service does, and an input the model refuses is skipped (the service
dead-letters it as ``model_rejected``).
Retrains run inline; the core never reads the clock to decide, so the same history and
policies give the same report (only the timings differ).

A history is a JSONL file (one event or delayed-label object per line, the event contract of
:mod:`stream_learner.core.events`) or a CSV file with the columns ``id``, ``key``, ``ts``,
``y`` and one column per feature, or a range of the service's own input topics, read by
:func:`stream_learner.kafka.history.read_kafka_history` into the same list in the order the
service learned it (so that replaying it with the config's policy reproduces the service's
decisions). Pure: no Kafka here.
"""

from __future__ import annotations

import copy
import csv
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path
from typing import Any

import orjson

from stream_learner.config import SECTIONS, Config, read_toml
from stream_learner.core.codec import KeyCodec
from stream_learner.core.collector import learning_thresholds
from stream_learner.core.commands import Command
from stream_learner.core.drift import DriftSignal
from stream_learner.core.events import (
    MAX_EVENT_BYTES,
    MAX_FEATURE_NAME_CHARS,
    MAX_FEATURES,
    Event,
    Label,
    RecordDecoder,
    check_label,
    decode,
)
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import Learner, LearnerConfig, Outcome
from stream_learner.core.models import ModelSpec
from stream_learner.core.policy import Decision, PolicyConfig, TriggerPolicy
from stream_learner.core.processor import (
    Drift,
    InlineRunner,
    KeyEvicted,
    KeyOpened,
    KeyReloaded,
    Processor,
    RetrainApplied,
    RetrainFailed,
)
from stream_learner.core.retrain import RetrainConfig
from stream_learner.errors import ConfigError, DecodeError
from stream_learner.keystore import EvictedKeys, SpillFile

__all__ = [
    "BUILTIN_POLICIES",
    "NamedPolicy",
    "PolicyReport",
    "REPLAYED_COMMANDS",
    "RecordHistory",
    "continued",
    "decode_history",
    "load_model_spec",
    "markdown_table",
    "read_history",
    "rebuild",
    "replay",
    "resolve_policy",
    "restored_learner",
]

BUILTIN_POLICIES = ("never", "interval:N", "performance", "data-drift", "config")
CSV_COLUMNS = ("id", "key", "ts", "y")
_JSONL = (".jsonl", ".ndjson", ".json")

Progress = Callable[[str, int, int, float], None]  # policy, done, total, events/s


# -- histories ---------------------------------------------------------------------------


def read_history(path: str | Path) -> list[Event | Label]:
    """Decode a whole history once, so every policy replays the very same objects.

    Any bad line is a :class:`ConfigError` naming the file and line: a backtest on a
    history that silently lost events would compare policies on the wrong data."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _JSONL and suffix != ".csv":
        raise ConfigError(
            f"input {path}: unknown format {suffix or '(no suffix)'!r}; expected .jsonl or .csv"
        )
    if not path.is_file():
        raise ConfigError(f"input {path} does not exist")
    jsonl = suffix in _JSONL
    with path.open("rb") if jsonl else path.open(newline="", encoding="utf-8") as f:
        rows = _jsonl_rows(f) if jsonl else _csv_rows(f, path)
        history: list[Event | Label] = []
        for line, raw in rows:
            try:
                history.append(decode(raw))
            except DecodeError as exc:
                raise ConfigError(f"input {path}, line {line}: {exc}") from None
    return history


def _jsonl_rows(f) -> Iterable[tuple[int, bytes]]:
    for line, raw in enumerate(f, 1):
        if raw.strip():
            yield line, raw


def _csv_rows(f, path: Path) -> Iterable[tuple[int, bytes]]:
    """Each row as the JSON message it stands for. Numbers are parsed (ints stay ints),
    ``true``/``false`` are booleans, an empty cell is a missing value. A row with ``y`` and
    no feature at all is a delayed label."""
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or "id" not in header:
        raise ConfigError(f"input {path}: a CSV history needs a header with an 'id' column")
    features = [(i, name) for i, name in enumerate(header) if name not in CSV_COLUMNS]
    where = {name: header.index(name) for name in CSV_COLUMNS if name in header}
    for line, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise ConfigError(
                f"input {path}, line {line}: {len(row)} cells, header has {len(header)}"
            )
        obj: dict[str, Any] = {}
        for name, i in where.items():
            if row[i] != "":
                obj[name] = row[i] if name in ("id", "key") else _cell(row[i])
        x = {name: _cell(row[i]) for i, name in features if row[i] != ""}
        if x or "y" not in obj:
            obj["x"] = x
        yield line, orjson.dumps(obj)


def _cell(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


#: Commands that change what is learned, replayed as the service carries them out; the
#: others are counted only (``snapshot`` changes nothing learned; ``rollback`` loads a model
#: from the checkpoint topic, which a replay of the inputs does not have).
REPLAYED_COMMANDS = frozenset({"pause", "resume", "retrain"})


@dataclass
class RecordHistory:
    """Input records (of the service's topics) decoded as the service decodes them: the
    history (``items``) and each item's partition, the records read, and what was left out:
    records the service dead-letters (``skipped``, by reason) and commands by name (those in
    :data:`REPLAYED_COMMANDS` are in ``items`` too)."""

    items: list[Event | Label | Command] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    commands: Counter[str] = field(default_factory=Counter)


def decode_history(
    records: Iterable[Any],
    topics: Mapping[str, str],
    *,
    task: str | None = None,
    max_bytes: int = MAX_EVENT_BYTES,
    max_features: int = MAX_FEATURES,
    max_name_chars: int = MAX_FEATURE_NAME_CHARS,
) -> RecordHistory:
    """Decode ``records`` (in the order the service learns them: see
    :class:`~stream_learner.core.ordering.Merger`) with the service's
    :class:`~stream_learner.core.events.RecordDecoder`. ``topics`` maps the roles
    ``events``, ``labels``, ``control`` to topic names. ``task`` (the model's) leaves out
    labels that do not fit it (``bad_label``), as the processor refuses them. A command for
    every key (``*``) stays one item: the replay's processor expands it to the keys of its
    partition, as the service's does."""
    events, labels = topics.get("events"), topics.get("labels")
    decoder = RecordDecoder(  # the service's rules
        max_bytes, max_features=max_features, max_name_chars=max_name_chars
    )
    history = RecordHistory()
    items, partitions = history.items, history.partitions
    skipped, commands = history.skipped, history.commands
    for rec in records:
        history.records += 1
        try:
            if rec.topic == events:
                item = decoder.event(rec.value, rec.key, rec.timestamp_ms)
                if task is not None and item.y is not None:
                    check_label(item.y, task)
            elif rec.topic == labels:
                item = decoder.label(rec.value, rec.key, rec.timestamp_ms)
                if task is not None:
                    check_label(item.y, task)
            else:
                item = decoder.command(rec.value, rec.key)
                commands[item.command] += 1
                if item.command not in REPLAYED_COMMANDS:
                    continue
        except DecodeError as exc:
            skipped[exc.reason] += 1
            continue
        items.append(item)
        partitions.append(rec.partition)
    return history


# -- policies ----------------------------------------------------------------------------

_OFF = {"performance": False, "data_drift": False}


@dataclass(frozen=True)
class NamedPolicy:
    """A policy to replay: its name in the report, and the sections it sets."""

    name: str
    policy: PolicyConfig
    retrain: RetrainConfig


def resolve_policy(
    text: str, retrain: RetrainConfig | None = None, *, config: PolicyConfig | None = None
) -> NamedPolicy:
    """A builtin name or a TOML file with a ``[policy]`` table (and optionally ``[retrain]``).

    Builtins start from the default policy, not the config's, so their names mean the same
    thing in every report; they take the config's ``retrain`` section (``retrain``).

    - ``config``: the config's own ``[policy]`` (``config``), i.e. what the service ran:
      replaying the service's inputs with it reproduces the service's decisions.
    - ``never``: every automatic trigger off (the baseline).
    - ``interval:N``: a stateless retrain every N events, no other trigger, no cooldown or
      budget (a level-2 schedule).
    - ``performance``: the default policy (error drift retrains, data drift warns).
    - ``data-drift``: the default policy, and data drift alone retrains too.
    """
    retrain = retrain or RetrainConfig()
    if text == "config":
        if config is None:
            raise ConfigError("--policy config: no config policy was given to resolve it")
        return NamedPolicy(text, config, retrain)
    if text == "never":
        return NamedPolicy(text, PolicyConfig(**_OFF), retrain)
    if text.startswith("interval:"):
        n = text.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--policy {text!r}: expected interval:N with N an integer >= 1")
        config = PolicyConfig(
            **_OFF,
            interval_events=int(n),
            cooldown_events=0,
            max_per_hour=0,
            kind_on_schedule="stateless",
        )
        return NamedPolicy(text, config, retrain)
    if text == "performance":
        return NamedPolicy(text, PolicyConfig(), retrain)
    if text == "data-drift":
        return NamedPolicy(text, PolicyConfig(data_drift_triggers=True), retrain)
    path = Path(text)
    if path.suffix.lower() != ".toml":
        raise ConfigError(
            f"--policy {text!r}: not a policy; choose one of: {', '.join(BUILTIN_POLICIES)}, "
            "or a .toml file with a [policy] table"
        )
    data = read_toml(path, "policy file")
    for name in data:
        if name not in ("policy", "retrain"):
            raise ConfigError(f"{path}: {name}: unknown section; choose one of: policy, retrain")
    if "policy" not in data:
        raise ConfigError(f"{path}: policy: the [policy] table is missing")
    return NamedPolicy(
        path.stem,
        PolicyConfig.from_dict(data["policy"], where=f"{path.name}: policy"),
        RetrainConfig.from_dict(data["retrain"], where=f"{path.name}: retrain")
        if "retrain" in data
        else retrain,
    )


# -- replay ------------------------------------------------------------------------------

#: A report's time series has at most this many points, however long the history.
MAX_POINTS = 1000
#: ... and keeps at most this many drift signals (a chart shows no more anyway).
MAX_SIGNALS = 1000


@dataclass
class PolicyReport:
    """One policy's backtest. ``metric``/``rolling`` are the primary metric, cumulative and
    over the last ``eval_window`` labelled events, averaged over keys weighted by their
    labelled events. ``retrain_s`` and ``events_per_s`` are timings: they vary run to run.

    For a chart over time: ``series`` is ``rolling`` as it stood after ``input`` inputs (the
    1-based position in the history, with that input's event time ``ts``), at most
    :data:`MAX_POINTS` points however long the history; ``signals`` are the drift signals
    (the first :data:`MAX_SIGNALS`; ``signals_total`` counts all), and every decision also
    names the ``input`` it came at."""

    policy: str
    metric_name: str
    metric: float
    rolling: float
    retrains: int
    promoted: int
    retrain_s: float
    inputs: int
    events_per_s: float
    decisions: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, list[Any]] = field(default_factory=dict)  # input, ts, rolling
    signals: list[dict[str, Any]] = field(default_factory=list)
    signals_total: int = 0
    rejected: int = 0  # inputs the task or model refused (the service dead-letters them)
    rejections: dict[str, int] = field(default_factory=dict)  # ... by dead-letter reason

    TIMINGS = ("retrain_s", "events_per_s")

    def to_dict(self, decisions: bool = True) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "decisions"}
        if decisions:
            out["decisions"] = self.decisions
        return out


def replay(
    history: Sequence[Event | Label | Command],
    config: Config,
    policies: Sequence[NamedPolicy],
    *,
    progress: Progress | None = None,
    initial: Mapping[str, Learner | KeyState] | None = None,
    spec: ModelSpec | None = None,
    learners: list[dict[str, Learner]] | None = None,
    partitions: Sequence[int] | None = None,
    initial_partitions: Mapping[str, int] | None = None,
    predictions: list[list[tuple[Event, Outcome]]] | None = None,
) -> list[PolicyReport]:
    """Run every policy over ``history``; one report per policy, in the order given.

    ``initial`` holds the states of restored snapshots to start from instead of fresh
    learners, by key (a :class:`KeyState`, or a learner alone, see
    :func:`restored_learner`), on the partitions ``initial_partitions`` names (default 0):
    each policy continues its own copy (see :func:`continued`), so policies never share
    state. A retrain the snapshot had in flight is applied at the input index the
    restarted service applies it at, under the snapshot's own policy (another policy drops
    it). Keys not in it start fresh with ``spec`` (default: the
    config's ``[model]``). ``partitions`` is the partition of each history item (a Kafka
    history's; default 0): a command for every key means the keys of its partition, the
    restored ones included. When ``learners`` is given, one dict per policy is appended to
    it: that policy's learners of the keys that had input, as the history left them; when
    ``predictions`` is given, one list per policy: every prediction request and the
    outcome the policy would have served (what the service publishes)."""
    if spec is None:
        if not config.model:
            raise ConfigError("model: the [model] section is missing; see examples/config.toml")
        spec = ModelSpec.from_dict(config.model, where="model")
    learner_config = LearnerConfig.from_dict(config.learner)
    service = config.service
    initial = dict(initial or {})
    where = dict(initial_partitions or {})
    reports = []
    for named in policies:

        def fresh(key: str, named: NamedPolicy = named) -> Learner:
            return Learner(
                key,
                spec,
                config=learner_config,
                policy=named.policy,
                retrain=named.retrain,
                max_pending=service.label_max_pending,
                max_age_s=service.label_max_age_s or None,
            )

        # With a key budget, new keys come from the codec's prototype (cheaper to make: keys
        # come and go) and evicted ones are encoded by it. Without one, keys stay for the
        # whole replay and nothing is snapshotted, so they are built by the factory: a
        # learner that was ever unpickled learns ~11 % slower (load_tests/pickled_speed.py).
        store, make = None, fresh
        if service.max_keys:
            codec = KeyCodec(fresh)
            store, make = _evicted_keys(service, codec), codec.fresh
        processor = Processor(
            make,
            InlineRunner(service.retrain_apply_after),
            max_unseen_keys=service.label_max_unseen_keys,
            max_keys=service.max_keys,
            store=store,
        )
        for key, base in initial.items():
            state = base if isinstance(base, KeyState) else KeyState(base)
            learner = continued(state.learner, named)
            pending = state.pending if learner.policy.in_flight is not None else None
            processor.adopt(key, learner, where.get(key, 0), pending=copy.deepcopy(pending))
        made: dict[str, Learner] = {}
        served: list[tuple[Event, Outcome]] | None = None if predictions is None else []
        try:
            with learning_thresholds():  # as the service's loop collects garbage
                reports.append(
                    _replay_one(history, partitions, named, processor, made, progress, served)
                )
            if learners is not None:
                for key in processor.evicted & made.keys():  # the caller wants them all
                    made[key] = store.load(key).learner
                learners.append(made)
        finally:
            if store is not None:
                store.tier.close()
        if predictions is not None:
            predictions.append(served)
    return reports


def _evicted_keys(service: Any, codec: KeyCodec | None = None) -> EvictedKeys:
    """Where a replay under a key budget (``service.max_keys``) puts evicted keys: the
    same cache as the service's (``service.evicted_cache_mb``), then a local spill file
    instead of the checkpoint topic (the states never leave this process, so they carry
    no snapshot header); ``codec`` encodes them for both (default: standard pickles)."""
    return EvictedKeys(
        SpillFile(codec=codec),
        None,
        cache_bytes=int(service.evicted_cache_mb * 1024 * 1024),
        codec=codec,
    )


class _Evicted:
    """What a report keeps of an evicted key: its metric's figures, not its learner."""

    __slots__ = ("evaluator", "retrains")

    def __init__(self, learner: Learner) -> None:
        self.evaluator = _Figures(learner.evaluator)
        self.retrains = learner.retrains


class _Figures:
    __slots__ = ("n", "primary", "_values")

    def __init__(self, evaluator: Any) -> None:
        self.n = evaluator.n
        self.primary = evaluator.primary
        self._values = (evaluator.primary_value(False), evaluator.primary_value(True))

    def primary_value(self, rolling: bool = False) -> float:
        return self._values[rolling]


def restored_learner(state: object) -> Learner:
    """The learner of a restored snapshot's state (a :class:`KeyState`, or the dict of
    older snapshots).

    A retrain the snapshot had in flight is run and applied at once, where the restarted
    service would apply it a few inputs later: the replay's processor is handed the learner
    alone, and without the result its policy would wait for it forever. ``paused`` is not
    replayed (a backtest learns every input)."""
    state = KeyState.of(state)
    learner = state.learner
    if state.pending:
        job, _due = state.pending
        learner.apply(job.run())
    return learner


def continued(base: Learner, named: NamedPolicy) -> Learner:
    """A copy of ``base`` (a restored learner) that goes on under ``named``.

    Under the snapshot's own policy the copy keeps the policy's state (warm-up, cooldown,
    budget, schedules): the replay continues exactly as the service would have. Another
    policy takes over at the snapshot's position: its warm-up counts the labels already
    learned, its schedules start there, and no cooldown or budget carries over; a retrain
    the old policy had decided and not started is dropped."""
    learner = copy.deepcopy(base)
    if learner.policy.config != named.policy:
        learner.abandon(f"the replay continues under policy {named.name!r}")
        policy = TriggerPolicy(named.policy, learner.key)
        policy.labels = learner.policy.labels
        policy._reschedule(learner.index, learner._ts)  # schedules count from the snapshot
        learner.policy = policy
    if learner.retrain_config != named.retrain:
        learner.retrain_config = named.retrain
        if learner.window.maxlen != named.retrain.window:
            learner.window = learner.window.resized(named.retrain.window)
    return learner


def rebuild(
    history: Sequence[Event | Label],
    config: Config,
    spec: ModelSpec,
    *,
    progress: Progress | None = None,
    partitions: Sequence[int] | None = None,
) -> tuple[PolicyReport, dict[str, Learner]]:
    """Train ``spec`` from scratch over ``history`` (a new lineage: a model iteration) with
    the config's ``[policy]`` and ``[retrain]``, the ones the service runs and that a
    published snapshot carries. Returns the report and the final learner of every key.

    A retrain still in flight when the history ends is abandoned: its result could never
    be applied, and a snapshot waiting for it would block the policy after a restore."""
    named = NamedPolicy(
        f"rebuild {spec.lineage}",
        PolicyConfig.from_dict(config.policy),
        RetrainConfig.from_dict(config.retrain),
    )
    out: list[dict[str, Learner]] = []
    [report] = replay(
        history, config, [named], progress=progress, spec=spec, learners=out, partitions=partitions
    )
    for learner in out[0].values():
        learner.abandon("the rebuild's history ended before this retrain's result")
    return report, out[0]


def load_model_spec(path: str | Path) -> ModelSpec:
    """The ``[model]`` table of a TOML file (a model file, or a whole config) as a spec.

    Errors name the file and the key: a typo must never rebuild a model nobody asked for."""
    path = Path(path)
    data = read_toml(path, "model file")
    for name in data:
        if name not in SECTIONS:
            raise ConfigError(
                f"{path}: {name}: unknown section; a model file has a [model] table "
                f"(a whole config may have: {', '.join(SECTIONS)})"
            )
    if "model" not in data:
        raise ConfigError(f"{path}: model: the [model] table is missing")
    return ModelSpec.from_dict(data["model"], where=f"{path.name}: model")


def _replay_one(
    history: Sequence[Event | Label | Command],
    partitions: Sequence[int] | None,
    named: NamedPolicy,
    processor: Processor,
    learners: dict[str, Learner],
    progress: Progress | None,
    served: list[tuple[Event, Outcome]] | None = None,
) -> PolicyReport:
    """Drive ``processor`` over the history and keep what the report shows; ``learners``
    gets the learner of every key that had input, in the order of their first input (the
    report weighs keys in that order)."""
    log: list[dict[str, Any]] = []
    promoted, retrain_s = 0, 0.0
    total = len(history)
    timeline = _Timeline(history, learners)
    start = time.perf_counter()
    rejected = 0
    rejections: dict[str, int] = {}
    effects = processor.effects
    event, label, command = processor.event, processor.label, processor.command
    parts = repeat(0) if partitions is None else partitions
    adopted = set(processor.learners)  # restored keys: reported from their first input on
    # strict=False: without partitions, parts is an endless repeat(0)
    for done, (item, partition) in enumerate(zip(history, parts, strict=False), 1):
        kind = type(item)
        try:
            if kind is Event:
                out = event(item, partition)
                if served is not None and item.y is None:
                    served.append((item, out))
            elif kind is Label:
                label(item, partition)
            else:
                command(item, partition)
        except DecodeError as exc:
            # What the service dead-letters (unseen_key, bad_label, model_rejected): skipped.
            rejected += 1
            rejections[exc.reason] = rejections.get(exc.reason, 0) + 1
        if adopted and kind is not Command and item.key in adopted:
            adopted.discard(item.key)
            if item.key in processor.learners:  # else its effects say where it is
                learners[item.key] = processor.learners[item.key]
        if effects:
            for effect in effects:
                what = type(effect)
                if what is KeyOpened or what is KeyReloaded:
                    # A key counts from its own input (a command or a budget moves others)
                    if effect.key in learners or (kind is not Command and effect.key == item.key):
                        learners[effect.key] = effect.learner
                elif what is KeyEvicted:
                    if effect.key in learners:
                        learners[effect.key] = _Evicted(effect.learner)
                elif what is Drift:
                    log.extend(_decision(d, done) for d in effect.decisions)
                    promoted += sum(d.action == "promote" for d in effect.decisions)  # the race
                    if effect.signals:
                        timeline.record(effect.signals, effect.key, done)
                elif what is RetrainApplied:
                    retrain_s += effect.result.duration_s
                    promoted += effect.decision.action == "promote"
                    log.append(_decision(effect.decision, done))
                elif what is RetrainFailed and effect.decision is not None:
                    log.append(_decision(effect.decision, done))
            effects.clear()
        if kind is Command:
            continue
        if done >= timeline.due:
            timeline.sample(done)
        if progress is not None and (done % 5000 == 0 or done == total):
            progress(named.name, done, total, done / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    timeline.sample(total)  # the last point, even when the last input was a lone label
    evaluators = [lr.evaluator for lr in learners.values()]
    return PolicyReport(
        policy=named.name,
        metric_name=evaluators[0].primary if evaluators else "",
        metric=_weighted(evaluators, rolling=False),
        rolling=_weighted(evaluators, rolling=True),
        retrains=sum(lr.retrains for lr in learners.values()),
        promoted=promoted,
        retrain_s=retrain_s,
        inputs=total,
        events_per_s=total / elapsed if elapsed > 0 else math.nan,
        decisions=log,
        series={"input": timeline.inputs, "ts": timeline.ts, "rolling": timeline.rolling},
        signals=timeline.signals,
        signals_total=timeline.signals_total,
        rejected=rejected,
        rejections=rejections,
    )


def _weighted(evaluators: list, rolling: bool) -> float:
    pairs = [(ev.n, ev.primary_value(rolling)) for ev in evaluators]
    pairs = [(n, v) for n, v in pairs if n and not math.isnan(v)]
    n = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / n if n else math.nan


_UNSEEN = (-1, 0, 0.0)


class _Timeline:
    """What a report draws over time: the rolling metric weighted over keys as
    :func:`_weighted` weighs it (so the last point is the report's ``rolling``), sampled
    every ``stride`` inputs, and the drift signals.

    The replay loop pays one integer comparison per input. A sample revisits only the keys
    seen since the previous one (an evaluator that scored nothing new is skipped), and keeps
    the weighted sum up to date (summed afresh once per as many updates as there are keys),
    so sampling costs O(history), never O(keys x points)."""

    __slots__ = (
        "_history",
        "_learners",
        "_stride",
        "_last",
        "_seen",
        "_n",
        "_sum",
        "_updates",
        "due",
        "inputs",
        "ts",
        "rolling",
        "signals",
        "signals_total",
    )

    def __init__(self, history: Sequence[Event | Label], learners: dict[str, Learner]) -> None:
        self._history = history
        self._learners = learners
        self._stride = max(1, -(-len(history) // MAX_POINTS))  # ceil: <= MAX_POINTS samples
        self._last = 0  # inputs covered by the previous sample
        # key -> (labelled events, its weight, weight x rolling); weight 0 while NaN
        self._seen: dict[str, tuple[int, int, float]] = {}
        self._n = 0  # sum of the weights, over keys with a value
        self._sum = 0.0  # sum of weight x value
        self._updates = 0  # to _sum since it was last summed afresh
        self.due = self._stride
        self.inputs: list[int] = []
        self.ts: list[float | None] = []
        self.rolling: list[float] = []
        self.signals: list[dict[str, Any]] = []
        self.signals_total = 0

    def sample(self, done: int) -> None:
        """The weighted rolling metric after ``done`` inputs (a no-op if already taken)."""
        if done <= self._last:
            return
        learners = self._learners
        if len(learners) <= done - self._last:
            keys: Iterable[str] = learners
        else:  # insertion-ordered, so the float sums come out the same in every process
            keys = dict.fromkeys(item.key for item in self._history[self._last : done])
        seen = self._seen
        weight, total, updates = self._n, self._sum, self._updates
        for key in keys:
            learner = learners.get(key)
            if learner is None:
                continue  # a command's key, or a key whose only inputs were refused
            evaluator = learner.evaluator
            n = evaluator.n
            old = seen.get(key, _UNSEEN)
            if old[0] == n:
                continue  # nothing scored since: the same value
            value = evaluator.primary_value(True)
            new = (n, n, n * value) if n and value == value else (n, 0, 0.0)  # NaN != NaN
            seen[key] = new
            weight += n - old[1] if new[1] else -old[1]
            total += new[2] - old[2]
            updates += 1
        if updates > 4 * len(seen) + 64:  # amortized O(1): rounding errors do not pile up
            weight = sum(w for _, w, _ in seen.values())
            total = math.fsum(wv for _, _, wv in seen.values())
            updates = 0
        self._n, self._sum, self._updates = weight, total, updates
        self.inputs.append(done)
        self.ts.append(self._history[done - 1].ts)
        self.rolling.append(self._sum / self._n if self._n else math.nan)
        self._last = done
        self.due = (done // self._stride + 1) * self._stride

    def record(self, signals: Iterable[DriftSignal], key: str, done: int) -> None:
        for s in signals:
            self.signals_total += 1
            if len(self.signals) < MAX_SIGNALS:
                self.signals.append(
                    {
                        "input": done,
                        "key": key,
                        "index": s.index,
                        "kind": s.kind,
                        "detector": s.detector,
                        "level": s.level,
                        "direction": s.direction,
                        "feature": s.feature,
                    }
                )


def _decision(d: Decision, done: int) -> dict[str, Any]:
    return {
        "key": d.key,
        "input": done,
        "index": d.index,
        "ts": d.ts,
        "trigger": d.trigger,
        "action": d.action,
        "code": d.code,
        "kind": d.kind,
        "reason": d.reason,
    }


def markdown_table(reports: Sequence[PolicyReport]) -> str:
    """The comparison, one row per policy, as a Markdown table (readable in a terminal)."""
    name = reports[0].metric_name if reports else "metric"
    head = (
        f"| policy | {name} | {name} (last window) | retrains | promoted "
        "| retrain time (s) | events/s |"
    )
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        rows.append(
            f"| {r.policy} | {r.metric:.4f} | {r.rolling:.4f} | {r.retrains} | {r.promoted} "
            f"| {r.retrain_s:.3f} | {r.events_per_s:,.0f} |"
        )
    return "\n".join(rows)
