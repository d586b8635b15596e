"""``stream-learner replay``: backtest trigger policies on a recorded history.

The team's experiment before choosing a policy: the same history, the config's model, one
row per policy. The history is a file, or a range of the config's input topics
(``--from-kafka``, read by :mod:`stream_learner.kafka.history` in the order the service
learned it); the work is :func:`stream_learner.replay.replay`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from stream_learner.cli.checkpoints_cmd import Context, resolve_version
from stream_learner.config import Config, load_config
from stream_learner.core.checkpoints import Catalog, VersionInfo
from stream_learner.core.commands import Command
from stream_learner.core.keystate import KeyState
from stream_learner.core.learner import Learner
from stream_learner.core.models import ModelSpec
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.retrain import RetrainConfig
from stream_learner.core.snapshot import SnapshotMeta
from stream_learner.errors import ConfigError, StreamLearnerError
from stream_learner.kafka.client import BOOTSTRAP_ENV, check_reachable, resolve_bootstrap
from stream_learner.kafka.history import REPLAYED_COMMANDS, Bound, KafkaHistory
from stream_learner.replay import (
    BUILTIN_POLICIES,
    load_model_spec,
    markdown_table,
    read_history,
    rebuild,
    replay,
    resolve_policy,
)
from stream_learner.service.runtime import Topics


def register(sub: argparse._SubParsersAction) -> None:
    cmd = sub.add_parser(
        "replay",
        help="backtest retraining policies on a recorded history",
        description="Replay a history (JSONL events and labels, CSV with columns id, key, "
        "ts, y and one per feature, or a range of the service's own topics) through the "
        "config's model once per policy, as the service would have, and compare: prequential "
        "metric, retrains, promotions, time. Start from checkpoints with --from-checkpoint; "
        "train and publish a new lineage with --rebuild [--publish].",
    )
    cmd.add_argument("--config", required=True, help="TOML config file (model, learner, ...)")
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="history: FILE.jsonl or FILE.csv")
    source.add_argument(
        "--from-kafka",
        action="store_true",
        help="history: the config's events, labels and control topics between --start and "
        "--end, merged and decoded as the service does (records it dead-letters are skipped "
        "and counted; pause, resume and retrain commands are replayed, others counted)",
    )
    kafka = cmd.add_argument_group("the Kafka range (with --from-kafka)")
    kafka.add_argument(
        "--start",
        metavar="BOUND",
        help="where the range starts: 'earliest' (the default); a time, ISO-8601 "
        "(2024-05-01T12:00:00Z, no zone = UTC) or epoch milliseconds, applied to every "
        "partition of the three topics through the broker's time index; or offsets "
        "PARTITION:OFFSET[,...] of the events topic, e.g. 0:100,1:0 (then only the "
        "partitions named are read, and their labels and control start at the event time of "
        "that events record; labels:P:N and control:P:N give those offsets instead)",
    )
    kafka.add_argument(
        "--end",
        metavar="BOUND",
        help="where it ends, exclusive: 'end' (the default: each partition's end when the "
        "replay starts), or a time or offsets as for --start; an offset beyond the end is "
        "an error",
    )
    kafka.add_argument("--bootstrap", help=f"Kafka bootstrap (default: ${BOOTSTRAP_ENV}, config)")
    cmd.add_argument(
        "--policy",
        action="append",
        help=f"{', '.join(BUILTIN_POLICIES)}, or a TOML file with [policy] (repeat to "
        "compare); 'config' is the config's own [policy], the one the service runs",
    )
    cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
    cmd.add_argument("--decisions", action="store_true", help="include the decision log")
    cmd.add_argument(
        "--report",
        metavar="DIR",
        help="also write DIR/index.html (one self-contained page: the table and the charts), "
        "DIR/comparison.png and DIR/<policy>.png: the rolling metric over the history, drift "
        "detections and retrains marked (needs matplotlib: pip install "
        "'stream-learner[report]')",
    )
    _checkpoint_options(cmd)
    cmd.set_defaults(func=_replay)


def _replay(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _check_checkpoint_args(args)
    if args.rebuild:
        _only_with_kafka(args, checkpoints=True)
        return _rebuild(args, config)
    retrain = RetrainConfig.from_dict(config.retrain)
    own = PolicyConfig.from_dict(config.policy)
    # All checked before any work.
    policies = [resolve_policy(p, retrain, config=own) for p in args.policy]
    _only_with_kafka(args, checkpoints=bool(args.from_checkpoint))
    report_dir = _report_dir(args.report) if args.report is not None else None
    starts = _from_checkpoints(args, config) if args.from_checkpoint else None
    if args.from_kafka:
        topics = Topics.from_prefix(config.kafka.topic_prefix)
        after = starts.bound(topics) if starts is not None and args.start is None else None
        read = _kafka_history(args, config, after)
        history, partitions = read.items, read.partitions
    else:
        read, history, partitions = None, read_history(args.input), None
        if starts is not None:
            print(
                "replay: a file history is replayed whole: it should hold the inputs after "
                "the snapshots' offsets",
                file=sys.stderr,
            )
    tty = sys.stderr.isatty()
    reports = replay(
        history,
        config,
        policies,
        progress=_progress if tty else None,
        initial=None if starts is None else starts.learners,
        partitions=partitions,
        initial_partitions=None if starts is None else starts.partitions(),
    )
    if tty:
        print(file=sys.stderr)
    if read is not None:
        _summary(read, config, reports[0].rejections if reports else {})
    if report_dir is not None:
        _write_report(reports, report_dir, args)
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


def _only_with_kafka(args: argparse.Namespace, *, checkpoints: bool) -> None:
    """--start and --end need --from-kafka; so does --bootstrap, unless the checkpoint
    topic is read (--from-checkpoint, --rebuild)."""
    if args.from_kafka:
        return
    names = ("start", "end") if checkpoints else ("start", "end", "bootstrap")
    given = [f"--{n}" for n in names if getattr(args, n) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: only with --from-kafka")


def _kafka_history(args: argparse.Namespace, config, after: Bound | None = None) -> KafkaHistory:
    """The config's input topics over the range, as the service learned them; a summary of
    what was read and left out goes to stderr. ``after`` is the start when ``--start`` is
    not given (the snapshots' offsets, with ``--from-checkpoint``)."""
    from stream_learner.kafka.history import parse_bound, read_kafka_history

    start, end = parse_bound(args.start, "--start"), parse_bound(args.end, "--end")
    if after is not None:
        start = after
    bootstrap = resolve_bootstrap(
        args.bootstrap or os.environ.get(BOOTSTRAP_ENV) or config.kafka.bootstrap
    )
    extra = dict(config.kafka.client)
    check_reachable(bootstrap, timeout=10, extra=extra)
    topics = Topics.from_prefix(config.kafka.topic_prefix)
    task = ModelSpec.from_dict(config.model, where="model").task if config.model else None
    read = read_kafka_history(
        bootstrap,
        {"events": topics.events, "labels": topics.labels, "control": topics.control},
        start,
        end,
        task=task,
        max_bytes=config.service.max_event_bytes,
        max_features=config.service.max_event_features,
        max_name_chars=config.service.max_feature_name_chars,
        client=extra,
    )
    return read


def _summary(read: KafkaHistory, config, rejected: Mapping[str, int]) -> None:
    """One line on stderr: what was read, and what was left out as the service leaves it
    out: records the decoder refuses (``read.skipped``) and inputs the replay's processor
    refused (``rejected``, by reason: a label of the wrong type, a value the model refuses,
    a label-only key past the cap)."""
    partitions = sorted({p for _, p in read.ranges})
    skipped = read.skipped + Counter(rejected)
    inputs = sum(not isinstance(i, Command) for i in read.items) - sum(rejected.values())
    line = (
        f"replay: {read.records:,} records from {config.kafka.topic_prefix}"
        f"{{events,labels,control}}, partitions {', '.join(map(str, partitions)) or 'none'}: "
        f"{inputs:,} events and labels"
    )
    if skipped:
        reasons = ", ".join(f"{r} {n}" for r, n in skipped.most_common())
        line += f"; {skipped.total():,} skipped as the service dead-letters them ({reasons})"
    others = Counter({c: n for c, n in read.commands.items() if c not in REPLAYED_COMMANDS})
    if others:
        names = ", ".join(f"{c} {n}" for c, n in others.most_common())
        n = others.total()
        line += f"; {n:,} command{'s' * (n != 1)} not replayed ({names})"
    print(line, file=sys.stderr)


def _report_dir(path: str):
    """Checked before the replay: a missing matplotlib or a bad DIR must not cost a run."""
    from stream_learner.report import prepare_dir, require_matplotlib

    require_matplotlib()
    return prepare_dir(path)


def _write_report(reports, report_dir, args: argparse.Namespace) -> None:
    from stream_learner.report import write_report

    source = args.input if args.input is not None else "the config's topics (--from-kafka)"
    page = write_report(reports, report_dir, context=f"History: {source}; config: {args.config}.")
    print(f"replay: report written to {page}", file=sys.stderr)


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


# -- checkpoints: --from-checkpoint, --rebuild [--publish] ------------------------------

ALL_KEYS = "all"


def _checkpoint_options(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_argument_group(
        "checkpoints (the config's checkpoint topic and signing key; --bootstrap applies)"
    )
    group.add_argument(
        "--from-checkpoint",
        action="append",
        metavar="KEY[:VERSION]",
        help="start KEY's learners from its verified snapshot (default: the newest) instead "
        "of fresh, each policy on its own copy; repeat for more keys, or 'all' for every "
        "key's newest. With --from-kafka the range starts after the snapshots' input "
        "offsets unless --start is given; a file history is replayed whole",
    )
    group.add_argument(
        "--rebuild",
        action="store_true",
        help="train a new lineage (the config's [model], or --model) from scratch over the "
        "history with the config's [policy], and compare it with each key's current "
        "snapshot; publishes nothing without --publish",
    )
    group.add_argument(
        "--model",
        metavar="FILE.toml",
        help="with --rebuild: the model spec to rebuild, from the file's [model] table",
    )
    group.add_argument(
        "--publish",
        action="store_true",
        help="with --rebuild: publish each key's rebuilt learner as its next version "
        "(trigger 'rebuild', signed) and ask the running service to serve it (a 'rollback' "
        "command to that version: the service adopts the new lineage)",
    )


def _check_checkpoint_args(args: argparse.Namespace) -> None:
    """Combinations that cannot mean anything, refused before any work."""
    if args.publish and not args.rebuild:
        raise ConfigError("--publish: only with --rebuild (it publishes the rebuilt lineage)")
    if args.model and not args.rebuild:
        raise ConfigError("--model: only with --rebuild (replays use the config's [model])")
    if args.rebuild:
        if args.from_checkpoint:
            raise ConfigError(
                "--from-checkpoint: not with --rebuild, which trains the new lineage from scratch"
            )
        if args.policy:
            raise ConfigError(
                "--policy: not with --rebuild, which runs the config's [policy] (the one the "
                "service runs, and that a published snapshot carries)"
            )
        if getattr(args, "report", None) is not None:
            raise ConfigError("--report: not with --rebuild (it compares policies)")
    elif not args.policy:
        raise ConfigError("--policy: give at least one policy to replay (or --rebuild)")


def _context(args: argparse.Namespace) -> Context:
    return Context(config_path=args.config, bootstrap=args.bootstrap)


@dataclass
class _Starts:
    """The snapshots the replay starts from: their states by key, and their headers."""

    learners: dict[str, KeyState]
    infos: dict[str, VersionInfo]

    def partitions(self) -> dict[str, int]:
        """The partition each snapshot's key lives on (its ``*`` commands are theirs)."""
        return {key: info.extra.get("partition", 0) for key, info in self.infos.items()}

    def bound(self, topics: Topics) -> Bound:
        """Where a Kafka history starts: after each snapshot's input offsets. Keys of one
        partition snapshotted at different positions start at the newest of them (never
        learning an input twice); a note says so."""
        roles = {topics.events: "events", topics.labels: "labels", topics.control: "control"}
        offsets: dict[tuple[str, int], int] = {}
        differ: set[int] = set()
        for key, info in sorted(self.infos.items()):
            taken = info.extra.get("events_topic", topics.events)
            if taken != topics.events:
                raise ConfigError(
                    f"--from-checkpoint {key}: version {info.model_version} was learned from "
                    f"{taken}; the config reads {topics.events}"
                )
            for topic, parts in info.offsets.items():
                if topic not in roles:
                    raise ConfigError(
                        f"--from-checkpoint {key}: version {info.model_version} names topic "
                        f"{topic}, not an input topic of the config"
                    )
                for p, off in parts.items():
                    where = (roles[topic], int(p))
                    if where in offsets and offsets[where] != off:
                        differ.add(int(p))
                    offsets[where] = max(off, offsets.get(where, off))
        if not offsets:
            raise ConfigError("--from-checkpoint: the snapshots record no input offsets")
        for p in sorted(differ):
            print(
                f"replay: note: keys of partition {p} were snapshotted at different positions; "
                "the range starts at the newest (give --start to choose)",
                file=sys.stderr,
            )
        text = ",".join(f"{r}:{p}:{o}" for (r, p), o in sorted(offsets.items()))
        return Bound(text, offsets=offsets)


def _from_checkpoints(args: argparse.Namespace, config: Config) -> _Starts:
    """Load and verify every snapshot named by ``--from-checkpoint``."""
    ctx = _context(args)
    catalog = ctx.catalog()
    starts = _Starts({}, {})
    lineage = ModelSpec.from_dict(config.model, where="model").lineage if config.model else None
    for key, version in _named_snapshots(args.from_checkpoint, catalog):
        info, state = ctx.load(catalog, key, version, "--from-checkpoint")
        starts.learners[key] = KeyState.of(state)
        starts.infos[key] = info
        where = " ".join(
            f"{t.rsplit('.', 1)[-1]}[{p}]={o}"
            for t, parts in sorted(info.offsets.items())
            for p, o in sorted(parts.items())
        )
        line = (
            f"replay: key {key!r} starts from version {info.model_version} (lineage "
            f"{info.lineage}, {starts.learners[key].learner.index:,} inputs, "
            f"offsets {where or 'none'})"
        )
        if lineage is not None and info.lineage != lineage:
            line += f"; it continues that lineage, not the config's {lineage}"
        print(line, file=sys.stderr)
    return starts


def _named_snapshots(texts: list[str], catalog: Catalog) -> list[tuple[str, int | None]]:
    """``KEY``, ``KEY:VERSION`` or ``all``. A key that itself ends in ``:digits`` is taken
    whole when the topic has such a key."""
    if ALL_KEYS in texts:
        if len(texts) > 1:
            raise ConfigError(
                f"--from-checkpoint {ALL_KEYS}: give it alone (it means every key's newest)"
            )
        keys = catalog.keys()
        if not keys:
            raise ConfigError(f"--from-checkpoint {ALL_KEYS}: there are no snapshots on the topic")
        return [(key, None) for key in keys]
    known = set(catalog.keys())
    named: dict[str, int | None] = {}
    for text in texts:
        key, version = text, None
        head, sep, tail = text.rpartition(":")
        if sep and tail.isdigit() and text not in known:
            key, version = head, int(tail)
        if not key:
            raise ConfigError(f"--from-checkpoint {text!r}: expected KEY, KEY:VERSION or all")
        if key in named:
            raise ConfigError(f"--from-checkpoint: key {key!r} is given twice")
        named[key] = version
    return list(named.items())


def _rebuild(args: argparse.Namespace, config: Config) -> int:
    """Train the new lineage over the history, compare it with the keys' current snapshots,
    and with ``--publish`` hand it to the service."""
    if args.model:
        spec, origin = load_model_spec(args.model), args.model
    elif config.model:
        spec, origin = ModelSpec.from_dict(config.model, where="model"), "the config's [model]"
    else:
        raise ConfigError("model: the [model] section is missing; see examples/config.toml")
    ctx = _context(args)
    if args.publish and ctx.key is None and not config.checkpoints.insecure_dev:
        raise ConfigError(
            "--publish: no snapshot signing key, so the service would refuse the snapshot; "
            "set STREAM_LEARNER_SNAPSHOT_KEY or checkpoints.signing_key"
        )
    catalog = ctx.catalog()
    # Checked before the history is read: a key whose newest snapshot has this lineage
    # already serves it (the config's [model] did not change, or it was adopted before).
    same = [
        k
        for k in catalog.keys()  # noqa: SIM118 - a Catalog, not a dict
        if resolve_version(catalog, k, None).lineage == spec.lineage
    ]
    if same:
        raise ConfigError(
            f"--rebuild: {', '.join(map(repr, same))} already serve(s) lineage {spec.lineage} "
            f"({origin}); change the config's [model] or give --model FILE.toml"
        )
    read = _kafka_history(args, config) if args.from_kafka else None
    history, partitions, ranges, source = _rebuild_history(args, read)
    keys = sorted({item.key for item in history if not isinstance(item, Command)})
    if not keys:
        raise ConfigError(f"--rebuild: the history ({source}) holds no events")
    heads = {k: resolve_version(catalog, k, None) for k in keys if catalog.versions(k)}
    if args.publish and not heads:
        raise ConfigError(
            f"--publish: no key of the history ({', '.join(map(repr, keys[:5]))}) has a "
            f"snapshot on {ctx.topics.checkpoints}: the service serves none of them"
        )
    tty = sys.stderr.isatty()
    report, learners = rebuild(
        history, config, spec, progress=_progress if tty else None, partitions=partitions
    )
    if tty:
        print(file=sys.stderr)
    if read is not None:
        _summary(read, config, report.rejections)
    published = {}
    if args.publish:
        published = _publish(ctx, catalog, learners, heads, spec, ranges, source)
    rows = [_comparison(key, heads.get(key), learners[key], published.get(key)) for key in keys]
    if args.json:
        body = {
            "lineage": spec.lineage,
            "model": origin,
            "spec": spec.to_dict(),
            "history": source,
            "inputs": len(history),
            "report": report.to_dict(decisions=args.decisions),
            "keys": rows,
            "published": bool(published),
        }
        print(orjson.dumps(_nan_to_none(body), option=orjson.OPT_INDENT_2).decode())
    else:
        print(
            f"rebuilt lineage {spec.lineage} ({origin}) over {len(history):,} inputs of "
            f"{source}, with the config's [policy]: {report.retrains} retrains, "
            f"{report.promoted} promoted"
        )
        print(_comparison_table(rows, spec.primary_metric))
        for key, version in sorted(published.items()):
            head = heads[key]
            print(
                f"published key {key!r} version {version}, lineage {spec.lineage} (was "
                f"{head.lineage} v{head.model_version}); the service was asked to serve it "
                f"on {ctx.topics.control}"
            )
    for key in keys:
        if args.publish and key not in heads:
            print(
                f"replay: key {key!r} not published: no snapshot on the topic (the service "
                "does not serve it yet)",
                file=sys.stderr,
            )
    config_lineage = (
        ModelSpec.from_dict(config.model, where="model").lineage if config.model else None
    )
    if published and config_lineage != spec.lineage:
        print(
            f"replay: note: the config's [model] is lineage {config_lineage}; a restart keeps "
            "the adopted lineage (and logs adopted_lineage_kept) while the config names the "
            f"lineage it replaced: put the rebuilt [model] ({origin}) in the config to make "
            "it explicit",
            file=sys.stderr,
        )
    return 0


def _rebuild_history(
    args: argparse.Namespace, read: KafkaHistory | None
) -> tuple[list, list[int] | None, dict[tuple[str, int], tuple[int, int]], str]:
    """The history, each item's partition (``None`` for a file), the Kafka ranges it came
    from (empty for a file), and its name."""
    if read is None:
        return read_history(args.input), None, {}, args.input
    spans = ", ".join(f"{t}[{p}] {s}..{e}" for (t, p), (s, e) in sorted(read.ranges.items()))
    return read.items, read.partitions, dict(read.ranges), f"Kafka ({spans or 'empty'})"


def _publish(
    ctx: Context,
    catalog: Catalog,
    learners: dict[str, Learner],
    heads: dict[str, VersionInfo],
    spec: ModelSpec,
    ranges: dict[tuple[str, int], tuple[int, int]],
    source: str,
) -> dict[str, int]:
    """Publish every key's rebuilt learner as the key's next version, check each one on
    the topic, then send the commands that make the service serve them. Returns the
    published version by key.

    The snapshots go to each key's staging slot, never to the slots the service writes
    (see :mod:`stream_learner.core.checkpoints`): a checkpoint the service takes before
    it reads the rollback command cannot overwrite or retire them."""
    store = ctx.store()
    written: dict[str, tuple[int, str]] = {}
    try:
        for key, head in sorted(heads.items()):
            learner = learners[key]
            taken = [v.model_version for v in catalog.versions(key)]
            staged = catalog.staged(key)  # an earlier rebuild's: replaced, its version used
            version = max(taken + ([staged.model_version] if staged else [])) + 1
            learner.version = version  # versions only go up, in the state as in the header
            partition = head.extra.get("partition")
            offsets = {t: {p: end} for (t, p), (_, end) in ranges.items() if p == partition}
            meta = SnapshotMeta(
                key=key,
                lineage=spec.lineage,
                model_version=version,
                trigger="rebuild",
                decision=f"lineage {spec.lineage} rebuilt over {learner.index:,} inputs of "
                f"{source}; replaces lineage {head.lineage} v{head.model_version}",
                metrics=learner.evaluator.values(),
                offsets=offsets,
                extra={
                    "partition": partition,
                    "events_topic": head.extra.get("events_topic", ctx.topics.events),
                    "rebuild_of": head.model_version,
                    "previous_lineage": head.lineage,
                },
            )
            header = store.publish(KeyState(learner), meta, staged=True)
            written[key] = (version, header["sha256"])
        # Only a snapshot that is on the topic, whole, is handed over (another rebuild
        # publishing the same key at the same moment would replace it).
        check = store.read()
        for key, (version, sha) in written.items():
            found = check.staged(key)
            if not (
                found
                and found.valid
                and found.model_version == version
                and found.header.get("sha256") == sha
            ):
                raise StreamLearnerError(
                    f"version {version} of key {key!r} is not on {ctx.topics.checkpoints} as "
                    "written (another rebuild of the key published at the same time); run "
                    "the rebuild again"
                )
    finally:
        store.close()
    for key, (version, _) in sorted(written.items()):
        ctx.send(
            Command(
                "rollback",
                key=key,
                version=version,
                reason=f"adopt lineage {spec.lineage} (replay --rebuild)",
                requested_by="cli",
                ts=time.time(),
                staged=True,  # the staged snapshot, even if the service wrote this version too
            )
        )
    return {key: version for key, (version, _) in written.items()}


def _comparison(
    key: str, head: VersionInfo | None, learner: Learner, version: int | None
) -> dict[str, Any]:
    current = None
    if head is not None:
        current = {
            "version": head.model_version,
            "lineage": head.lineage,
            "created": head.created,
            "metrics": head.metrics,
        }
    rebuilt = {
        "version": version,
        "lineage": learner.lineage,
        "inputs": learner.index,
        "labelled": learner.evaluator.n,
        "metrics": learner.evaluator.values(),
    }
    return {"key": key, "current": current, "rebuilt": rebuilt}


def _comparison_table(rows: list[dict[str, Any]], metric: str) -> str:
    """Per key, the current snapshot's metrics (what the service measured over everything
    it learned) above the rebuild's (over this history)."""

    def value(metrics: dict, name: str) -> str:
        v = metrics.get(name)
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"

    lines = [
        f"| key | model | version | lineage | {metric} | {metric} (last window) | labelled |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        cur, new = row["current"], row["rebuilt"]
        if cur is not None:
            m = cur["metrics"]
            lines.append(
                f"| {row['key']} | current | {cur['version']} | {cur['lineage']} "
                f"| {value(m, metric)} | {value(m, metric + '_rolling')} | - |"
            )
        m = new["metrics"]
        version = "-" if new["version"] is None else str(new["version"])
        lines.append(
            f"| {row['key']} | rebuilt | {version} | {new['lineage']} | {value(m, metric)} "
            f"| {value(m, metric + '_rolling')} | {new['labelled']:,} |"
        )
    return "\n".join(lines)
