"""Backtests of trigger policies: which policy would have served best on our own history?

:func:`replay` runs each policy over the same recorded history, with a fresh learner per key
built from the config's model spec, exactly as the service would have run it: results of a
retrain are applied ``apply_after`` inputs of its key after the retrain started (the
service's ``retrain_apply_after``), so a replay promotes the same models at the same events.
Retrains run inline; the core never reads the clock to decide, so the same history and
policies give the same report (only the timings differ).

A history is a JSONL file (one event or delayed-label object per line, the event contract of
:mod:`stream_learner.core.events`) or a CSV file with the columns ``id``, ``key``, ``ts``,
``y`` and one column per feature. Pure: no Kafka.
"""

from __future__ import annotations

import csv
import math
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_learner.config import Config
from stream_learner.core.events import Event, Label, decode
from stream_learner.core.learner import Learner, LearnerConfig
from stream_learner.core.models import ModelSpec
from stream_learner.core.policy import Decision, PolicyConfig
from stream_learner.core.retrain import RetrainConfig, RetrainJob
from stream_learner.errors import ConfigError, DecodeError

__all__ = [
    "BUILTIN_POLICIES",
    "NamedPolicy",
    "PolicyReport",
    "markdown_table",
    "read_history",
    "replay",
    "resolve_policy",
]

BUILTIN_POLICIES = ("never", "interval:N", "performance", "data-drift")
CSV_COLUMNS = ("id", "key", "ts", "y")
_JSONL = (".jsonl", ".ndjson", ".json")

Progress = Callable[[str, int, int, float], None]  # policy, done, total, events/s


# -- histories ---------------------------------------------------------------------------


def read_history(path: str | Path) -> list[Event | Label]:
    """Decode a whole history once, so every policy replays the very same objects.

    Any bad line is a :class:`ConfigError` naming the file and line: a backtest on a
    history that silently lost events would compare policies on the wrong data."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _JSONL and suffix != ".csv":
        raise ConfigError(
            f"input {path}: unknown format {suffix or '(no suffix)'!r}; expected .jsonl or .csv"
        )
    if not path.is_file():
        raise ConfigError(f"input {path} does not exist")
    jsonl = suffix in _JSONL
    with path.open("rb") if jsonl else path.open(newline="", encoding="utf-8") as f:
        rows = _jsonl_rows(f) if jsonl else _csv_rows(f, path)
        history: list[Event | Label] = []
        for line, raw in rows:
            try:
                history.append(decode(raw))
            except DecodeError as exc:
                raise ConfigError(f"input {path}, line {line}: {exc}") from None
    return history


def _jsonl_rows(f) -> Iterable[tuple[int, bytes]]:
    for line, raw in enumerate(f, 1):
        if raw.strip():
            yield line, raw


def _csv_rows(f, path: Path) -> Iterable[tuple[int, bytes]]:
    """Each row as the JSON message it stands for. Numbers are parsed (ints stay ints),
    ``true``/``false`` are booleans, an empty cell is a missing value. A row with ``y`` and
    no feature at all is a delayed label."""
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or "id" not in header:
        raise ConfigError(f"input {path}: a CSV history needs a header with an 'id' column")
    features = [(i, name) for i, name in enumerate(header) if name not in CSV_COLUMNS]
    where = {name: header.index(name) for name in CSV_COLUMNS if name in header}
    for line, row in enumerate(reader, 2):
        if not row:
            continue
        if len(row) != len(header):
            raise ConfigError(
                f"input {path}, line {line}: {len(row)} cells, header has {len(header)}"
            )
        obj: dict[str, Any] = {}
        for name, i in where.items():
            if row[i] != "":
                obj[name] = row[i] if name in ("id", "key") else _cell(row[i])
        x = {name: _cell(row[i]) for i, name in features if row[i] != ""}
        if x or "y" not in obj:
            obj["x"] = x
        yield line, orjson.dumps(obj)


def _cell(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


# -- policies ----------------------------------------------------------------------------

_OFF = {"performance": False, "data_drift": False}


@dataclass(frozen=True)
class NamedPolicy:
    """A policy to replay: its name in the report, and the sections it sets."""

    name: str
    policy: PolicyConfig
    retrain: RetrainConfig


def resolve_policy(text: str, retrain: RetrainConfig | None = None) -> NamedPolicy:
    """A builtin name or a TOML file with a ``[policy]`` table (and optionally ``[retrain]``).

    Builtins start from the default policy, not the config's, so their names mean the same
    thing in every report; they take the config's ``retrain`` section (``retrain``).

    - ``never``: every automatic trigger off (the baseline).
    - ``interval:N``: a stateless retrain every N events, no other trigger, no cooldown or
      budget (a level-2 schedule).
    - ``performance``: the default policy (error drift retrains, data drift warns).
    - ``data-drift``: the default policy, and data drift alone retrains too.
    """
    retrain = retrain or RetrainConfig()
    if text == "never":
        return NamedPolicy(text, PolicyConfig(**_OFF), retrain)
    if text.startswith("interval:"):
        n = text.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise ConfigError(f"--policy {text!r}: expected interval:N with N an integer >= 1")
        config = PolicyConfig(
            **_OFF,
            interval_events=int(n),
            cooldown_events=0,
            max_per_hour=0,
            kind_on_schedule="stateless",
        )
        return NamedPolicy(text, config, retrain)
    if text == "performance":
        return NamedPolicy(text, PolicyConfig(), retrain)
    if text == "data-drift":
        return NamedPolicy(text, PolicyConfig(data_drift_triggers=True), retrain)
    path = Path(text)
    if path.suffix.lower() != ".toml":
        raise ConfigError(
            f"--policy {text!r}: not a policy; choose one of: {', '.join(BUILTIN_POLICIES)}, "
            "or a .toml file with a [policy] table"
        )
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"policy file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    for name in data:
        if name not in ("policy", "retrain"):
            raise ConfigError(f"{path}: {name}: unknown section; choose one of: policy, retrain")
    if "policy" not in data:
        raise ConfigError(f"{path}: policy: the [policy] table is missing")
    return NamedPolicy(
        path.stem,
        PolicyConfig.from_dict(data["policy"], where=f"{path.name}: policy"),
        RetrainConfig.from_dict(data["retrain"], where=f"{path.name}: retrain")
        if "retrain" in data
        else retrain,
    )


# -- replay ------------------------------------------------------------------------------


@dataclass
class PolicyReport:
    """One policy's backtest. ``metric``/``rolling`` are the primary metric, cumulative and
    over the last ``eval_window`` labelled events, averaged over keys weighted by their
    labelled events. ``retrain_s`` and ``events_per_s`` are timings: they vary run to run."""

    policy: str
    metric_name: str
    metric: float
    rolling: float
    retrains: int
    promoted: int
    retrain_s: float
    inputs: int
    events_per_s: float
    decisions: list[dict[str, Any]] = field(default_factory=list)

    TIMINGS = ("retrain_s", "events_per_s")

    def to_dict(self, decisions: bool = True) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "decisions"}
        if decisions:
            out["decisions"] = self.decisions
        return out


def replay(
    history: Sequence[Event | Label],
    config: Config,
    policies: Sequence[NamedPolicy],
    *,
    progress: Progress | None = None,
) -> list[PolicyReport]:
    """Run every policy over ``history``; one report per policy, in the order given."""
    if not config.model:
        raise ConfigError("model: the [model] section is missing; see examples/config.toml")
    spec = ModelSpec.from_dict(config.model, where="model")
    learner_config = LearnerConfig.from_dict(config.learner)
    service = config.service
    return [
        _replay_one(
            history,
            named,
            lambda key, named=named: Learner(
                key,
                spec,
                config=learner_config,
                policy=named.policy,
                retrain=named.retrain,
                max_pending=service.label_max_pending,
                max_age_s=service.label_max_age_s or None,
            ),
            service.retrain_apply_after,
            progress,
        )
        for named in policies
    ]


def _replay_one(
    history: Sequence[Event | Label],
    named: NamedPolicy,
    new_learner: Callable[[str], Learner],
    apply_after: int,
    progress: Progress | None,
) -> PolicyReport:
    learners: dict[str, Learner] = {}
    pending: dict[str, tuple[RetrainJob, int]] = {}  # key -> (job, due index)
    log: list[dict[str, Any]] = []
    promoted, retrain_s = 0, 0.0
    total = len(history)
    start = time.perf_counter()
    for done, item in enumerate(history, 1):
        key = item.key
        learner = learners.get(key)
        if learner is None:
            learner = learners[key] = new_learner(key)
        # The service's order: the input, its decisions, a new job, then a due result.
        if type(item) is Label:
            out = learner.on_label(item)
            if out is None:
                continue
        elif item.y is None:
            out = learner.predict(item)
        else:
            out = learner.learn(item)
        if out.decisions:
            log.extend(_decision(d) for d in out.decisions)
        if out.job is not None:
            pending[key] = (out.job, learner.index + apply_after)
        if pending and key in pending and learner.index >= pending[key][1]:
            job, _ = pending.pop(key)
            result = job.run()
            retrain_s += result.duration_s
            decision = learner.apply(result)
            promoted += decision.action == "promote"
            log.append(_decision(decision))
        if progress is not None and (done % 5000 == 0 or done == total):
            progress(named.name, done, total, done / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    evaluators = [lr.evaluator for lr in learners.values()]
    return PolicyReport(
        policy=named.name,
        metric_name=evaluators[0].primary if evaluators else "",
        metric=_weighted(evaluators, rolling=False),
        rolling=_weighted(evaluators, rolling=True),
        retrains=sum(lr.retrains for lr in learners.values()),
        promoted=promoted,
        retrain_s=retrain_s,
        inputs=total,
        events_per_s=total / elapsed if elapsed > 0 else math.nan,
        decisions=log,
    )


def _weighted(evaluators: list, rolling: bool) -> float:
    pairs = [(ev.n, ev.primary_value(rolling)) for ev in evaluators]
    pairs = [(n, v) for n, v in pairs if n and not math.isnan(v)]
    n = sum(n for n, _ in pairs)
    return sum(n * v for n, v in pairs) / n if n else math.nan


def _decision(d: Decision) -> dict[str, Any]:
    return {
        "key": d.key,
        "index": d.index,
        "ts": d.ts,
        "trigger": d.trigger,
        "action": d.action,
        "code": d.code,
        "kind": d.kind,
        "reason": d.reason,
    }


def markdown_table(reports: Sequence[PolicyReport]) -> str:
    """The comparison, one row per policy, as a Markdown table (readable in a terminal)."""
    name = reports[0].metric_name if reports else "metric"
    head = (
        f"| policy | {name} | {name} (last window) | retrains | promoted "
        "| retrain time (s) | events/s |"
    )
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        rows.append(
            f"| {r.policy} | {r.metric:.4f} | {r.rolling:.4f} | {r.retrains} | {r.promoted} "
            f"| {r.retrain_s:.3f} | {r.events_per_s:,.0f} |"
        )
    return "\n".join(rows)
