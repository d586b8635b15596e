"""Static group membership ids: claimed per instance slot, persisted, freed by any exit."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from stream_learner.cli.service_cmd import group_identity
from stream_learner.config import KafkaSettings
from stream_learner.errors import ConfigError
from stream_learner.kafka.identity import claim_instance_id


def test_side_by_side_instances_get_distinct_ids_and_a_restart_gets_its_own_back(tmp_path):
    first = claim_instance_id("g", tmp_path)
    second = claim_instance_id("g", tmp_path)
    other_group = claim_instance_id("h", tmp_path)
    assert len({first.id, second.id, other_group.id}) == 3
    first.release()
    assert claim_instance_id("g", tmp_path).id == first.id  # the freed slot, its id kept


def test_a_killed_instance_frees_its_slot_for_the_next(tmp_path):
    code = (
        "import sys, time\n"
        "from stream_learner.kafka.identity import claim_instance_id\n"
        f"print(claim_instance_id('g', {str(tmp_path)!r}).id, flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        held = child.stdout.readline().strip()
        assert held and claim_instance_id("g", tmp_path).id != held  # held while alive
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
    assert claim_instance_id("g", tmp_path).id == held


def test_the_configured_id_wins_and_an_empty_one_means_dynamic_membership(tmp_path):
    base = {"instance_dir": str(tmp_path)}
    explicit = KafkaSettings(client={"group.instance.id": "pod-1"}, **base)
    assert group_identity(explicit).id == "pod-1"
    assert group_identity(KafkaSettings(instance_id="pod-2", **base)).id == "pod-2"
    assert group_identity(KafkaSettings(instance_id="", **base)) is None
    auto = group_identity(KafkaSettings(**base))
    assert auto.path is not None and auto.path.parent == tmp_path


def test_an_unusable_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="instance_dir"):
        claim_instance_id("g", blocker / "sub")


@pytest.mark.kafka
def test_a_consumer_fenced_by_its_own_static_id_stops_with_a_broker_error(
    bootstrap, topic_factory, unique_name
):
    """Two members with one group.instance.id: the broker fences the older, a fatal error
    for it. The source must raise it, so the service exits (and a supervisor restarts it
    from its checkpoints) instead of running on without consuming."""
    import contextlib
    import time

    from confluent_kafka import Consumer

    from stream_learner.errors import BrokerError
    from stream_learner.kafka.client import client_config
    from stream_learner.kafka.source import KafkaSource

    topic, group = topic_factory("fenced"), unique_name("group")
    source = KafkaSource(bootstrap, group, [topic], extra={"group.instance.id": "same"})
    source.start()
    rival = Consumer(client_config(bootstrap, {"group.id": group, "group.instance.id": "same"}))
    try:
        deadline = time.monotonic() + 30
        while not source.assignment and time.monotonic() < deadline:
            source.poll(10, 0.2)
        assert source.assignment, "never assigned"
        rival.subscribe([topic])
        with pytest.raises(BrokerError, match="fatal"):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rival.poll(0.1)
                source.poll(10, 0.2)
    finally:
        rival.close()
        with contextlib.suppress(Exception):  # closing a fenced consumer may complain
            source.close()
