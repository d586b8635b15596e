"""``stream-learner checkpoints list|show|export|rollback``: the checkpoint topic for operators.

Reading is done with the same :class:`~stream_learner.kafka.checkpoints.CheckpointStore`
the service uses, so what this command calls valid is exactly what a restart would
restore. A rollback is not applied here: it is a ``rollback`` command on the control
topic, keyed by the model key, applied by the instance that owns the key (it serves the
old model as a new version, and the decision log says so).
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from stream_learner.cli.service_cmd import signing_key
from stream_learner.config import CheckpointSettings, Config, KafkaSettings, load_config
from stream_learner.core.checkpoints import Catalog, VersionInfo
from stream_learner.core.commands import Command
from stream_learner.core.keystate import KeyState
from stream_learner.core.snapshot import load_signing_key
from stream_learner.errors import BrokerError, ConfigError, SnapshotError, StreamLearnerError
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.client import BOOTSTRAP_ENV, check_reachable, resolve_bootstrap
from stream_learner.kafka.sink import KafkaSink
from stream_learner.service.runtime import Topics

UNVERIFIED = "unverified"  # complete and checksummed, but no key to check the signature
REASON_WIDTH = 40


def register(sub: argparse._SubParsersAction) -> None:
    top = sub.add_parser(
        "checkpoints",
        help="list, inspect, export or roll back model snapshots",
        description="Read the compacted checkpoints topic: the snapshots of every model key, "
        "their headers and signature status; export a verified model; ask the running "
        "service to serve an earlier version again.",
    )
    actions = top.add_subparsers(dest="action", metavar="ACTION", parser_class=type(top))
    actions.required = True

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help, description=description)
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--config", help="TOML config file (topic prefix, signing key)")
        where.add_argument("--prefix", help="topic prefix (default: the built-in one)")
        parser.add_argument("--bootstrap", help=f"Kafka bootstrap (default: ${BOOTSTRAP_ENV})")
        return parser

    listing = add(
        "list",
        "the snapshots on the topic, per key",
        "One line per model version: lineage, creation time, trigger, decision, metrics, "
        "input offsets, size and signature status; a snapshot staged by 'replay --rebuild "
        "--publish' (offered to the service, not restored on restart) is marked 'staged'.",
    )
    listing.add_argument("--key", help="only this model key")
    listing.add_argument("--json", action="store_true", help="machine-readable JSON")
    listing.set_defaults(func=_list)

    show = add("show", "one snapshot's header", "Print one snapshot's header in full (JSON).")
    show.add_argument("--key", required=True, help="model key")
    show.add_argument("--version", type=int, help="model version (default: the newest)")
    show.set_defaults(func=_show)

    export = add(
        "export",
        "write a verified model to a pickle file",
        "Verify a snapshot's signature, then write its model (pickle) for offline use.",
    )
    export.add_argument("--key", required=True, help="model key")
    export.add_argument("--version", type=int, required=True, help="model version")
    export.add_argument("--out", required=True, help="output file (pickle)")
    export.set_defaults(func=_export)

    rollback = add(
        "rollback",
        "ask the running service to serve an earlier version",
        "Check that the version is on the topic and valid, then produce a 'rollback' "
        "command to the control topic; the instance owning the key serves that model again "
        "as a new version.",
    )
    rollback.add_argument("--key", required=True, help="model key")
    rollback.add_argument("--version", type=int, required=True, help="model version")
    rollback.add_argument("--reason", default="", help="why (kept in the decision log)")
    rollback.set_defaults(func=_rollback)


# --------------------------------------------------------------------------- wiring


class Context:
    """Bootstrap, topics, client settings and signing key: from ``--config`` (and
    ``--bootstrap``), or ``--prefix`` and the environment. Shared with ``replay``, which
    reads and publishes checkpoints with the very same settings as the service."""

    def __init__(
        self,
        *,
        config_path: str | None = None,
        prefix: str | None = None,
        bootstrap: str | None = None,
    ) -> None:
        extra: dict[str, Any] = {}
        bootstrap = bootstrap or os.environ.get(BOOTSTRAP_ENV)
        self.config: Config | None = None
        if config_path:
            self.config = config = load_config(config_path)
            prefix, extra = config.kafka.topic_prefix, dict(config.kafka.client)
            bootstrap = bootstrap or config.kafka.bootstrap
            # A configured key reference must resolve; without one, the environment's key.
            cp = config.checkpoints
            self.key = signing_key(cp) if cp.signing_key else load_signing_key()
        else:
            prefix = prefix if prefix is not None else KafkaSettings().topic_prefix
            self.key = load_signing_key()
        self.bootstrap = resolve_bootstrap(bootstrap)
        self.extra = extra
        self.topics = Topics.from_prefix(prefix)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        return cls(config_path=args.config, prefix=args.prefix, bootstrap=args.bootstrap)

    def store(self) -> CheckpointStore:
        """A store on the checkpoints topic, signing and retiring versions as the service
        does (``[checkpoints]`` of the config); close it after use."""
        cp = self.config.checkpoints if self.config is not None else CheckpointSettings()
        return CheckpointStore(
            self.bootstrap,
            self.topics.checkpoints,
            signing_key=self.key,
            keep_versions=cp.keep_versions,
            chunk_bytes=cp.chunk_bytes,
            extra=self.extra,
        )

    def catalog(self) -> Catalog:
        check_reachable(self.bootstrap, timeout=10, extra=self.extra)
        topic = self.topics.checkpoints
        if not _topic_exists(self.bootstrap, topic, self.extra):
            raise StreamLearnerError(
                f"checkpoints topic {topic} does not exist (wrong --prefix/--config, "
                "or run 'topics apply')"
            )
        store = CheckpointStore(self.bootstrap, topic, signing_key=self.key, extra=self.extra)
        try:
            return store.read()
        finally:
            store.close()

    def load(
        self, catalog: Catalog, key: str, version: int | None, arg: str = "--version"
    ) -> tuple[VersionInfo, KeyState]:
        """A snapshot's header and its key's state, verified before unpickling: an unknown
        key or version, a refused snapshot or no key to verify with is a
        :class:`ConfigError`."""
        if self.key is None:
            raise ConfigError(
                f"{arg}: no signing key, so the snapshot cannot be verified before "
                "unpickling; set STREAM_LEARNER_SNAPSHOT_KEY or give --config"
            )
        info = valid_version(catalog, key, version, arg)
        loaded = catalog.load(key, info.model_version)
        if loaded is None:
            reason = catalog.rejections[-1].reason if catalog.rejections else "unknown"
            raise ConfigError(
                f"{arg}: version {info.model_version} of key {key!r} is not restorable ({reason})"
            )
        try:
            return info, KeyState.of(loaded[1])
        except SnapshotError as exc:
            raise ConfigError(
                f"{arg}: version {info.model_version} of key {key!r} is not a model's "
                f"snapshot ({exc})"
            ) from None

    def send(self, cmd: Command) -> str:
        """Produce a command to the control topic, keyed by its model key; the topic."""
        topic = self.topics.control
        sink = KafkaSink(self.bootstrap, self.extra)
        sink.produce(topic, cmd.to_json(), key=cmd.key)
        if sink.close(timeout=15) > 0:
            raise BrokerError(f"the {cmd.command} command was not delivered to {topic} within 15 s")
        return topic


def _topic_exists(bootstrap: str, topic: str, extra: dict) -> bool:
    from confluent_kafka.admin import AdminClient

    from stream_learner.kafka.client import client_config

    meta = AdminClient(client_config(bootstrap, extra)).list_topics(timeout=10)
    return topic in meta.topics


def versions_of(catalog: Catalog, key: str, arg: str = "--key") -> list[VersionInfo]:
    """Every version of ``key``; an unknown key names the keys on the topic. ``arg`` is
    the option the key came from, for the message."""
    versions = catalog.versions(key)
    if not versions:
        known = ", ".join(map(repr, catalog.keys())) or "none"
        raise ConfigError(f"{arg}: no snapshots of key {key!r} (keys on the topic: {known})")
    return versions


def resolve_version(
    catalog: Catalog, key: str, version: int | None, arg: str = "--version"
) -> VersionInfo:
    """``version`` of ``key`` (default: the newest, the one a restart restores). A version
    only in the key's staging slot is found too, as the service finds it on a rollback."""
    versions = versions_of(catalog, key, "--key" if arg == "--version" else arg)
    if version is None:
        return max(versions, key=lambda v: v.recency)
    staged = catalog.staged(key)
    for info in [*versions, *([staged] if staged else [])]:
        if info.model_version == version:
            return info
    have = ", ".join(str(v.model_version) for v in versions)
    raise ConfigError(f"{arg}: key {key!r} has no version {version} (versions: {have})")


def valid_version(
    catalog: Catalog, key: str, version: int | None, arg: str = "--version"
) -> VersionInfo:
    """As :func:`resolve_version`, and restorable (complete, signature verified)."""
    info = resolve_version(catalog, key, version, arg)
    if not info.valid:
        raise ConfigError(
            f"{arg}: version {info.model_version} of key {key!r} is not restorable ({info.reason})"
        )
    return info


# --------------------------------------------------------------------------- rendering


def signature_status(info: VersionInfo, verified: bool) -> str:
    """``valid``, the refusal reason, or ``unverified`` (complete, but no key to check)."""
    if not info.valid:
        return info.reason or "invalid"
    return "valid" if verified else UNVERIFIED


def _iso(created: float | str | None) -> str:
    if isinstance(created, int | float):
        return datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")
    return created or ""


def _offsets(offsets: dict[str, dict[str, int]]) -> str:
    """``events[0]=1200 labels[0]=1180``: the input positions the snapshot reflects."""
    return " ".join(
        f"{topic.rsplit('.', 1)[-1]}[{p}]={o}"
        for topic, parts in sorted(offsets.items())
        for p, o in sorted(parts.items(), key=lambda item: int(item[0]))
    )


def _metrics(metrics: dict[str, float | None]) -> str:
    return " ".join(f"{k}={'-' if v is None else f'{v:.4g}'}" for k, v in metrics.items())


def _truncate(text: str | None, width: int = REASON_WIDTH) -> str:
    text = (text or "").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _row(info: VersionInfo, verified: bool) -> dict[str, Any]:
    return {
        "key": info.key,
        "version": info.model_version,
        "lineage": info.lineage,
        "created": _iso(info.created),
        "trigger": info.trigger,
        "decision": info.decision,
        "metrics": info.metrics,
        "offsets": info.offsets,
        "size": info.header.get("payload_size"),
        "signature": signature_status(info, verified),
        "slot": info.slot,
        "staged": info.staged,
    }


COLUMNS = ("key", "version", "lineage", "created", "trigger", "decision", "metrics", "offsets")
COLUMNS += ("size", "signature")


def _table(rows: list[dict[str, Any]]) -> str:
    cells = [
        [
            str(r["key"]),
            f"{r['version']} (staged)" if r["staged"] else str(r["version"]),
            str(r["lineage"]),
            r["created"],
            r["trigger"],
            _truncate(r["decision"]),
            _metrics(r["metrics"]),
            _offsets(r["offsets"]),
            "" if r["size"] is None else str(r["size"]),
            r["signature"],
        ]
        for r in rows
    ]
    widths = [max(len(c[i]) for c in [list(COLUMNS), *cells]) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(cs, widths, strict=True))
        for cs in [list(COLUMNS), *cells]
    ]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- actions


def _list(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    catalog = ctx.catalog()
    keys = [args.key] if args.key else catalog.keys()
    verified = ctx.key is not None
    rows = [
        _row(info, verified)
        for key in keys
        for info in [*versions_of(catalog, key), catalog.staged(key)]
        if info is not None
    ]
    if args.json:
        print(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    elif rows:
        print(_table(rows))
        if any(r["staged"] for r in rows):
            print(
                "(staged: published by 'replay --rebuild --publish' beside the service's "
                "snapshots; served once the service applies its rollback command, never "
                "restored by a restart on its own)"
            )
    else:
        print(f"no snapshots on {ctx.topics.checkpoints}")
    if not verified:
        print("(no signing key: signatures not verified)")
    return 0


def _show(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    info = resolve_version(ctx.catalog(), args.key, args.version)
    body = {**info.header, "signature_status": signature_status(info, ctx.key is not None)}
    if info.staged:
        body["staged"] = True
    print(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    return 0


def _export(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    if ctx.key is None:
        raise ConfigError(
            "checkpoints export: no signing key, so the snapshot cannot be verified before "
            "unpickling; set STREAM_LEARNER_SNAPSHOT_KEY or give --config"
        )
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ConfigError(f"--out: directory {str(out.parent)!r} does not exist")
    info, state = ctx.load(ctx.catalog(), args.key, args.version)
    model = state.learner.model
    try:
        data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
        out.write_bytes(data)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {str(out)!r}: {exc.strerror}") from None
    print(
        f"wrote {out} ({len(data)} bytes): {type(model).__name__} of key {args.key!r}, "
        f"version {info.model_version}, lineage {info.lineage}, signature verified"
    )
    return 0


def _rollback(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    info = valid_version(ctx.catalog(), args.key, args.version)
    cmd = Command(
        "rollback",
        key=args.key,
        version=args.version,
        reason=args.reason,
        requested_by="cli",
        ts=time.time(),
    )
    topic = ctx.send(cmd)
    status = signature_status(info, ctx.key is not None)
    print(
        f"rollback requested for key {args.key!r} to version {args.version} "
        f"(created {_iso(info.created)}, signature {status}) on {topic}"
    )
    return 0
