"""``replay --from-checkpoint`` and ``replay --rebuild [--publish]`` against snapshots a real
service wrote on the real broker, and a running service adopting a rebuilt lineage."""

from __future__ import annotations

import signal
import tomllib

import orjson
import pytest

import tests.cli.test_checkpoints_cmd as checkpoints_tests
from stream_learner.cli import main
from stream_learner.config import load_config
from stream_learner.core.learner import Learner
from stream_learner.core.models import ModelSpec
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.retrain import RetrainConfig
from stream_learner.core.snapshot import SnapshotMeta
from stream_learner.kafka.checkpoints import CheckpointStore
from stream_learner.kafka.history import Bound, read_kafka_history
from stream_learner.replay import continued, replay, resolve_policy, restored_learner
from stream_learner.service.runtime import Topics
from tests.core.specs import LINEAR
from tests.service.helpers import ServiceProcess, wait_until

# A service run twice over a drifting stream: snapshots of versions 1 and 2 (lineage A).
two_versions = checkpoints_tests.two_versions
_run_until = checkpoints_tests._run_until

#: A model iteration: another pipeline than the service config's (a new lineage).
MODEL_B = """
[model]
task = "binary"
pipeline = [
  { estimator = "preprocessing.StandardScaler" },
  { estimator = "linear_model.LogisticRegression", params = { l2 = 0.001 } },
]
metrics = ["accuracy"]
seed = 7
"""


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _catalog(config, bootstrap):
    topics = Topics.from_prefix(config.kafka.topic_prefix)
    with open(config.checkpoints.signing_key.removeprefix("file:"), "rb") as fh:
        secret = fh.read().strip()
    store = CheckpointStore(bootstrap, topics.checkpoints, signing_key=secret)
    try:
        return store.read()
    finally:
        store.close()


def _history_after(config, bootstrap, offsets):
    """The config's input topics from a snapshot's offsets on, as the service merged them."""
    topics = Topics.from_prefix(config.kafka.topic_prefix)
    roles = {topics.events: "events", topics.labels: "labels", topics.control: "control"}
    start = Bound(
        "snapshot",
        offsets={(roles[t], int(p)): o for t, parts in offsets.items() for p, o in parts.items()},
    )
    names = {"events": topics.events, "labels": topics.labels, "control": topics.control}
    return read_kafka_history(bootstrap, names, start, task="binary").items


# --------------------------------------------------------------------------- pure


def test_rollback_to_another_lineage_switches_spec_and_refuses_another_task():
    learner = Learner("k", LINEAR)
    other = ModelSpec.from_dict(
        {
            "task": "binary",
            "pipeline": [{"estimator": "tree.HoeffdingTreeClassifier"}],
            "metrics": ["accuracy", "f1"],
        }
    )
    rebuilt = Learner("k", other)
    decision = learner.rollback(rebuilt.model, 5, "rebuilt", spec=other)
    assert (learner.spec, learner.lineage, learner.version) == (other, other.lineage, 2)
    assert decision.code == "lineage_adopted" and other.lineage in decision.reason
    assert decision.values["previous_lineage"] == LINEAR.lineage
    assert learner.adopted_from == LINEAR.lineage  # what a restart compares with the config
    assert set(learner.evaluator.values()) == {"accuracy", "accuracy_rolling", "f1", "f1_rolling"}
    # Same lineage: a plain rollback, as before.
    assert learner.rollback(rebuilt.model, 2, spec=other).code == "rolled_back"
    regression = ModelSpec.from_dict(
        {"task": "regression", "pipeline": [{"estimator": "linear_model.LinearRegression"}]}
    )
    with pytest.raises(ValueError, match="regression"):
        learner.rollback(Learner("k", regression).model, 7, spec=regression)
    assert learner.version == 3 and learner.lineage == other.lineage
    # Back to the lineage it was built with: nothing adopted any more.
    learner.rollback(Learner("k", LINEAR).model, 1, spec=LINEAR)
    assert (learner.lineage, learner.adopted_from) == (LINEAR.lineage, None)


def test_each_policy_continues_its_own_copy_of_the_start():
    from stream_learner.core.events import Event

    base = Learner("k", LINEAR, policy=PolicyConfig(warmup=0, cooldown_events=0))
    for i in range(300):
        base.learn(Event(f"e{i}", "k", {"a": float(i % 7)}, y=i % 7 > 3))
    same = continued(base, resolve_policy("config", config=base.policy.config))
    other = continued(base, resolve_policy("interval:50"))
    assert same.policy is not base.policy and same.policy.labels == 300
    assert other.policy.config.interval_events == 50 and other.policy.labels == 300
    # The schedule starts at the snapshot's position, not at input 0.
    assert other.learn(Event("x", "k", {"a": 1.0}, y=False)).decisions == ()
    assert base.index == 300 and same.index == 300 and other.index == 301


# --------------------------------------------------------------------------- on the broker


@pytest.mark.kafka
def test_from_checkpoint_continues_the_snapshot_as_the_service_did(
    two_versions, bootstrap, tmp_path, capsys
):
    path, config, msgs = two_versions
    catalog = _catalog(config, bootstrap)
    [v1, v2] = catalog.versions("default")
    (_, first), (_, last) = catalog.load("default", 1), catalog.load("default", 2)
    start = restored_learner(first)
    assert 0 < start.learned < last["learner"].learned

    # The core: the replay's learner starts where the snapshot stood and, over the inputs
    # after its offsets with the service's policy, ends where the service ended.
    history = _history_after(config, bootstrap, v1.offsets)
    out = []
    retrain = RetrainConfig.from_dict(config.retrain)
    own = resolve_policy("config", retrain, config=PolicyConfig.from_dict(config.policy))
    replay(
        history, config, [own, resolve_policy("never")], initial={"default": start}, learners=out
    )
    ended = out[0]["default"]
    assert ended.learned == last["learner"].learned
    assert ended.evaluator.n == last["learner"].evaluator.n
    assert ended.evaluator.values() == last["learner"].evaluator.values()
    assert ended.version == v2.model_version
    assert out[1]["default"].learned == ended.learned and out[1]["default"] is not ended
    assert start.learned == first["learner"].learned  # the start itself is never learned on

    # The command: by default, the Kafka range starts after the snapshot's offsets.
    code, out_text, err = _cli(
        capsys,
        "replay",
        "--config",
        str(path),
        "--bootstrap",
        bootstrap,
        "--from-kafka",
        "--from-checkpoint",
        "default:1",
        "--policy",
        "config",
        "--json",
    )
    assert code == 0, err
    assert "starts from version 1" in err
    [report] = orjson.loads(out_text)
    assert report["inputs"] == len(history)
    assert report["metric"] == pytest.approx(last["learner"].evaluator.values()["accuracy"])

    # A file history is replayed whole, from the snapshot's state.
    history_file = tmp_path / "after-v1.jsonl"
    history_file.write_bytes(b"\n".join(orjson.dumps(m.value) for m in msgs[1000:]))
    code, out_text, err = _cli(
        capsys, "replay", "--config", str(path), "--input", str(history_file),
        "--from-checkpoint", "default", "--policy", "never", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "starts from version 2" in err and "replayed whole" in err
    assert orjson.loads(out_text)[0]["inputs"] == len(msgs) - 1000

    # From the start instead (no checkpoint): a different, longer replay.
    code, out_text, err = _cli(
        capsys, "replay", "--config", str(path), "--from-kafka", "--policy", "config", "--json"
    )
    assert code == 0, err
    assert orjson.loads(out_text)[0]["inputs"] > len(history)


@pytest.mark.kafka
def test_rebuild_compares_then_publishes_and_the_running_service_adopts_it(
    two_versions, bootstrap, tmp_path, capsys
):
    path, config, _ = two_versions
    model_file = tmp_path / "model-b.toml"
    model_file.write_text(MODEL_B)
    lineage_b = ModelSpec.from_dict(tomllib.loads(MODEL_B)["model"]).lineage
    lineage_a = ModelSpec.from_dict(config.model).lineage
    assert lineage_a != lineage_b
    rebuild = ["replay", "--config", str(path), "--from-kafka", "--rebuild", "--model"]
    rebuild.append(str(model_file))

    service = ServiceProcess(path, tmp_path / "service.log")
    try:
        wait_until(service.ready, 60, "the service to restore and catch up")
        assert service.sample("stream_learner_model_version", key="default") == 2

        # Without --publish: the comparison, and nothing written.
        code, out, err = _cli(capsys, *rebuild, "--json")
        assert code == 0, err
        body = orjson.loads(out)
        [row] = body["keys"]
        assert body["lineage"] == lineage_b and body["published"] is False
        assert row["current"]["version"] == 2 and row["current"]["lineage"] == lineage_a
        assert row["rebuilt"]["lineage"] == lineage_b and row["rebuilt"]["version"] is None
        assert row["rebuilt"]["labelled"] > 0
        catalog = _catalog(config, bootstrap)
        assert [v.model_version for v in catalog.versions("default")] == [1, 2]

        code, out, err = _cli(capsys, *rebuild, "--publish")
        assert code == 0, err
        assert "published key 'default' version 3" in out
        assert "put the rebuilt [model]" in err  # the config still names lineage A

        code, out, err = _cli(capsys, "checkpoints", "list", "--config", str(path), "--json")
        assert code == 0, err
        # Beside the service's snapshots, not in its slots (the service may have written
        # its own version 3 already: it serves the rebuild as 3 once it adopts it).
        [row3] = [r for r in orjson.loads(out) if r["staged"]]
        assert (row3["version"], row3["lineage"], row3["trigger"], row3["signature"]) == (
            3,
            lineage_b,
            "rebuild",
            "valid",
        )
        code, out, err = _cli(capsys, "checkpoints", "list", "--config", str(path))
        assert code == 0, err
        assert [line.split()[1:3] for line in out.splitlines() if "(staged)" in line] == [
            ["3", "(staged)"]
        ]
        assert "staged: published by 'replay --rebuild --publish'" in out

        # The running service switches without a restart.
        def switched() -> bool:
            return (
                service.sample("stream_learner_model_version", key="default") == 3
                and service.sample("stream_learner_model_info", key="default", lineage=lineage_b)
                == 1
            )

        wait_until(switched, 60, "the service to adopt the rebuilt lineage")
        lines = [orjson.loads(line) for line in service.log_path.read_bytes().splitlines()]
        adopted = [r for r in lines if r.get("event") == "lineage_adopted"]
        assert [(r["lineage"], r["previous_lineage"], r["version"]) for r in adopted] == [
            (lineage_b, lineage_a, 3)
        ]
        decisions = [r for r in lines if r.get("event") == "decision" and r["action"] == "rollback"]
        assert len(decisions) == 1 and decisions[0]["code"] == "lineage_adopted"
        assert lineage_b in decisions[0]["reason"]
    finally:
        service.proc.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0

    # After the switch the service snapshots lineage B itself. A restart whose config still
    # names lineage A (the one B replaced) keeps the adoption ...
    seen = []

    def caught_up(service) -> bool:
        """Ready, with the key's learner as the restore left it kept in ``seen``."""
        seen[:] = [service.learners.get("default")]
        return checkpoints_tests._caught_up(service)

    _run_until(config, bootstrap, caught_up)
    assert (seen[0].lineage, seen[0].version, seen[0].adopted_from) == (lineage_b, 3, lineage_a)
    # ... and so does one whose config names the rebuilt model.
    catalog = _catalog(config, bootstrap)
    newest = max(catalog.versions("default"), key=lambda v: v.position)
    assert (newest.model_version, newest.lineage) == (3, lineage_b)
    assert newest.trigger != "rebuild"  # the service's own snapshot, taken after the switch
    staged = catalog.staged("default")  # left for the next staged publish to replace
    assert (staged.model_version, staged.trigger) == (3, "rebuild")
    text = path.read_text()
    head, _, rest = text.partition("[model]")
    path_b = tmp_path / "config-b.toml"
    path_b.write_text(head + MODEL_B + "\n[learner]" + rest.partition("[learner]")[2])
    config_b = load_config(path_b)
    _run_until(config_b, bootstrap, caught_up)
    assert (seen[0].lineage, seen[0].version, seen[0].adopted_from) == (lineage_b, 3, None)


@pytest.mark.kafka
def test_bad_arguments_end_in_one_line(two_versions, bootstrap, tmp_path, capsys, monkeypatch):
    path, config, _ = two_versions
    typo = tmp_path / "typo.toml"
    typo.write_text(MODEL_B.replace("LogisticRegression", "LogistcRegression"))
    section = tmp_path / "section.toml"
    section.write_text(MODEL_B.replace("[model]", "[modle]"))
    base = ["replay", "--config", str(path), "--from-kafka"]
    cases = [
        (["--from-checkpoint", "nope", "--policy", "never"], "no snapshots of key 'nope'"),
        (["--from-checkpoint", "default:9", "--policy", "never"], "has no version 9"),
        (["--from-checkpoint", "all", "--from-checkpoint", "x", "--policy", "never"], "alone"),
        (["--publish", "--policy", "never"], "--publish: only with --rebuild"),
        (["--model", str(typo), "--policy", "never"], "--model: only with --rebuild"),
        (["--rebuild", "--model", str(typo)], "did you mean 'linear_model.LogisticRegression'"),
        (["--rebuild", "--model", str(section)], "modle: unknown section"),
        (["--rebuild", "--model", str(tmp_path / "missing.toml")], "does not exist"),
        (["--rebuild"], "already serve(s) lineage"),  # the config's [model] did not change
        (["--rebuild", "--policy", "never"], "--policy: not with --rebuild"),
        ([], "--policy: give at least one policy"),
    ]
    for argv, expected in cases:
        code, out, err = _cli(capsys, *base, *argv)
        assert code == 2 and err.count("\n") == 1 and expected in err, (argv, err)

    # No key to verify with: nothing is unpickled.
    unkeyed = tmp_path / "unkeyed.toml"
    unkeyed.write_text(
        "\n".join(line for line in path.read_text().splitlines() if "signing_key" not in line)
    )
    monkeypatch.delenv("STREAM_LEARNER_SNAPSHOT_KEY", raising=False)
    monkeypatch.delenv("STREAM_LEARNER_SNAPSHOT_KEY_FILE", raising=False)
    unverified = ["replay", "--config", str(unkeyed), "--from-kafka", "--policy", "never"]
    code, _, err = _cli(capsys, *unverified, "--from-checkpoint", "default")
    assert code == 2 and err.count("\n") == 1 and "cannot be verified" in err, err

    # A tampered snapshot (signed with another key) is refused, not unpickled.
    catalog = _catalog(config, bootstrap)
    topics = Topics.from_prefix(config.kafka.topic_prefix)
    forger = CheckpointStore(bootstrap, topics.checkpoints, signing_key=b"not the key, but long")
    try:
        state = catalog.load("default", 2)[1]
        forger.publish(state, SnapshotMeta("default", "forged", 7, "forged"))
    finally:
        forger.close()
    code, _, err = _cli(capsys, *base, "--from-checkpoint", "default:7", "--policy", "never")
    assert code == 2 and err.count("\n") == 1, err
    assert "version 7 of key 'default' is not restorable (bad_signature)" in err
    # ... while the others still verify.
    code, _, err = _cli(capsys, *base, "--from-checkpoint", "default:2", "--policy", "never")
    assert code == 0, err
