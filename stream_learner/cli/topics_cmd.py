"""``stream-learner topics apply|list``: the declared topics against a broker."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from stream_learner.kafka.client import BOOTSTRAP_ENV, check_reachable, resolve_bootstrap
from stream_learner.kafka.topics import (
    ADD_PARTITIONS,
    ALTER,
    CREATE,
    WARNING,
    Change,
    TopicsSpec,
    TopicState,
    apply,
    default_topics_file,
    describe,
    load_topics,
    plan,
)

_DONE = {CREATE: "created", ALTER: "altered", ADD_PARTITIONS: "added partitions"}
_TODO = {CREATE: "would create", ALTER: "would alter", ADD_PARTITIONS: "would add partitions"}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "topics",
        help="create and align the service's Kafka topics from topics/topics.toml",
        description="Make a broker match the declared topics file: create missing topics, set "
        "declared configs, add missing partitions. Nothing is ever deleted or shrunk.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--file", type=Path, help="topics file (default: the repository's topics/topics.toml)"
    )
    common.add_argument(
        "--prefix", help="topic name prefix, overriding the file's (e.g. a tenant or test name)"
    )
    common.add_argument(
        "--bootstrap", help=f"Kafka bootstrap servers (default: ${BOOTSTRAP_ENV}, else local)"
    )
    common.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for each broker answer"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    up = actions.add_parser("apply", parents=[common], help="create/alter topics as declared")
    up.add_argument("--dry-run", action="store_true", help="show the changes, change nothing")
    up.set_defaults(func=_apply)
    ls = actions.add_parser("list", parents=[common], help="declared topics and their live state")
    ls.set_defaults(func=_list)


def _connect(args: argparse.Namespace) -> tuple[TopicsSpec, object]:
    """Spec first (a bad file is exit 2 before any network), then a reachable broker."""
    from confluent_kafka.admin import AdminClient

    from stream_learner.kafka.client import client_config

    spec = load_topics(args.file or default_topics_file(), prefix=args.prefix)
    bootstrap = resolve_bootstrap(args.bootstrap)
    check_reachable(bootstrap, timeout=args.timeout)
    return spec, AdminClient(client_config(bootstrap))


def _apply(args: argparse.Namespace) -> int:
    spec, admin = _connect(args)
    changes = plan(spec, admin, timeout=args.timeout)
    if not args.dry_run:
        apply(admin, changes, timeout=max(args.timeout, 30.0))
    verbs = _TODO if args.dry_run else _DONE
    for change in changes:
        print(f"{verbs.get(change.kind, 'warning')}: {change.describe()}")
    print(_summary(changes, len(spec.topics), dry_run=args.dry_run))
    return 0


def _summary(changes: list[Change], declared: int, *, dry_run: bool) -> str:
    counts = Counter(change.kind for change in changes)
    warnings = counts.pop(WARNING, 0)
    tail = f" ({warnings} warning{'s' * (warnings != 1)})" if warnings else ""
    if not counts:
        return f"no changes: {declared} topics up to date{tail}"
    words = (
        {CREATE: "to create", ALTER: "to alter", ADD_PARTITIONS: "to extend"}
        if dry_run
        else {CREATE: "created", ALTER: "altered", ADD_PARTITIONS: "extended"}
    )
    parts = ", ".join(
        f"{counts[k]} {words[k]}" for k in (CREATE, ALTER, ADD_PARTITIONS) if counts[k]
    )
    return f"{'dry run, nothing changed: ' if dry_run else ''}{parts}{tail}"


def _list(args: argparse.Namespace) -> int:
    spec, admin = _connect(args)
    states = describe(spec, admin, timeout=args.timeout)
    rows = [("TOPIC", "EXISTS", "PARTITIONS", "CONFIG", "DECLARED", "LIVE", "")]
    for state in states:
        rows.extend(_rows(state))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    stale = sum(not state.up_to_date for state in states)
    if stale:
        print(f"{stale} of {len(states)} topics differ from {spec.source}: run 'topics apply'")
    else:
        print(f"all {len(states)} topics match {spec.source}")
    return 0


def _rows(state: TopicState) -> list[tuple[str, ...]]:
    """One row per declared config; the topic's own columns on the first."""
    live_partitions = "-" if state.partitions is None else str(state.partitions)
    head = (
        state.topic,
        "yes" if state.exists else "no",
        f"{live_partitions}/{state.spec.partitions}",
    )
    drift = state.config_drift
    rows = []
    for key, value in sorted(state.spec.config.items()):
        live = state.live_config.get(key)
        rows.append([key, value, "-" if live is None else live, "differs" if key in drift else ""])
    rows = rows or [["-", "", "", ""]]
    if not state.exists or state.partitions != state.spec.partitions:
        rows[0][3] = "differs"
    return [(*(head if i == 0 else ("", "", "")), *row) for i, row in enumerate(rows)]
