"""``stream-learner replay``: backtest trigger policies on a recorded history.

The team's experiment before choosing a policy: the same history, the config's model, one
row per policy. Pure (no broker); the work is :func:`stream_learner.replay.replay`.
"""

from __future__ import annotations

import argparse
import math
import sys

import orjson

from stream_learner.config import load_config
from stream_learner.core.retrain import RetrainConfig
from stream_learner.replay import (
    BUILTIN_POLICIES,
    markdown_table,
    read_history,
    replay,
    resolve_policy,
)


def register(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "replay",
        help="backtest retraining policies on a recorded history",
        description="Replay a history (JSONL events and labels, or CSV with columns id, key, "
        "ts, y and one per feature) through the config's model once per policy, as the "
        "service would have, and compare: prequential metric, retrains, promotions, time.",
    )
    cmd.add_argument("--config", required=True, help="TOML config file (model, learner, ...)")
    cmd.add_argument("--input", required=True, help="history: FILE.jsonl or FILE.csv")
    cmd.add_argument(
        "--policy",
        action="append",
        required=True,
        help=f"{', '.join(BUILTIN_POLICIES)}, or a TOML file with [policy] (repeat to compare)",
    )
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cmd.add_argument("--decisions", action="store_true", help="include the decision log")
    cmd.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    retrain = RetrainConfig.from_dict(config.retrain)
    policies = [resolve_policy(p, retrain) for p in args.policy]  # all checked before any work
    history = read_history(args.input)
    tty = sys.stderr.isatty()
    reports = replay(history, config, policies, progress=_progress if tty else None)
    if tty:
        print(file=sys.stderr)
    if args.json:
        body = [r.to_dict(decisions=args.decisions) for r in reports]
        # NaN is not JSON: a metric with no labelled event is null.
        print(orjson.dumps(_nan_to_none(body), option=orjson.OPT_INDENT_2).decode())
        return 0
    print(markdown_table(reports))
    if args.decisions:
        for r in reports:
            print(f"\n{r.policy}:")
            for d in r.decisions:
                print(f"  {d['index']:>8} {d['key']} {d['trigger']}/{d['action']} {d['reason']}")
    return 0


def _progress(policy: str, done: int, total: int, rate: float) -> None:
    print(
        f"\rreplay {policy}: {done:,}/{total:,} inputs, {rate:,.0f} inputs/s   ",
        end="",
        file=sys.stderr,
        flush=True,
    )


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
