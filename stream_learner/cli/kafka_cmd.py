"""``stream-learner kafka up|down|status``: the project's own local broker or cluster."""

from __future__ import annotations

import argparse

from stream_learner.errors import ConfigError
from stream_learner.kafka.local import LocalBroker, LocalCluster


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "kafka",
        help="run the local Apache Kafka, one node or a cluster (no Docker needed)",
        description="Run a local Apache Kafka (KRaft) on 127.0.0.1 from Maven Central jars, "
        "cached under $STREAM_LEARNER_HOME (default ~/.cache/stream-learner). One node listens "
        "on 39092 unless STREAM_LEARNER_KAFKA_PORT says otherwise; with --nodes N (2-9) N "
        "brokers, each also a controller, listen on every second port from 100 above that "
        "(39192, 39194, 39196), or from --port.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--nodes", type=int, default=1, help="1 (default): the single broker; 2-9: a cluster"
    )
    common.add_argument(
        "--port", type=int, help="the (first) node's port (default: see 'kafka --help')"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    up = actions.add_parser(
        "up", parents=[common], help="start the broker(s) (no-op when they already run)"
    )
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for answers")
    up.set_defaults(func=_up)
    down = actions.add_parser("down", parents=[common], help="stop the broker(s)")
    down.add_argument("--purge", action="store_true", help="also delete their data (all topics)")
    down.set_defaults(func=_down)
    status = actions.add_parser(
        "status", parents=[common], help="say whether each broker runs and answers"
    )
    status.set_defaults(func=_status)


def _target(args: argparse.Namespace) -> LocalBroker | LocalCluster:
    if args.port is not None and not 1024 <= args.port <= 65534:
        raise ConfigError(f"--port {args.port}: must be between 1024 and 65534")
    if args.nodes == 1:
        return LocalBroker(port=args.port)
    if not 2 <= args.nodes <= 9:
        raise ConfigError(f"--nodes {args.nodes}: must be 1 (one broker) or 2 to 9 (a cluster)")
    return LocalCluster(args.nodes, base_port=args.port)


def _up(args: argparse.Namespace) -> int:
    target = _target(args)
    if isinstance(target, LocalBroker):
        status, started = target.up(timeout=args.timeout)
        verb = "started" if started else "already up"
        print(f"kafka {verb}: bootstrap {status.bootstrap} (pid {status.pid}, log {status.log})")
        return 0
    statuses, started = target.up(timeout=args.timeout)
    verb = "started" if started else "already up"
    print(f"kafka cluster of {target.nodes} nodes {verb}: bootstrap {target.bootstrap}")
    for node, status in zip(target.members, statuses, strict=True):
        print(f"  node {node.node_id}: {status.describe()}")
    print(f"use it with --bootstrap {target.bootstrap} or STREAM_LEARNER_BOOTSTRAP")
    return 0


def _down(args: argparse.Namespace) -> int:
    target = _target(args)
    if isinstance(target, LocalBroker):
        stopped = target.down(purge=args.purge)
        print(
            f"kafka stopped (was pid-file {target.pid_file})"
            if stopped
            else "kafka was not running"
        )
    else:
        count = target.down(purge=args.purge)
        print(
            f"kafka cluster stopped: {count} of {target.nodes} nodes were running"
            if count
            else "kafka cluster was not running"
        )
    if args.purge:
        print(f"data purged: {target.dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    """Exit 0 only when every node runs and answers, 3 otherwise."""
    target = _target(args)
    if isinstance(target, LocalBroker):
        status = target.status()
        print(f"kafka {status.describe()}")
        return 0 if status.running and status.answering else 3
    statuses = target.status()
    healthy = sum(s.running and s.answering for s in statuses)
    print(f"kafka cluster {target.bootstrap}: {healthy} of {target.nodes} nodes up")
    for node, status in zip(target.members, statuses, strict=True):
        print(f"  node {node.node_id}: {status.describe()}")
    return 0 if healthy == target.nodes else 3
