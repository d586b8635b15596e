"""The ``stream-learner`` command: the one place that wires config to adapters.

Each area registers its own sub-commands (``kafka``, ``topics``, ...) from a
module of this package; this module only builds the parser and turns every
expected failure into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stream_learner import __version__
from stream_learner.errors import ConfigError, StreamLearnerError

# Exit codes: 0 ok, 1 runtime failure (broker down, ...), 2 bad usage/config, 130 interrupted.
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we want exactly one clear line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from stream_learner.cli import (
        checkpoints_cmd,
        demo_cmd,
        kafka_cmd,
        replay_cmd,
        service_cmd,
        topics_cmd,
    )

    parser = _Parser(
        prog="stream-learner",
        description="Continual learning on Kafka event streams.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (kafka_cmd, topics_cmd, service_cmd, demo_cmd, checkpoints_cmd, replay_cmd):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"stream-learner: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StreamLearnerError as exc:
        print(f"stream-learner: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("stream-learner: interrupted", file=sys.stderr)
        return 130


def run() -> None:
    sys.exit(main())
