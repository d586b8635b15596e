"""``stream-learner kafka up|down|status``: the project's own local broker."""

from __future__ import annotations

import argparse

from stream_learner.kafka.local import LocalBroker


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "kafka",
        help="run the local single-node Apache Kafka (no Docker needed)",
        description="Run a local single-node Apache Kafka (KRaft) on 127.0.0.1 from Maven Central "
        "jars, cached under $STREAM_LEARNER_HOME (default ~/.cache/stream-learner). "
        "The port is 39092 unless STREAM_LEARNER_KAFKA_PORT says otherwise.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    up = actions.add_parser("up", help="start the broker (no-op when it already runs)")
    up.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for it to answer")
    up.set_defaults(func=_up)
    down = actions.add_parser("down", help="stop the broker")
    down.add_argument("--purge", action="store_true", help="also delete its data (all topics)")
    down.set_defaults(func=_down)
    status = actions.add_parser("status", help="say whether the broker runs and answers")
    status.set_defaults(func=_status)


def _up(args: argparse.Namespace) -> int:
    status, started = LocalBroker().up(timeout=args.timeout)
    verb = "started" if started else "already up"
    print(f"kafka {verb}: bootstrap {status.bootstrap} (pid {status.pid}, log {status.log})")
    return 0


def _down(args: argparse.Namespace) -> int:
    broker = LocalBroker()
    stopped = broker.down(purge=args.purge)
    print(f"kafka stopped (was pid-file {broker.pid_file})" if stopped else "kafka was not running")
    if args.purge:
        print(f"data purged: {broker.dir}")
    return 0


def _status(args: argparse.Namespace) -> int:
    status = LocalBroker().status()
    print(f"kafka {status.describe()}")
    return 0 if status.running and status.answering else 3
