"""``stream-learner checkpoints`` against snapshots a real service wrote on the real broker."""

from __future__ import annotations

import pickle
import time

import orjson
import pytest

from stream_learner.cli import main
from stream_learner.cli.service_cmd import build_service
from stream_learner.config import load_config
from stream_learner.core.commands import decode_command
from stream_learner.synth import demo_messages
from tests.conftest import drain
from tests.service.helpers import produce, run_in_thread, wait_until, write_config

pytestmark = pytest.mark.kafka


def _run_until(config, bootstrap, ready):
    built = build_service(config, bootstrap, http_port=0)
    stop, thread, errors = run_in_thread(built.service)
    try:
        wait_until(lambda: ready(built.service), 60, "the service")
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    return built.service


def _caught_up(service) -> bool:
    return service.readiness()[0]


@pytest.fixture
def two_versions(bootstrap, service_topics, prefix, tmp_path):
    """A service run twice over a stream with a drift: snapshots of versions 1 and 2."""
    msgs = list(demo_messages(4000, change_at=2000, seed=5, t0=time.time() - 8000))
    path = write_config(tmp_path, bootstrap, prefix)
    config = load_config(path)
    produce(bootstrap, prefix, msgs[:1000])
    _run_until(config, bootstrap, _caught_up)  # shutdown snapshot: version 1
    produce(bootstrap, prefix, msgs[1000:])
    service = _run_until(config, bootstrap, _caught_up)  # a promoted retrain: version 2
    assert [v.model_version for v in service.store.read().versions("default")] == [1, 2]
    return path, config, msgs


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["checkpoints", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_show_export_and_rollback(two_versions, bootstrap, service_topics, tmp_path, capsys):
    path, config, msgs = two_versions
    where = ["--config", str(path), "--bootstrap", bootstrap]

    code, out, err = _cli(capsys, "list", *where, "--json")
    assert code == 0, err
    rows = orjson.loads(out)
    assert [(r["key"], r["version"], r["signature"]) for r in rows] == [
        ("default", 1, "valid"),
        ("default", 2, "valid"),
    ]
    assert all(r["size"] > 0 and r["offsets"] and r["created"] for r in rows)

    code, out, err = _cli(capsys, "list", *where)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["key", "version"]
    assert [line.split()[:2] for line in lines[1:]] == [["default", "1"], ["default", "2"]]
    assert all(line.rstrip().endswith("valid") for line in lines[1:])

    code, out, err = _cli(capsys, "show", *where, "--key", "default", "--version", "1")
    assert code == 0, err
    header = orjson.loads(out)
    assert header["model_version"] == 1 and header["key"] == "default"
    assert header["signature"] and header["signature_status"] == "valid"

    model_file = tmp_path / "model-v2.pkl"
    code, out, err = _cli(
        capsys, "export", *where, "--key", "default", "--version", "2", "--out", str(model_file)
    )
    assert code == 0, err
    assert str(model_file) in out
    model = pickle.loads(model_file.read_bytes())
    x = next(m.value["x"] for m in msgs if m.topic == "events")
    assert model.predict_one(x) in (0, 1, True, False)

    code, out, err = _cli(
        capsys, "rollback", *where, "--key", "default", "--version", "1", "--reason", "bad release"
    )
    assert code == 0, err
    assert "version 1" in out
    sent = [decode_command(m.value()) for m in drain(bootstrap, service_topics.control)]
    assert [(c.command, c.key, c.version, c.reason) for c in sent] == [
        ("rollback", "default", 1, "bad release")
    ]

    # A service (restored at version 2) reads the command and serves version 1 as version 3.
    seen = []

    def rolled_back(service) -> bool:
        learner = service.learners.get("default")
        seen[:] = [learner]
        return learner is not None and learner.version == 3

    _run_until(config, bootstrap, rolled_back)
    decisions = [d for d in seen[0].decisions if d.action == "rollback"]
    assert len(decisions) == 1 and decisions[0].values["restored_version"] == 1
    assert "bad release" in decisions[0].reason


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["list", "--key", "nope"], "no snapshots of key 'nope'"),
        (["show", "--key", "nope"], "no snapshots of key 'nope'"),
        (["rollback", "--key", "default", "--version", "99"], "has no version 99"),
        (["export", "--key", "default", "--version", "99", "--out", "OUT"], "has no version 99"),
        (
            ["export", "--key", "default", "--version", "1", "--out", "/no/such/dir/m.pkl"],
            "does not exist",
        ),
    ],
)
def test_bad_arguments_end_in_one_line(two_versions, bootstrap, capsys, tmp_path, argv, expected):
    path, _, _ = two_versions
    argv = [a.replace("OUT", str(tmp_path / "m.pkl")) for a in argv]
    code, out, err = _cli(capsys, *argv, "--config", str(path), "--bootstrap", bootstrap)
    assert code != 0
    assert err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "m.pkl").exists()


def test_no_checkpoints_topic_is_one_line(bootstrap, prefix, capsys):
    code, _, err = _cli(capsys, "list", "--prefix", prefix, "--bootstrap", bootstrap)
    assert code != 0
    assert err.count("\n") == 1 and "does not exist" in err, err


def test_without_a_signing_key_list_is_unverified_and_export_refused(
    two_versions, bootstrap, prefix, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("STREAM_LEARNER_SNAPSHOT_KEY", raising=False)
    monkeypatch.delenv("STREAM_LEARNER_SNAPSHOT_KEY_FILE", raising=False)
    where = ["--prefix", prefix, "--bootstrap", bootstrap]
    code, out, err = _cli(capsys, "list", *where, "--json")
    assert code == 0, err
    assert {r["signature"] for r in orjson.loads(out.split("\n(")[0])} == {"unverified"}
    out_file = tmp_path / "m.pkl"
    code, _, err = _cli(
        capsys, "export", *where, "--key", "default", "--version", "1", "--out", str(out_file)
    )
    assert code != 0 and err.count("\n") == 1 and "cannot be verified" in err, err
    assert not out_file.exists()
