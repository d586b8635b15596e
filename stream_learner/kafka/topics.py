"""Topics as code: the declared topics file, and reconciling a broker with it.

``topics/topics.toml`` lists every topic the service uses. :func:`load_topics` reads
and checks it (stdlib ``tomllib``; every mistake is a ``ConfigError`` naming its key
path). :func:`plan` compares it with a broker and returns the :class:`Change` list that
:func:`apply` executes: create what is missing, set declared configs that differ, add
partitions that are missing. Nothing is ever deleted or shrunk: a topic with *more*
partitions than declared, or another replication factor, becomes a ``warning`` change
that :func:`apply` skips. Because :func:`apply` waits until the broker shows its
changes, planning again right after returns no changes.

Only the configs named in the file are managed (plus ``min.insync.replicas`` when the
file sets ``min_insync_replicas``); anything else set on a topic is left alone. The
replication factor and minimum in-sync replicas are capped at what the cluster can hold:
the declared 3 / 2 become 1 / 1 on a single broker, so one file serves a laptop and a
cluster. Topics marked ``event_time`` carry event times as record timestamps; a finite
``retention.ms`` on them is a ``warning`` (old timestamps would be deleted on arrival).
The broker validates the declared configs (``validate_only`` requests) while planning,
so ``--dry-run`` already catches a misspelt config name or a bad value.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import stream_learner
from stream_learner.errors import BrokerError, ConfigError

DEFAULT_PREFIX = "stream-learner."
SCHEMA_DIR = "schemas"
SCHEMA_SUFFIX = ".schema.json"

_LEGAL_NAME = re.compile(r"^[A-Za-z0-9._-]*$")
_MAX_TOPIC_NAME = 249  # Kafka's limit
_CONFIG_NAME = re.compile(r"^[a-z][a-z0-9]*(\.[a-z0-9]+)*$")
_TOP_KEYS = ("prefix", "replication_factor", "min_insync_replicas", "topics")
_TOPIC_KEYS = ("message", "partitions", "copartitioned_with", "event_time", "config")
MIN_ISR = "min.insync.replicas"
RETENTION = "retention.ms"
TIMESTAMP_TYPE = "message.timestamp.type"
_BROKER_DEFAULT_RETENTION_MS = 7 * 24 * 3600 * 1000  # log.retention.hours=168
# Broker error codes that mean "the declaration is wrong", not "the broker failed".
_DECLARATION_ERRORS = {
    "INVALID_CONFIG",
    "POLICY_VIOLATION",
    "INVALID_PARTITIONS",
    "INVALID_REPLICATION_FACTOR",
    "TOPIC_EXCEPTION",
}


def default_topics_file() -> Path:
    """The repository's ``topics/topics.toml``, else ``./topics/topics.toml``."""
    beside_package = Path(stream_learner.__file__).resolve().parents[1] / "topics" / "topics.toml"
    if beside_package.is_file():
        return beside_package
    return Path.cwd() / "topics" / "topics.toml"


@dataclass(frozen=True)
class TopicSpec:
    """One declared topic; ``name`` is logical (``events``), without the prefix."""

    name: str
    message: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    copartitioned_with: str | None = None
    event_time: bool = False  # record timestamps are event times (see retention_warning)


@dataclass(frozen=True)
class TopicsSpec:
    """The whole topics file: a prefix, optional replication settings, the topics."""

    prefix: str
    topics: tuple[TopicSpec, ...]
    replication_factor: int | None = None
    source: Path | None = None
    min_insync_replicas: int | None = None

    def replication_for(self, brokers: int) -> int | None:
        """The replication factor for a new topic on ``brokers`` brokers (None: the
        broker's default): the declared one, capped at the brokers there are."""
        if self.replication_factor is None:
            return None
        return max(1, min(self.replication_factor, brokers))

    def effective_config(self, topic: TopicSpec, replication: int | None) -> dict[str, str]:
        """The configs to hold on the broker: the declared ones, plus the minimum in-sync
        replicas capped at the topic's replication (a topic of 1 replica with a minimum of
        2 would refuse every ``acks=all`` write)."""
        config = dict(topic.config)
        if self.min_insync_replicas is not None and MIN_ISR not in config:
            cap = replication or 1
            config[MIN_ISR] = str(max(1, min(self.min_insync_replicas, cap)))
        return config

    def physical(self, name: str) -> str:
        """The broker-side name of a declared topic: ``prefix + name``."""
        return self.prefix + self.topic(name).name

    def topic(self, name: str) -> TopicSpec:
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def schema_path(self, name: str) -> Path:
        """The JSON Schema file of a topic's message kind."""
        base = self.source.parent if self.source else Path.cwd()
        return base / SCHEMA_DIR / f"{self.topic(name).message}{SCHEMA_SUFFIX}"

    def with_prefix(self, prefix: str) -> TopicsSpec:
        _check_prefix(prefix, "--prefix")
        spec = replace(self, prefix=prefix)
        for topic in spec.topics:
            _check_topic_name(spec.prefix + topic.name, f"topics.{topic.name}")
        return spec


# --------------------------------------------------------------------------- loading


def load_topics(path: str | Path, *, prefix: str | None = None) -> TopicsSpec:
    """Read and check a topics file; ``prefix`` overrides the file's own."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"topics file not found: {path} (pass --file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"topics file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        spec = _parse(raw, path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return spec if prefix is None else spec.with_prefix(prefix)


def _parse(raw: Mapping[str, Any], path: Path) -> TopicsSpec:
    _check_keys(raw, _TOP_KEYS, "")
    prefix = raw.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str):
        raise ConfigError("prefix: must be a string")
    _check_prefix(prefix, "prefix")
    replication = raw.get("replication_factor")
    if replication is not None and not _positive_int(replication):
        raise ConfigError(f"replication_factor: must be a positive integer, got {replication!r}")
    min_isr = raw.get("min_insync_replicas")
    if min_isr is not None and not _positive_int(min_isr):
        raise ConfigError(f"min_insync_replicas: must be a positive integer, got {min_isr!r}")
    if min_isr is not None and replication is not None and min_isr > replication:
        raise ConfigError(
            f"min_insync_replicas: {min_isr} is more than replication_factor {replication}: "
            "no write with acks=all could ever succeed"
        )
    tables = raw.get("topics")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError("topics: must be a table with at least one [topics.<name>] entry")

    schemas = path.parent / SCHEMA_DIR
    known = sorted(p.name[: -len(SCHEMA_SUFFIX)] for p in schemas.glob(f"*{SCHEMA_SUFFIX}"))
    topics = tuple(_parse_topic(name, body, schemas, known) for name, body in tables.items())
    by_name = {topic.name: topic for topic in topics}
    for topic in topics:
        _check_topic_name(prefix + topic.name, f"topics.{topic.name}")
        _check_copartitioning(topic, by_name)
    return TopicsSpec(
        prefix=prefix,
        topics=topics,
        replication_factor=replication,
        source=path,
        min_insync_replicas=min_isr,
    )


def _parse_topic(name: str, body: Any, schemas: Path, known: list[str]) -> TopicSpec:
    where = f"topics.{name}"
    if not name or not _LEGAL_NAME.match(name):
        raise ConfigError(f"{where}: topic names may use only letters, digits, '.', '_', '-'")
    if not isinstance(body, dict):
        raise ConfigError(f"{where}: must be a table ([{where}])")
    _check_keys(body, _TOPIC_KEYS, where)
    for required in ("message", "partitions"):
        if required not in body:
            raise ConfigError(f"{where}.{required}: missing")

    message = body["message"]
    if not isinstance(message, str) or not (schemas / f"{message}{SCHEMA_SUFFIX}").is_file():
        raise ConfigError(
            f"{where}.message: no schema {schemas / f'{message}{SCHEMA_SUFFIX}'} "
            f"(known kinds: {', '.join(known) or 'none'})"
        )
    partitions = body["partitions"]
    if not _positive_int(partitions):
        raise ConfigError(f"{where}.partitions: must be a positive integer, got {partitions!r}")
    copartitioned = body.get("copartitioned_with")
    if copartitioned is not None and not isinstance(copartitioned, str):
        raise ConfigError(f"{where}.copartitioned_with: must be the name of another topic")

    event_time = body.get("event_time", False)
    if not isinstance(event_time, bool):
        raise ConfigError(f"{where}.event_time: must be true or false, got {event_time!r}")
    config_raw = body.get("config", {})
    if not isinstance(config_raw, dict):
        raise ConfigError(f"{where}.config: must be a table ([{where}.config])")
    config = {
        key: _config_value(value, f"{where}.config.{key}") for key, value in config_raw.items()
    }
    for key in config:
        if not _CONFIG_NAME.match(key):
            raise ConfigError(f"{where}.config.{key}: not a Kafka config name (e.g. retention.ms)")
    return TopicSpec(name, message, partitions, config, copartitioned, event_time)


def _check_copartitioning(topic: TopicSpec, topics: Mapping[str, TopicSpec]) -> None:
    other = topic.copartitioned_with
    if other is None:
        return
    where = f"topics.{topic.name}"
    if other == topic.name or other not in topics:
        choices = ", ".join(n for n in topics if n != topic.name)
        raise ConfigError(
            f"{where}.copartitioned_with: {other!r} is not another declared topic "
            f"(choose from: {choices})"
        )
    theirs = topics[other].partitions
    if theirs != topic.partitions:
        raise ConfigError(
            f"{where}.partitions: must equal topics.{other}.partitions ({theirs}), since "
            f"{topic.name} is copartitioned_with {other}: a key must land on the same-numbered "
            f"partition in both"
        )


def _check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            path = f"{where}.{key}" if where else key
            raise ConfigError(f"{path}: unknown key (allowed: {', '.join(allowed)})")


def _check_prefix(prefix: str, where: str) -> None:
    if not _LEGAL_NAME.match(prefix):
        raise ConfigError(
            f"{where}: {prefix!r} may use only letters, digits, '.', '_', '-' (Kafka topic names)"
        )


def _check_topic_name(physical: str, where: str) -> None:
    if len(physical) > _MAX_TOPIC_NAME:
        raise ConfigError(f"{where}: topic name {physical!r} is longer than {_MAX_TOPIC_NAME}")
    if physical in (".", ".."):
        raise ConfigError(f"{where}: {physical!r} is not a legal topic name")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _config_value(value: Any, where: str) -> str:
    """Topic configs are strings on the wire; TOML numbers and booleans are accepted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ConfigError(f"{where}: must be a string, number or boolean, got {type(value).__name__}")


def _same_value(declared: str, live: str | None) -> bool:
    """Equal as Kafka means it: ``0.1`` == ``0.10``, ``compact,delete`` == ``delete,compact``."""
    if live is None:
        return False
    if declared == live:
        return True
    try:
        return float(declared) == float(live)
    except ValueError:
        pass

    def parts(v: str) -> list[str]:
        return sorted(p.strip() for p in v.split(","))

    return "," in declared and parts(declared) == parts(live)


# --------------------------------------------------------------------------- broker state


@dataclass(frozen=True)
class TopicState:
    """A declared topic as the broker has it; ``live_config`` holds the declared keys."""

    spec: TopicSpec
    topic: str
    exists: bool
    partitions: int | None = None
    replication_factor: int | None = None
    live_config: dict[str, str | None] = field(default_factory=dict)
    # The replication a new topic gets (declared, capped at the brokers), and the live
    # timestamp type and retention.ms (declared or broker default) the retention check needs.
    wanted_replication: int | None = None
    timestamp_type: str | None = None
    retention_ms: str | None = None

    @property
    def config_drift(self) -> dict[str, str | None]:
        """Declared keys whose live value differs, mapped to the live value."""
        return {
            key: self.live_config.get(key)
            for key, value in self.spec.config.items()
            if not _same_value(value, self.live_config.get(key))
        }

    @property
    def up_to_date(self) -> bool:
        return self.exists and self.partitions == self.spec.partitions and not self.config_drift


def describe(spec: TopicsSpec, admin: Any, *, timeout: float = 15.0) -> list[TopicState]:
    """Every declared topic with its partitions and live values of the managed configs.

    A state's ``spec`` holds the *effective* configs: the declared ones plus the minimum
    in-sync replicas capped at this cluster (its brokers, or an existing topic's replicas).
    """
    metadata = _call("list topics", admin.list_topics, timeout=timeout)
    wanted_replication = spec.replication_for(len(metadata.brokers))
    present = {
        topic.name: metadata.topics[spec.prefix + topic.name]
        for topic in spec.topics
        if spec.prefix + topic.name in metadata.topics
    }
    live = _live_configs(admin, [spec.prefix + name for name in present], timeout)
    states = []
    for topic in spec.topics:
        physical = spec.prefix + topic.name
        meta = present.get(topic.name)
        if meta is None:
            effective = replace(topic, config=spec.effective_config(topic, wanted_replication or 1))
            states.append(
                TopicState(
                    effective,
                    physical,
                    exists=False,
                    wanted_replication=wanted_replication,
                    timestamp_type=effective.config.get(TIMESTAMP_TYPE, "CreateTime"),
                    retention_ms=effective.config.get(RETENTION),
                )
            )
            continue
        partitions = meta.partitions
        replicas = {len(p.replicas) for p in partitions.values()}
        replication = max(replicas) if replicas else None
        effective = replace(topic, config=spec.effective_config(topic, replication))
        configs = live.get(physical, {})
        states.append(
            TopicState(
                effective,
                physical,
                exists=True,
                partitions=len(partitions),
                replication_factor=replication,
                live_config={key: configs.get(key) for key in effective.config},
                wanted_replication=wanted_replication,
                timestamp_type=configs.get(TIMESTAMP_TYPE),
                retention_ms=configs.get(RETENTION),
            )
        )
    return states


def retention_warning(state: TopicState) -> str | None:
    """Why an event-time topic's retention may delete history before it is read, or None.

    Time-based retention deletes a segment once its *newest record timestamp* is older
    than ``retention.ms``. Producers stamp input records with their event time (the
    service merges by it and ``replay --start TIME`` looks it up in the broker's time
    index), so a backfill of last month's events under a 7-day retention is deletable the
    moment its segment rolls, whether or not the service has read it.
    """
    if not state.spec.event_time or state.timestamp_type == "LogAppendTime":
        return None
    # The value the topic has once applied: the declared one, else the live or default one.
    declared = state.spec.config.get(RETENTION)
    raw = declared if declared is not None else state.retention_ms
    retention = _BROKER_DEFAULT_RETENTION_MS if raw is None else int(float(raw))
    if retention < 0:
        return None
    origin = "declared" if declared is not None else "the broker's" if raw is None else "live"
    return (
        f"retention.ms={retention} ({origin}, {_span(retention)}) deletes records "
        f"by their event-time timestamps: a backfill older than that can be deleted before "
        f"the service reads it; set retention.ms = -1 and bound the topic by retention.bytes"
    )


def _span(ms: int) -> str:
    return f"{ms / 86_400_000:g} days" if ms >= 86_400_000 else f"{ms / 3_600_000:g} hours"


def _live_configs(admin: Any, topics: list[str], timeout: float) -> dict[str, dict[str, str]]:
    from confluent_kafka.admin import ConfigResource, ResourceType

    if not topics:
        return {}
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in topics]
    futures = _call("describe configs", admin.describe_configs, resources, request_timeout=timeout)
    result = {}
    for resource, future in futures.items():
        entries = _wait(future, f"describe configs of {resource.name}", timeout)
        result[resource.name] = {name: entry.value for name, entry in entries.items()}
    return result


# --------------------------------------------------------------------------- plan / apply

CREATE, ALTER, ADD_PARTITIONS, WARNING = "create", "alter", "add_partitions", "warning"


@dataclass(frozen=True)
class Change:
    """One step towards the declaration, or a ``warning`` about what will not be done.

    ``config`` holds the values to set (all declared ones for ``create``, the differing
    ones for ``alter``) and ``previous`` the live values they replace; ``partitions`` is
    the total wanted (``create``, ``add_partitions``) and ``current_partitions`` the
    broker's count.
    """

    kind: str
    topic: str
    partitions: int | None = None
    current_partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)
    previous: dict[str, str | None] = field(default_factory=dict)
    replication_factor: int | None = None
    note: str = ""

    def describe(self) -> str:
        """What the change does, without a verb: ``events: 2 -> 4 partitions``."""
        if self.kind == CREATE:
            configs = "".join(f", {k}={v}" for k, v in sorted(self.config.items()))
            plural = "s" * (self.partitions != 1)
            rf = self.replication_factor
            replicas = "" if rf is None else f", replication {rf}"
            return f"{self.topic}: {self.partitions} partition{plural}{configs}{replicas}"
        if self.kind == ALTER:
            diffs = ", ".join(
                f"{k} {self.previous.get(k) or '(unset)'} -> {v}"
                for k, v in sorted(self.config.items())
            )
            return f"{self.topic}: {diffs}"
        if self.kind == ADD_PARTITIONS:
            return (
                f"{self.topic}: {self.current_partitions} -> {self.partitions} partitions "
                f"(keys now hash to the new count: existing keys may move)"
            )
        return f"{self.topic}: {self.note}"


def plan(
    spec: TopicsSpec, admin: Any, *, timeout: float = 15.0, validate: bool = True
) -> list[Change]:
    """The changes that bring the broker to the declaration, plus warnings.

    With ``validate`` the broker checks each create and alter without performing it;
    a rejected declaration raises ``ConfigError`` naming the topic's key path.
    """
    changes: list[Change] = []
    for state in describe(spec, admin, timeout=timeout):
        declared = state.spec
        if not state.exists:
            changes.append(
                Change(
                    CREATE,
                    state.topic,
                    partitions=declared.partitions,
                    config=dict(declared.config),
                    replication_factor=state.wanted_replication,
                )
            )
            if (warning := retention_warning(state)) is not None:
                changes.append(Change(WARNING, state.topic, note=warning))
            continue
        current = state.partitions or 0
        if current < declared.partitions:
            changes.append(
                Change(
                    ADD_PARTITIONS,
                    state.topic,
                    partitions=declared.partitions,
                    current_partitions=current,
                )
            )
        elif current > declared.partitions:
            changes.append(
                Change(
                    WARNING,
                    state.topic,
                    partitions=declared.partitions,
                    current_partitions=current,
                    note=f"{current} partitions on the broker, {declared.partitions} "
                    f"declared; left as is (Kafka cannot remove partitions)",
                )
            )
        drift = state.config_drift
        if drift:
            changes.append(
                Change(
                    ALTER,
                    state.topic,
                    config={key: declared.config[key] for key in drift},
                    previous=drift,
                )
            )
        wanted_rf = state.wanted_replication
        if wanted_rf is not None and state.replication_factor not in (None, wanted_rf):
            changes.append(
                Change(
                    WARNING,
                    state.topic,
                    note=f"replication factor {state.replication_factor} on the broker, "
                    f"{wanted_rf} wanted; left as is (needs a partition reassignment)",
                )
            )
        if (warning := retention_warning(state)) is not None:
            changes.append(Change(WARNING, state.topic, note=warning))
    if validate:
        _execute(admin, changes, timeout=timeout, validate_only=True, logical=_logical(spec))
    return changes


def apply(admin: Any, changes: list[Change], *, timeout: float = 30.0) -> list[Change]:
    """Execute ``changes`` (warnings are skipped) and wait until the broker shows them.

    Returns the changes performed. Raises ``BrokerError`` when a request fails or the
    broker does not show the result within ``timeout`` seconds.
    """
    done = _execute(admin, changes, timeout=timeout, validate_only=False, logical={})
    _await_visible(admin, done, timeout)
    return done


def _execute(
    admin: Any,
    changes: list[Change],
    *,
    timeout: float,
    validate_only: bool,
    logical: Mapping[str, str],
) -> list[Change]:
    from confluent_kafka.admin import (
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        NewPartitions,
        NewTopic,
        ResourceType,
    )

    by_kind: dict[str, list[Change]] = {CREATE: [], ADD_PARTITIONS: [], ALTER: []}
    for change in changes:
        if change.kind in by_kind:
            by_kind[change.kind].append(change)
    opts = {"request_timeout": timeout, "validate_only": validate_only}

    if by_kind[CREATE]:
        new = [
            NewTopic(
                c.topic,
                num_partitions=c.partitions,
                replication_factor=c.replication_factor or -1,  # -1: the broker's default
                config=dict(c.config),
            )
            for c in by_kind[CREATE]
        ]
        futures = _call("create topics", admin.create_topics, new, **opts)
        _wait_all(futures, "create", timeout, logical)
    if by_kind[ADD_PARTITIONS]:
        parts = [NewPartitions(c.topic, c.partitions) for c in by_kind[ADD_PARTITIONS]]
        futures = _call("add partitions", admin.create_partitions, parts, **opts)
        _wait_all(futures, "add partitions to", timeout, logical)
    if by_kind[ALTER]:
        resources = [
            ConfigResource(
                ResourceType.TOPIC,
                c.topic,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                    for k, v in sorted(c.config.items())
                ],
            )
            for c in by_kind[ALTER]
        ]
        futures = _call("alter configs", admin.incremental_alter_configs, resources, **opts)
        _wait_all({r.name: f for r, f in futures.items()}, "alter configs of", timeout, logical)
    return [c for kind in (CREATE, ADD_PARTITIONS, ALTER) for c in by_kind[kind]]


def _await_visible(admin: Any, done: list[Change], timeout: float) -> None:
    """Wait until metadata and configs show ``done``, so a new plan finds nothing to do."""
    if not done:
        return
    deadline = time.monotonic() + timeout
    want_partitions = {c.topic: c.partitions for c in done if c.partitions is not None}
    want_config: dict[str, dict[str, str]] = {}
    for c in done:
        if c.config:
            want_config.setdefault(c.topic, {}).update(c.config)
    while True:
        left = max(deadline - time.monotonic(), 0.5)
        metadata = _call("list topics", admin.list_topics, timeout=left)
        lagging = [
            t
            for t, n in want_partitions.items()
            if t not in metadata.topics or len(metadata.topics[t].partitions) < n
        ]
        if not lagging:
            try:
                live = _live_configs(admin, list(want_config), left)
            except BrokerError as exc:
                # In a cluster the broker asked may not know a topic created a moment ago
                # on another one yet: that is lag, not failure.
                if exc.code != "UNKNOWN_TOPIC_OR_PART":
                    raise
                live = {}
            lagging = [
                t
                for t, cfg in want_config.items()
                if not all(_same_value(v, live.get(t, {}).get(k)) for k, v in cfg.items())
            ]
        if not lagging:
            return
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"the broker did not show the changes to {', '.join(lagging)} within {timeout:g}s"
            )
        time.sleep(0.2)


def _logical(spec: TopicsSpec) -> dict[str, str]:
    return {spec.prefix + t.name: t.name for t in spec.topics}


def _wait_all(
    futures: Mapping[str, Future], action: str, timeout: float, logical: Mapping[str, str]
) -> None:
    for topic, future in futures.items():
        try:
            _wait(future, f"{action} {topic}", timeout)
        except BrokerError as exc:
            if exc.code in _DECLARATION_ERRORS and topic in logical:
                raise ConfigError(
                    f"topics.{logical[topic]}: the broker rejects it: {exc.description}"
                ) from None
            raise


def _wait(future: Future, what: str, timeout: float) -> Any:
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        raise BrokerError(f"Kafka did not answer '{what}' within {timeout:g}s") from None
    except Exception as exc:  # KafkaException carries librdkafka's KafkaError
        code, description = _error_parts(exc)
        raise BrokerError(
            f"Kafka refused to {what}: {description}", code=code, description=description
        ) from None


def _call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        code, description = _error_parts(exc)
        raise BrokerError(
            f"Kafka request '{what}' failed: {description}", code=code, description=description
        ) from None


def _error_parts(exc: BaseException) -> tuple[str | None, str]:
    err = exc.args[0] if exc.args else None
    if hasattr(err, "name") and hasattr(err, "str"):
        return err.name(), err.str()
    return None, str(exc)
