"""The core's acceptance suite at full size, as a Markdown report.

Runs every stream of ``tests/core/test_suite.py`` (abrupt and gradual changes at event 10,000,
and a recurring SEA stream whose first concept comes back twice) for each seed, through the
learner with the default policy and with every trigger off, for each model of the suite. In
the same run, on the same events, it runs the anchors a user can reach without us: River's
``HoeffdingAdaptiveTreeClassifier`` (the suite's ``hoeffding_adaptive_tree`` without the
policy) and ``DriftRetrainingClassifier(HoeffdingTreeClassifier(), DDM())``; the linear
pipeline's anchor is the same pipeline without retraining. Then it runs stationary streams (no
change at all) and counts what fired.

    .venv/bin/python scripts/core_report.py                  # print the report
    .venv/bin/python scripts/core_report.py --write-readme   # and put it into README.md
    .venv/bin/python scripts/core_report.py --seeds 1 --streams sine --stationary-streams ""

``--write-readme`` replaces what is between ``<!-- core-report:start -->`` and
``<!-- core-report:end -->`` in README.md, and nothing else; without both markers it changes
nothing and exits 1. Everything is deterministic: the same arguments give the same report.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import river  # noqa: E402
from readme_section import markers, write_section  # noqa: E402
from river import drift, tree  # noqa: E402

from stream_learner.core.race import SOURCES  # noqa: E402
from tests.core.test_suite import (  # noqa: E402
    AFTER,
    CHANGE,
    MODELS,
    RECURRING_SEGMENTS,
    STREAMS,
    events,
    run,
)

START, END = markers("core-report")
#: The level a model recovers to: its accuracy over these events after the change.
LEVEL = (10_000, 15_000)
ROLLING = 500  # the rolling window of the time to recover
RECOVERED = 0.98  # ... recovered at 98 % of the level
FIRST = 100  # the rolling accuracy is read from this many post-change events on
TREE, LINEAR, HAT = "hoeffding_tree", "logistic_regression", "hoeffding_adaptive_tree"


def changes_of(stream: str) -> list[int]:
    if STREAMS[stream][0] == "recurring":
        return [CHANGE * k for k in range(1, RECURRING_SEGMENTS)]
    return [CHANGE]


def length(stream: str) -> int:
    if STREAMS[stream][0] == "recurring":
        return CHANGE * (RECURRING_SEGMENTS + 1)
    return CHANGE + LEVEL[1]


def accuracy(right: bytes, start: int, end: int) -> float:
    return sum(right[start:end]) / (end - start)


def recover(right: bytes, change: int, level: float, limit: int) -> int | None:
    """Events from ``change`` until the accuracy over the post-change events among the last
    ``ROLLING`` first reaches ``RECOVERED`` x ``level`` (read from ``FIRST`` events on);
    ``None`` if not before ``limit``."""
    target = RECOVERED * level
    total = sum(right[change : change + FIRST])
    for t in range(FIRST, min(limit, len(right)) - change):
        n = min(t, ROLLING)
        if total / n >= target:
            return t
        total += right[change + t]
        if t >= ROLLING:
            total -= right[change + t - ROLLING]
    return None


def served(right: bytes, change: int, level: float, limit: int) -> int | None:
    """Events from ``change`` until the model serves at ``RECOVERED`` x ``level``: the first
    ``t`` from which the accuracy over the next ``ROLLING`` events reaches it."""
    target = RECOVERED * level * ROLLING
    total = sum(right[change : change + ROLLING])
    for t in range(0, limit - change - ROLLING):
        if total >= target:
            return t
        total += right[change + t + ROLLING] - right[change + t]
    return None


def drt_right(stream: str, seed: int) -> bytes:
    """River's DriftRetrainingClassifier(HoeffdingTree, DDM) on the same events."""
    model = drift.DriftRetrainingClassifier(tree.HoeffdingTreeClassifier(), drift.binary.DDM())
    right = bytearray()
    for event in events(stream, seed, length(stream)):
        right.append(model.predict_one(event.x) == event.y)
        model.learn_one(event.x, event.y)
    return bytes(right)


def measure(right: bytes, stream: str) -> dict:
    """Accuracy after each change, time to recover, and accuracy over the whole run."""
    out = {
        "overall": accuracy(right, 0, len(right)),
        "after": [],
        "recover": [],
        "served": [],
        "hurt": [],
        "recoverable": [],
    }
    changes = changes_of(stream)
    for k, at in enumerate(changes):
        out["after"].append(accuracy(right, at, at + AFTER))
        out["hurt"].append(accuracy(right, at - AFTER, at) - accuracy(right, at, at + AFTER))
        limit = changes[k + 1] if k + 1 < len(changes) else len(right)
        if STREAMS[stream][0] == "recurring":
            # The concept served before the previous change: recovering is serving it as
            # well as then (its accuracy over the 5,000 events before it left).
            left = changes[k - 1] if k else None
            level = accuracy(right, left - AFTER, left) if left else None
        else:
            level = accuracy(right, at + LEVEL[0], at + LEVEL[1])
            # What the change costs that the model can win back: its own later level on the
            # new concept minus its accuracy right after (the drop from before the change
            # also counts a new concept that is simply harder for this model).
            out["recoverable"].append(level - accuracy(right, at, at + AFTER))
        out["recover"].append(None if level is None else recover(right, at, level, limit))
        out["served"].append(None if level is None else served(right, at, level, limit))
    return out


def stream_rows(stream: str, seed: int, models: tuple[str, ...]) -> list[dict]:
    """Every model with and without the policy on one stream and seed, and the anchors."""
    n = length(stream)
    rows = []
    anchors: dict[str, dict] = {}
    if TREE in models:
        anchors["drt"] = measure(drt_right(stream, seed), stream)
    runs = {}
    for model in dict.fromkeys((*models, HAT) if TREE in models else models):
        runs[model] = (
            run(stream, model, seed, n=n, change=CHANGE),
            run(stream, model, seed, n=n, change=CHANGE, retrain=False),
        )
    anchors["hat"] = measure(runs[HAT][1].right, stream) if HAT in runs else None
    for model in models:
        with_run, without_run = runs[model]
        counts = with_run.learner.decision_counts
        promoted = with_run.learner.race_promotions
        rows.append(
            {
                "stream": stream,
                "kind": STREAMS[stream][0],
                "model": model,
                "seed": seed,
                "delay": with_run.delay,
                "response": with_run.response,
                "retrains": with_run.retrains,
                "promotions": with_run.promotions,
                "by_source": dict(promoted),
                "races": sum(n for (_, a), n in counts.items() if a == "race"),
                "with": measure(with_run.right, stream),
                "without": measure(without_run.right, stream),
                "hat": anchors.get("hat") if model == TREE else None,
                "drt": anchors.get("drt") if model == TREE else None,
            }
        )
    return rows


#: The codes of a candidate given up (a superseded retrain is not a candidate).
GIVEN_UP = ("candidate_cannot_lead", "candidate_behind", "champion_unchanged")


def stationary_row(stream: str, model: str, seed: int, n: int) -> dict:
    result = run(stream, model, seed, n=n, change=None)
    learner = result.learner
    counts = learner.decision_counts
    warmup = learner.policy.config.warmup
    late = [d for d in learner.decisions if d.action == "promote" and d.index > warmup]
    return {
        "stream": stream,
        "model": model,
        "seed": seed,
        "events": n,
        "retrains": result.retrains,
        "promotions": result.promotions,
        "late_promotions": len(late),
        "races": counts["performance", "race"] + counts["data_drift", "race"],
        "abandoned": sum(d.code in GIVEN_UP for d in learner.decisions),
        "unchanged": sum(d.code == "champion_unchanged" for d in learner.decisions),
        "drifts": result.drifts_before,
        "warnings": counts["performance", "warn"],
        "data_warnings": counts["data_drift", "warn"],
    }


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def overall(rows: list[dict], setting: str) -> float:
    """Mean over the seeds of the accuracy over the whole run (before the change too)."""
    return mean([r[setting]["overall"] for r in rows])


def events_text(values: list) -> str:
    """Mean time to recover over the seeds; a seed that never recovered is counted."""
    got = [v for v in values if v is not None]
    text = "—" if not got else f"{statistics.mean(got):,.0f}"
    missing = len(values) - len(got)
    return text + (f" ({missing} never)" if missing else "")


def markdown(rows: list[dict], stationary: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Generated by `scripts/core_report.py` (seeds {args.seeds}; River {river.__version__}); "
        "default learner, policy, retrain and race settings.",
        "",
        f"**Changes.** The concept changes at event {CHANGE:,} (gradual: a sigmoid 2,000 events "
        f"wide around it; *sea_recurring*: SEA 3, 2, 3, 2, 3, a change every {CHANGE:,} "
        f"events). Accuracy over the {AFTER:,} events after the change, in %, mean over the "
        "seeds. *with*: the model with the default policy and race; *without*: the same model "
        "learning online, every trigger off; *HAT*: River's `HoeffdingAdaptiveTreeClassifier`; "
        "*DRT*: River's `DriftRetrainingClassifier(HoeffdingTreeClassifier(), DDM())`, on "
        "the same events. *vs best anchor*: *with* minus the better of HAT and DRT (tree), or "
        "minus *without* (the other models). *Overall*: the difference over the whole run, "
        "before the change included. *Recover*: events from the change until the "
        f"accuracy over the last {ROLLING} post-change events first reaches "
        f"{RECOVERED:.0%} of the model's own level over events {LEVEL[0]:,}–{LEVEL[1]:,} "
        f"after the change (read from the {FIRST}th event on). *Response*: events from the "
        "change to the first performance drift or promotion.",
        "",
        f"| stream | model | response | promoted ({'/'.join(SOURCES)}) | with | without "
        "| HAT | DRT | vs best anchor | overall: with − without | recover: with | without | HAT "
        "| DRT |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r["kind"] != "recurring":
            groups.setdefault((r["stream"], r["model"]), []).append(r)
    verdicts = []
    for (stream, model), rs in groups.items():
        w = mean([r["with"]["after"][0] for r in rs])
        wo = mean([r["without"]["after"][0] for r in rs])
        hat = mean([r["hat"]["after"][0] for r in rs if r["hat"]])
        drt = mean([r["drt"]["after"][0] for r in rs if r["drt"]])
        best = max(hat, drt) if model == TREE and hat is not None and drt is not None else wo
        src = [sum(r["by_source"].get(s, 0) for r in rs) for s in SOURCES]
        lines.append(
            f"| {stream} | {model} | {events_text([r['response'] for r in rs])} "
            f"| {sum(r['promotions'] for r in rs)} ({'/'.join(map(str, src))}) "
            f"| {pct(w)} | {pct(wo)} | {pct(hat)} | {pct(drt)} | {100 * (w - best):+.2f} "
            f"| {100 * (overall(rs, 'with') - overall(rs, 'without')):+.2f} "
            f"| {events_text([r['with']['recover'][0] for r in rs])} "
            f"| {events_text([r['without']['recover'][0] for r in rs])} "
            f"| {events_text([r['hat']['recover'][0] for r in rs if r['hat']])} "
            f"| {events_text([r['drt']['recover'][0] for r in rs if r['drt']])} |"
        )
        verdicts.append((stream, model, rs, w, wo, hat, drt))
    lines += recurring_lines(rows)
    lines += target_lines(verdicts, stationary)
    lines += [
        "",
        "<details><summary>Per seed</summary>",
        "",
        "| stream | model | seed | detection delay | response | retrains | promoted "
        "| with | without | HAT | DRT | recover: with |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        if r["kind"] == "recurring":
            continue
        lines.append(
            f"| {r['stream']} | {r['model']} | {r['seed']} "
            f"| {'—' if r['delay'] is None else r['delay']} "
            f"| {'—' if r['response'] is None else r['response']} | {r['retrains']} "
            f"| {r['promotions']} | {pct(r['with']['after'][0])} "
            f"| {pct(r['without']['after'][0])} "
            f"| {pct(r['hat']['after'][0] if r['hat'] else None)} "
            f"| {pct(r['drt']['after'][0] if r['drt'] else None)} "
            f"| {'—' if r['with']['recover'][0] is None else r['with']['recover'][0]} |"
        )
    lines += ["", "</details>"]
    lines += stationary_lines(stationary)
    return "\n".join(lines) + "\n"


def recurring_lines(rows: list[dict]) -> list[str]:
    rec = [r for r in rows if r["kind"] == "recurring"]
    if not rec:
        return []
    lines = [
        "",
        "**Recurring concept** (*sea_recurring*): accuracy over the 5,000 events after each "
        "change, mean over the seeds. For the returns (events 20,000 and 40,000), the level "
        "is the concept's accuracy over the 5,000 events before it left; *served from*: "
        f"events from the return until the accuracy over the *next* {ROLLING} events first "
        f"reaches {RECOVERED:.0%} of that level (the model serving from then on is as good "
        f"as before); *recover*: as above, over the *last* {ROLLING} post-return events, so "
        "it includes the events served before the detection (— : never within the segment).",
        "",
        "| model | setting | after 10k | after 20k (return) | after 30k | after 40k (return) "
        "| served from: 20k | 40k | recover: 20k | 40k | promoted from the pool |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    models = dict.fromkeys(r["model"] for r in rec)
    for model in models:
        rs = [r for r in rec if r["model"] == model]
        settings = [("with", "with"), ("without", "without")]
        if model == TREE:
            settings += [("HAT", "hat"), ("DRT", "drt")]
        for name, field in settings:
            after = [mean([r[field]["after"][k] for r in rs]) for k in range(4)]
            back = [events_text([r[field]["served"][k] for r in rs]) for k in (1, 3)]
            back += [events_text([r[field]["recover"][k] for r in rs]) for k in (1, 3)]
            pool = sum(r["by_source"].get("pool", 0) for r in rs) if field == "with" else "—"
            lines.append(
                f"| {model} | {name} | {' | '.join(pct(a) for a in after)} "
                f"| {' | '.join(back)} | {pool} |"
            )
    return lines


def target_lines(verdicts: list, stationary: list[dict]) -> list[str]:
    """The issue's acceptance targets, checked on the numbers above: met or not, and by how
    much."""
    lines = ["", "**Against the targets** (means over the seeds):", ""]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    tree = [v for v in verdicts if v[1] == TREE and v[2][0]["kind"] == "abrupt"]
    if tree:
        diffs = [(s, 100 * (w - max(h, d))) for s, _, _, w, _, h, d in tree]
        met = [s for s, x in diffs if x >= 0]
        ahead = [s for s, x in diffs if x >= 1.0]
        lines.append(
            f"- Tree, abrupt streams, at least the better River anchor on every one: "
            f"{verdict(len(met) == len(tree))} ({len(met)} of {len(tree)}: "
            f"{', '.join(f'{s} {x:+.2f}' for s, x in diffs)}); at least 1 point ahead of both "
            f"on half of them: {verdict(2 * len(ahead) >= len(tree))} ({len(ahead)}: "
            f"{', '.join(ahead) or 'none'})."
        )
    for model, name in ((LINEAR, "Linear pipeline"), (HAT, "HAT inside the learner")):
        mine = [v for v in verdicts if v[1] == model]
        if not mine:
            continue
        after = min((100 * (w - wo), s) for s, _, _, w, wo, _, _ in mine)
        whole = min(
            (100 * (overall(rs, "with") - overall(rs, "without")), s)
            for s, _, rs, _, _, _, _ in mine
        )
        text = (
            f"- {name}, never more than 0.5 points below the same model without the policy: "
            f"{verdict(min(after[0], whole[0]) >= -0.5)} (worst {after[0]:+.2f} after a change "
            f"({after[1]}), {whole[0]:+.2f} over the whole run ({whole[1]}))"
        )
        if model == LINEAR:
            hurt = []
            for s, _, rs, w, wo, _, _ in mine:
                drop = mean([r["without"]["hurt"][0] for r in rs])
                back = mean([r["without"]["recoverable"][0] for r in rs])
                if drop > 0.02:
                    hurt.append((s, 100 * drop, None if back is None else 100 * back, w - wo))
            real = [h for h in hurt if h[2] is not None and h[2] > 2.0]
            text += (
                "; ahead after every change that costs it more than 2 points it can win back "
                f"(its own level 10k–15k after the change minus its accuracy right after): "
                f"{verdict(all(h[3] > 0 for h in real))} ("
                + (
                    ", ".join(
                        f"{s}: drop {d:.2f}, recoverable "
                        f"{'—' if b is None else f'{b:.2f}'}, with − without {100 * x:+.2f}"
                        for s, d, b, x in hurt
                    )
                    or "none"
                )
                + ")"
            )
        lines.append(text + ".")
    if stationary:
        late: dict[str, int] = {}
        for r in stationary:
            late[r["model"]] = late.get(r["model"], 0) + r["late_promotions"]
        where = [
            f"{r['stream']} seed {r['seed']}: {r['late_promotions']}"
            for r in stationary
            if r["late_promotions"]
        ]
        lines.append(
            "- Stationary streams, zero promotions after warm-up: "
            f"{verdict(not any(late.values()))} ("
            + ", ".join(f"{m} {n}" for m, n in late.items())
            + (f"; {', '.join(where)}" if where else "")
            + ")."
        )
    return lines


def stationary_lines(stationary: list[dict]) -> list[str]:
    if not stationary:
        return []
    lines = [
        "",
        "**Stationary streams** (the first concept only, no change): what fired over the "
        "whole stream. No retrain can start and no race begins during the 1,000-label "
        "warm-up; *late promotions* are those after it. *Champion unchanged*: of the "
        "candidates given up, those that led soundly while the champion's own loss had not "
        "risen soundly above its level before the race (`retrain.race_confirm`).",
        "",
        "| stream | model | seed | events | performance drifts | warnings "
        "| data-drift warnings | retrains | races | candidates given up "
        "| champion unchanged | promoted | late promotions |",
        "| --- | --- |" + " ---: |" * 11,
    ]
    for r in stationary:
        lines.append(
            f"| {r['stream']} | {r['model']} | {r['seed']} | {r['events']:,} | {r['drifts']} "
            f"| {r['warnings']} | {r['data_warnings']} | {r['retrains']} | {r['races']} "
            f"| {r['abandoned']} | {r['unchanged']} | {r['promotions']} "
            f"| {r['late_promotions']} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated (default 1..5)")
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--stationary-streams", default="sea,agrawal,hyperplane,stagger")
    parser.add_argument("--stationary-models", default=f"{TREE},{LINEAR}")
    parser.add_argument("--stationary-seeds", default="1,2")
    parser.add_argument("--stationary-events", type=int, default=200_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    models = tuple(args.models.split(","))
    for name in (*models, *args.stationary_models.split(",")):
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    streams = [s for s in args.streams.split(",") if s]
    stationary_args = [
        (s, m, seed, args.stationary_events)
        for s in args.stationary_streams.split(",")
        if s
        for m in args.stationary_models.split(",")
        for seed in (int(x) for x in args.stationary_seeds.split(","))
    ]
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(stream_rows, s, seed, models) for s in streams for seed in seeds]
        stationary = (
            list(pool.map(stationary_row, *zip(*stationary_args, strict=True)))
            if (stationary_args)
            else []
        )
        rows = [r for f in futures for r in f.result()]
    order = {m: i for i, m in enumerate(models)}
    rows.sort(key=lambda r: (streams.index(r["stream"]), order[r["model"]], r["seed"]))
    text = markdown(rows, stationary, args)
    print(text)
    if args.write_readme:
        readme = ROOT / "README.md"
        if not write_section(readme, "core-report", text):
            print(f"{readme}: no {START} ... {END} markers; nothing written", file=sys.stderr)
            return 1
        print(f"wrote the report into {readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
