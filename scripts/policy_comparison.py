"""Which retraining policy would have served best? A backtest on a drifting history.

Writes a synthetic SEA history (an abrupt concept drift half-way, every event labelled) to a
temporary JSONL file, replays it with ``stream-learner replay``'s engine under several
policies with the example config's model, and prints the comparison as a Markdown table,
followed by the speed of a bare River loop (predict, score, learn) on the same events, the
floor under the replay's overhead. It also writes the report of ``stream-learner replay
--report`` (``index.html``, ``comparison.png`` and one PNG per policy) with the known change
point marked, to ``docs/policy_comparison/`` unless told otherwise.

    .venv/bin/python scripts/policy_comparison.py
    .venv/bin/python scripts/policy_comparison.py --write-readme   # and put it into README.md
    .venv/bin/python scripts/policy_comparison.py --events 60000 --change-at 20000 --report /tmp/r

``--write-readme`` replaces what is between ``<!-- policy-comparison:start -->`` and
``<!-- policy-comparison:end -->`` in README.md (the table, the chart, a summary), and nothing
else. The metrics, counts and charts are deterministic; times and events/s are measurements.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402
from readme_section import markers, write_section  # noqa: E402

from load_tests.replay_speed import bare_loop  # noqa: E402
from stream_learner.config import load_config  # noqa: E402
from stream_learner.core.events import Event  # noqa: E402
from stream_learner.core.models import ModelSpec  # noqa: E402
from stream_learner.core.retrain import RetrainConfig  # noqa: E402
from stream_learner.replay import markdown_table, read_history, replay, resolve_policy  # noqa: E402
from stream_learner.report import write_report  # noqa: E402
from stream_learner.synth import demo_messages  # noqa: E402

POLICIES = ("never", "interval:5000", "interval:1000", "performance")
REPORT_DIR = ROOT / "docs" / "policy_comparison"
START, END = markers("policy-comparison")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--change-at", type=int, default=15_000)
    parser.add_argument("--generator", default="sea")
    parser.add_argument("--config", default=str(ROOT / "examples" / "config.toml"))
    parser.add_argument("--policy", action="append", help=f"default: {', '.join(POLICIES)}")
    parser.add_argument(
        "--report",
        default=str(REPORT_DIR),
        help="directory for the report (default: docs/policy_comparison, which the README shows)",
    )
    parser.add_argument("--write-readme", action="store_true")
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
    setting = (
        f"{args.events:,} {args.generator.upper()} events, abrupt drift at "
        f"{args.change_at:,}; model and retrain settings from {Path(args.config).name}."
    )
    print(setting + "\n")
    print(markdown_table(reports))
    labelled = [e for e in history if isinstance(e, Event) and e.y is not None]
    spec = ModelSpec.from_dict(config.model, where="model")
    rate = len(labelled) / bare_loop(spec, labelled)
    print(f"\nBare River loop (predict, score, learn), same events: {rate:,.0f} events/s")
    page = write_report(
        reports,
        args.report,
        title="Retraining policies on a drifting history",
        context=f"{setting} Written by scripts/policy_comparison.py.",
        changes=[args.change_at],
    )
    print(f"report: {page}", file=sys.stderr)
    if args.write_readme:
        readme = ROOT / "README.md"
        text = readme_text(reports, rate, Path(args.report))
        if not write_section(readme, "policy-comparison", text):
            sys.exit(f"{readme}: no {START} ... {END} markers; nothing written")
        print(f"wrote the comparison into {readme}", file=sys.stderr)


def readme_text(reports: list, rate: float, report_dir: Path) -> str:
    """The table, the chart and what they say, for the README."""
    try:
        where = report_dir.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        where = report_dir.as_posix()
    by_name = {r.policy: r for r in reports}
    lines = [markdown_table(reports), ""]
    name = reports[0].metric_name
    lines.append(
        f"![Rolling {name} of each policy over the history: drift detections (x) and retrain "
        f"results (promoted: dot, kept: circle) on each line, the known change dotted]"
        f"({where}/comparison.png)"
    )
    lines.append("")
    summary = []
    never, drift = by_name.get("never"), by_name.get("performance")
    intervals = [r for r in reports if r.policy.startswith("interval:")]
    if never and drift:
        summary.append(
            f"The drift-triggered `performance` policy reaches {drift.metric:.4f} {name} with "
            f"{_retrains(drift.retrains)}, against {never.metric:.4f} for `never`"
        )
        if intervals:
            best = max(intervals, key=lambda r: r.metric)
            summary[-1] += (
                f"; the best fixed interval, `{best.policy}`, reaches {best.metric:.4f} with "
                f"{_retrains(best.retrains)}"
            )
        summary[-1] += "."
    if never:
        summary.append(
            f"A bare River loop ran the same events at {rate:,.0f}/s; the replay ran `never` "
            f"at {never.events_per_s:,.0f}/s ({never.events_per_s / rate:.2f}x)."
        )
    summary.append(
        f"The chart is `{where}/comparison.png`; the script also writes `{where}/index.html` "
        "(not committed: it holds timings), the whole report as one self-contained page, with "
        "a chart per policy marking every drift signal, retrain start and promote/keep. "
        "`stream-learner replay --report DIR` writes the same for any history."
    )
    lines.append(textwrap.fill(" ".join(summary), width=92, break_on_hyphens=False))
    return "\n".join(lines) + "\n"


def _retrains(n: int) -> str:
    return f"{n:,} retrain" + ("" if n == 1 else "s")


if __name__ == "__main__":
    main()
