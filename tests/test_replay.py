"""Backtests of trigger policies (``stream_learner.replay`` and ``stream-learner replay``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import orjson
import pytest

from stream_learner.cli import main
from stream_learner.config import parse_config
from stream_learner.errors import ConfigError
from stream_learner.replay import PolicyReport, read_history, replay, resolve_policy
from stream_learner.synth import demo_messages

N, CHANGE_AT = 8000, 4000

CONFIG = """
[service]
retrain_apply_after = 200

[model]
task = "binary"
pipeline = [
  { estimator = "preprocessing.StandardScaler" },
  { estimator = "linear_model.LogisticRegression", params = { l2 = 0.0 } },
]
metrics = ["accuracy", "logloss"]

[retrain]
margin = 0.0
"""


def _messages(unlabelled_share: float = 0.0) -> list[dict]:
    return [
        m.value
        for m in demo_messages(
            N, change_at=CHANGE_AT, unlabelled_share=unlabelled_share, t0=1_700_000_000.0
        )
    ]


def _jsonl(path: Path, messages: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(m) + b"\n" for m in messages))
    return path


def _csv(path: Path, messages: list[dict]) -> Path:
    features = sorted({name for m in messages for name in m.get("x", {})})
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "key", "ts", "y", *features])
        for m in messages:
            y = "" if m.get("y") is None else m["y"]
            x = m.get("x", {})
            writer.writerow([m["id"], m["key"], m["ts"], y, *(x.get(n, "") for n in features)])
    return path


@pytest.fixture(scope="module")
def config():
    import tomllib

    return parse_config(tomllib.loads(CONFIG), env={})


@pytest.fixture(scope="module")
def drifting(tmp_path_factory) -> Path:
    return _jsonl(tmp_path_factory.mktemp("replay") / "history.jsonl", _messages())


def _run(path: Path, config, *names: str) -> dict[str, PolicyReport]:
    policies = [resolve_policy(n) for n in names]
    return {r.policy: r for r in replay(read_history(path), config, policies)}


def _comparable(report: PolicyReport) -> dict:
    return {k: v for k, v in report.to_dict().items() if k not in PolicyReport.TIMINGS}


@pytest.fixture(scope="module")
def reports(drifting, config) -> dict[str, PolicyReport]:
    return _run(drifting, config, "never", "interval:1000", "performance")


def test_performance_policy_beats_never_with_fewer_retrains_than_an_interval(reports):
    never, interval, performance = (
        reports["never"],
        reports["interval:1000"],
        reports["performance"],
    )
    assert never.retrains == 0 and never.promoted == 0
    assert performance.metric > never.metric
    assert performance.retrains < interval.retrains
    assert performance.promoted >= 1
    # The drift was detected after the change, and a model trained since was promoted: the
    # race's shadow, which supersedes the window retrain decided at the detection.
    retrains = [d for d in performance.decisions if d["action"] == "retrain"]
    assert retrains and retrains[0]["trigger"] == "performance"
    assert retrains[0]["index"] > CHANGE_AT
    promoted = [d for d in performance.decisions if d["action"] == "promote"]
    assert promoted and promoted[0]["index"] > retrains[0]["index"]


def test_results_are_applied_apply_after_inputs_after_the_decision(reports):
    # The service applies a result retrain_apply_after inputs after its job started.
    log = reports["interval:1000"].decisions
    started = [d["index"] for d in log if d["action"] == "retrain"]
    applied = [d["index"] for d in log if d["action"] in ("promote", "keep")]
    assert applied == [i + 200 for i in started[: len(applied)]]


def test_same_history_twice_gives_the_same_report(drifting, config, reports):
    again = _run(drifting, config, "never", "interval:1000", "performance")
    for name, report in reports.items():
        assert _comparable(again[name]) == _comparable(report)


def test_jsonl_and_csv_histories_give_the_same_result(tmp_path, config):
    messages = _messages(unlabelled_share=0.1)  # delayed labels too
    assert any("x" not in m for m in messages)
    jsonl = _jsonl(tmp_path / "h.jsonl", messages)
    table = _csv(tmp_path / "h.csv", messages)
    assert read_history(jsonl) == read_history(table)
    a = _run(jsonl, config, "performance")["performance"]
    b = _run(table, config, "performance")["performance"]
    assert _comparable(a) == _comparable(b)


def test_bad_inputs_are_config_errors_naming_the_problem(tmp_path, config):
    with pytest.raises(ConfigError, match=r"expected \.jsonl or \.csv"):
        read_history(tmp_path / "history.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        read_history(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "e1", "x": {"a": 1}}\n{"id": "e2", "x": [1]}\n')
    with pytest.raises(ConfigError, match="line 2: x_not_object"):
        read_history(bad)
    typo = tmp_path / "mine.toml"
    typo.write_text("[policy]\ncooldown_event = 10\n")
    with pytest.raises(ConfigError, match="cooldown_event: unknown key"):
        resolve_policy(str(typo))
    with pytest.raises(ConfigError, match="choose one of: never"):
        resolve_policy("sometimes")
    with pytest.raises(ConfigError, match="interval:N"):
        resolve_policy("interval:0")


def test_a_policy_file_sets_policy_and_retrain(tmp_path):
    path = tmp_path / "eager.toml"
    path.write_text("[policy]\ncooldown_events = 10\n\n[retrain]\nmargin = 0.05\n")
    named = resolve_policy(str(path))
    assert named.name == "eager"
    assert named.policy.cooldown_events == 10
    assert named.retrain.margin == 0.05


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    return path


def test_cli_prints_a_table_and_json(drifting, config_file, capsys):
    args = ["replay", "--config", str(config_file), "--input", str(drifting)]
    assert main([*args, "--policy", "never", "--policy", "performance"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith("| policy | accuracy")
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["never", "performance"]
    assert out.err == ""  # no progress line when stderr is not a terminal

    assert main([*args, "--policy", "performance", "--json", "--decisions"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in body] == ["performance"]
    assert body[0]["metric_name"] == "accuracy" and body[0]["decisions"]


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, config_file, capsys):
    missing = tmp_path / "nope.jsonl"
    code = main(
        ["replay", "--config", str(config_file), "--input", str(missing), "--policy", "never"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.jsonl does not exist" in err


def test_inputs_the_task_or_model_refuse_are_skipped_as_the_service_skips_them(tmp_path, config):
    messages = _messages()[:600]
    bad = {"id": "bad", "key": "default", "ts": messages[299]["ts"], "x": {"x0": "high"}}
    bad["y"] = True
    maybe = {**messages[400], "id": "maybe", "y": "maybe"}  # not a binary label
    with_bad = [*messages[:300], bad, *messages[300:400], maybe, *messages[400:]]
    history = read_history(_jsonl(tmp_path / "h.jsonl", with_bad))
    (report,) = replay(history, config, [resolve_policy("never")])
    (clean,) = replay(read_history(_jsonl(tmp_path / "c.jsonl", messages)), config,
                      [resolve_policy("never")])  # fmt: skip
    assert report.rejected == 2 and clean.rejected == 0
    assert report.inputs == clean.inputs + 2
    assert report.metric == pytest.approx(clean.metric, abs=2 / 600)  # the rest was learned


def test_labels_for_too_many_unseen_keys_are_skipped_as_the_service_dead_letters_them():
    """The service's bound on keys opened by labels alone, with the same counts."""
    import tomllib

    from stream_learner.core.events import Event, Label

    data = tomllib.loads(CONFIG)
    data["service"]["label_max_unseen_keys"] = 2
    config = parse_config(data, env={})
    history = [
        Label("l0", "u0", True),
        Label("l1", "u1", True),
        Label("l2", "u2", True),  # a third unseen key: refused
        Event("l0", "u0", {"a": 1.0}),  # u0 is seen now, so one more key may wait
        Label("l3", "u3", True),
        Label("l4", "u4", True),  # refused
        Label("l5", "u1", False),  # u1 has its learner already
    ]
    made: list = []
    (report,) = replay(history, config, [resolve_policy("never")], learners=made)
    assert report.rejected == 2
    assert set(made[0]) == {"u0", "u1", "u3"}
    assert made[0]["u0"].evaluator.n == 1  # its parked label joined its event
