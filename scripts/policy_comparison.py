"""Which retraining policy would have served best? A backtest on a drifting history.

Writes a synthetic SEA history (an abrupt concept drift half-way, every event labelled) to a
temporary JSONL file, replays it with ``stream-learner replay``'s engine under several
policies with the example config's model, and prints the comparison as a Markdown table,
followed by the speed of a bare River loop (predict, then learn) on the same events, the
floor under the replay's overhead.

    .venv/bin/python scripts/policy_comparison.py
    .venv/bin/python scripts/policy_comparison.py --events 60000 --change-at 20000

The metrics and counts are deterministic; times and events/s are measurements.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from stream_learner.config import load_config  # noqa: E402
from stream_learner.core.events import Event  # noqa: E402
from stream_learner.core.models import ModelSpec, build_model  # noqa: E402
from stream_learner.core.retrain import RetrainConfig  # noqa: E402
from stream_learner.replay import markdown_table, read_history, replay, resolve_policy  # noqa: E402
from stream_learner.synth import demo_messages  # noqa: E402

POLICIES = ("never", "interval:5000", "interval:1000", "performance")


def bare_river(history: list, spec: ModelSpec) -> float:
    """Events/s of predict-then-learn with the same pipeline and nothing else."""
    model = build_model(spec)
    events = [e for e in history if isinstance(e, Event) and e.y is not None]
    start = time.perf_counter()
    for e in events:
        model.predict_proba_one(e.x)
        model.learn_one(e.x, e.y)
    return len(events) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--change-at", type=int, default=15_000)
    parser.add_argument("--generator", default="sea")
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"))
    parser.add_argument("--policy", action="append", help=f"default: {', '.join(POLICIES)}")
    args = parser.parse_args()

    config = load_config(args.config)
    retrain = RetrainConfig.from_dict(config.retrain)
    policies = [resolve_policy(p, retrain) for p in args.policy or POLICIES]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "history.jsonl"
        messages = demo_messages(
            args.events,
            generator=args.generator,
            change_at=args.change_at,
            unlabelled_share=0.0,
            t0=1_700_000_000.0,
        )
        path.write_bytes(b"".join(orjson.dumps(m.value) + b"\n" for m in messages))
        history = read_history(path)
    reports = replay(history, config, policies)
    print(
        f"{args.events:,} {args.generator.upper()} events, abrupt drift at "
        f"{args.change_at:,}; model and retrain settings from {Path(args.config).name}.\n"
    )
    print(markdown_table(reports))
    rate = bare_river(history, ModelSpec.from_dict(config.model, where="model"))
    print(f"\nBare River loop (predict_proba_one + learn_one), same events: {rate:,.0f} events/s")


if __name__ == "__main__":
    main()
