"""The service configuration: one TOML file, every key overridable from the environment.

Layout (see ``examples/config.toml`` for every key, commented)::

    [kafka]            where the broker is, topic prefix, consumer group
    [kafka.client]     any librdkafka setting, passed through (SASL, SSL, timeouts)
    [service]          batching, HTTP port, metric cardinality, worker process
    [model]            the River pipeline (a ModelSpec: its hash is the lineage)
    [learner]          windows and detectors of each key's learner
    [policy]           the trigger policy
    [retrain]          stateful/stateless retrains and the champion/challenger gate

Environment overrides: ``STREAM_LEARNER__<SECTION>__<KEY>=<value>``, e.g.
``STREAM_LEARNER__SERVICE__BATCH_SIZE=1000``. The value is read as a TOML value when
it parses as one (numbers, booleans, arrays) and as a string otherwise. Under
``kafka.client`` an underscore in the variable name stands for a dot
(``STREAM_LEARNER__KAFKA__CLIENT__SASL_PASSWORD`` sets ``sasl.password``).

Secrets never live in the file: a string value ``"env:NAME"`` is replaced by the
environment variable ``NAME`` and ``"file:/path"`` by the file's content (stripped).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stream_learner.core.policy import config_from_dict
from stream_learner.errors import ConfigError

ENV_PREFIX = "STREAM_LEARNER__"
SECTIONS = ("kafka", "service", "model", "learner", "policy", "retrain", "checkpoints")


@dataclass(frozen=True)
class KafkaSettings:
    """Where Kafka is and which names the service uses on it."""

    bootstrap: str | None = None
    topic_prefix: str = "stream-learner."
    group_id: str = "stream-learner"
    client: Mapping[str, Any] = field(default_factory=dict)
    # Static group membership (see kafka/identity.py): "auto" claims an id persisted under
    # instance_dir, "" turns it off, anything else is the id itself.
    instance_id: str = "auto"
    instance_dir: str = ""

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def __repr__(self) -> str:  # never print secrets by accident
        return (
            f"KafkaSettings(bootstrap={self.bootstrap!r}, topic_prefix={self.topic_prefix!r}, "
            f"group_id={self.group_id!r}, instance_id={self.instance_id!r}, "
            f"client=<{len(self.client)} settings>)"
        )


@dataclass(frozen=True)
class ServiceSettings:
    """How the service loop runs; the defaults suit one 2-core machine."""

    batch_size: int = 500
    poll_timeout_s: float = 0.02  # the longest a poll waits to fill a batch: latency at low rates
    http_host: str = "127.0.0.1"
    http_port: int = 9108
    max_key_labels: int = 50
    retrain_in_worker: bool = True
    retrain_apply_after: int = 200
    exactly_once: bool = False
    max_event_bytes: int = 1_048_576
    max_event_features: int = 10_000
    max_feature_name_chars: int = 256
    broker_wait_s: float = 300.0
    outage_grace_s: float = 20.0
    label_max_pending: int = 100_000
    label_max_age_s: float = 3600.0
    label_max_unseen_keys: int = 1000
    max_keys: int = 0  # resident keys; past it the least recently used go, or a newcomer passes
    evicted_cache_mb: float = 256.0  # encoded states of evicted keys kept in memory


@dataclass(frozen=True)
class CheckpointSettings:
    """Model snapshots on the compacted checkpoint topic.

    ``signing_key`` is a reference (``env:NAME`` / ``file:PATH``), never the key itself;
    without one, ``STREAM_LEARNER_SNAPSHOT_KEY`` / ``STREAM_LEARNER_SNAPSHOT_KEY_FILE``
    are read. With no key at all the service refuses to start unless ``insecure_dev``.
    """

    enabled: bool = True
    every_events: int = 100_000
    every_seconds: float = 60.0
    after_retrain: bool = True
    keep_versions: int = 3
    chunk_bytes: int = 1_048_576
    signing_key: str = ""
    insecure_dev: bool = False

    def __repr__(self) -> str:
        return (
            f"CheckpointSettings(enabled={self.enabled}, every_events={self.every_events}, "
            f"every_seconds={self.every_seconds}, keep_versions={self.keep_versions}, "
            f"signing_key={'<set>' if self.signing_key else '<unset>'})"
        )


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(data: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``STREAM_LEARNER__SECTION__KEY`` variables onto the parsed file."""
    for name, raw in sorted(env.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if len(parts) < 2:
            raise ConfigError(f"{name}: expected STREAM_LEARNER__<SECTION>__<KEY>")
        if parts[0] not in SECTIONS:
            raise ConfigError(f"{name}: unknown section {parts[0]!r}; choose one of {SECTIONS}")
        if parts[:2] == ["kafka", "client"] and len(parts) == 3:
            parts[2] = parts[2].replace("_", ".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{name}: {'.'.join(parts[:-1])} is not a table")
        node[parts[-1]] = _env_value(raw)
    return data


def resolve_secret(value: Any, where: str, env: Mapping[str, str]) -> Any:
    """Replace ``env:NAME`` / ``file:PATH`` references; errors never show the secret."""
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        if name not in env:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return env[name]
    if value.startswith("file:"):
        path = Path(value[5:])
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret file {path}: {exc.strerror}") from None
    return value


@dataclass(frozen=True)
class Config:
    """The whole, validated configuration. Sections of the core stay plain mappings
    here and are validated by the core's own ``from_dict`` (see ``core_sections``)."""

    kafka: KafkaSettings = field(default_factory=KafkaSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    model: Mapping[str, Any] = field(default_factory=dict)
    learner: Mapping[str, Any] = field(default_factory=dict)
    policy: Mapping[str, Any] = field(default_factory=dict)
    retrain: Mapping[str, Any] = field(default_factory=dict)
    checkpoints: CheckpointSettings = field(default_factory=CheckpointSettings)
    source: str = "<defaults>"


def parse_config(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source: str = "<dict>"
) -> Config:
    env = os.environ if env is None else env
    merged = apply_env_overrides(_deep_copy(data), env)
    for name in merged:
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown section; choose one of {', '.join(SECTIONS)}")
        if not isinstance(merged[name], dict):
            raise ConfigError(f"{name}: expected a table")
    kafka_raw = dict(merged.get("kafka", {}))
    client = {
        str(k): resolve_secret(v, f"kafka.client.{k}", env)
        for k, v in dict(kafka_raw.pop("client", {})).items()
    }
    kafka = config_from_dict(KafkaSettings, kafka_raw, "kafka")
    kafka = replace(kafka, client=client)
    service = config_from_dict(ServiceSettings, merged.get("service", {}), "service")
    return Config(
        kafka=kafka,
        service=service,
        model=merged.get("model", {}),
        learner=merged.get("learner", {}),
        policy=merged.get("policy", {}),
        retrain=merged.get("retrain", {}),
        checkpoints=config_from_dict(
            CheckpointSettings, merged.get("checkpoints", {}), "checkpoints"
        ),
        source=source,
    )


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A TOML file's tables; a missing, unreadable or invalid file is one ``ConfigError``
    line that names it as ``what`` (config file, policy file, model file)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML config file; any problem is one ``ConfigError`` line."""
    return parse_config(read_toml(path), env=env, source=str(path))


def _deep_copy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in data.items()}
