"""``replay --rebuild --publish`` against a running service that checkpoints the same key
between the publish and the rollback command: the rebuild is staged beside the service's
slots, so the service's own checkpoint (with its cached view of the slots) cannot take it."""

from __future__ import annotations

import signal
import time
import tomllib

import orjson
import pytest

from stream_learner.cli import main, replay_cmd
from stream_learner.cli.checkpoints_cmd import Context
from stream_learner.core.commands import Command
from stream_learner.core.models import ModelSpec
from stream_learner.synth import demo_messages
from tests.cli.test_replay_checkpoint import MODEL_B
from tests.service.helpers import ServiceProcess, produce, wait_until, write_config

pytestmark = pytest.mark.kafka


def _log(service: ServiceProcess, event: str) -> list[dict]:
    lines = (orjson.loads(line) for line in service.log_path.read_bytes().splitlines())
    return [r for r in lines if r.get("event") == event]


def test_a_checkpoint_before_the_rollback_command_does_not_lose_the_rebuild(
    bootstrap, service_topics, prefix, tmp_path, capsys, monkeypatch
):
    path = write_config(tmp_path, bootstrap, prefix)
    produce(bootstrap, prefix, demo_messages(1000, seed=5, t0=time.time() - 2000))
    model_file = tmp_path / "model-b.toml"
    model_file.write_text(MODEL_B)
    lineage_b = ModelSpec.from_dict(tomllib.loads(MODEL_B)["model"]).lineage

    service = ServiceProcess(path, tmp_path / "service.log")
    try:
        wait_until(service.ready, 60, "the service to catch up")

        def checkpoints() -> list[dict]:
            return [r for r in _log(service, "checkpoint") if r["key"] == "default"]

        def snapshot_now(ctx: Context) -> None:
            before = len(checkpoints())
            Context.send(ctx, Command("snapshot", key="default", requested_by="test"))
            wait_until(lambda: len(checkpoints()) > before, 60, "the service's checkpoint")

        # The key's first snapshot, so the rebuild has one to replace; from here on the
        # service writes with its own cached view of the key's slots.
        snapshot_now(Context(config_path=str(path), bootstrap=bootstrap))

        class CheckpointFirst(Context):
            """The CLI's context, with the race made deterministic: the service writes a
            checkpoint of the key after the publish and before the rollback command."""

            def send(self, cmd: Command) -> str:
                if cmd.command == "rollback":
                    snapshot_now(self)
                return super().send(cmd)

        monkeypatch.setattr(replay_cmd, "Context", CheckpointFirst)
        code = main(
            ["replay", "--config", str(path), "--from-kafka", "--rebuild", "--model"]
            + [str(model_file), "--publish"]
        )
        out, err = capsys.readouterr()
        assert code == 0, err
        assert "published key 'default' version 2" in out
        first, between = checkpoints()
        assert first["version"] == between["version"] == 1  # not the published version

        def answered() -> bool:
            return bool(_log(service, "lineage_adopted") or _log(service, "rollback_failed"))

        wait_until(answered, 60, "the service to apply the rollback command")
        assert _log(service, "rollback_failed") == []
        [adopted] = _log(service, "lineage_adopted")
        assert (adopted["lineage"], adopted["from_version"]) == (lineage_b, 2)
    finally:
        service.proc.send_signal(signal.SIGTERM)
        assert service.wait(60) == 0
