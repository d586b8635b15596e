"""docker-compose.kafka.yml is valid Compose and its Kafka is reachable where we look.

No Docker engine is needed: the file is parsed and checked structurally here, and
``docker compose config -q`` runs too when the Compose plugin is installed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stream_learner.kafka.client import DEFAULT_LOCAL_PORT, LOCAL_HOST
from stream_learner.kafka.local.broker import kafka_version

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.kafka.yml"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
_PORT = re.compile(r"^(?:(?P<ip>[\d.]+):)?(?P<host>\d+):(?P<container>\d+)(?:/(?:tcp|udp))?$")
_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def _interpolate(text: str) -> str:
    """Compose's ``${VAR:-default}`` with every variable unset: the defaults users get."""

    def default(match: re.Match[str]) -> str:
        if match.group(2) is None:
            raise AssertionError(f"{match.group(0)} has no default: the file needs an env var")
        return match.group(2)

    return _VARIABLE.sub(default, text)


@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(_interpolate(COMPOSE.read_text()))
    assert isinstance(doc, dict)
    return doc


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` → {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_top_level_is_compose(compose):
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    assert isinstance(compose["services"], dict) and compose["services"]
    for name, service in compose["services"].items():
        assert re.match(r"^[a-zA-Z0-9._-]+$", name)
        assert isinstance(service, dict)
        assert "image" in service or "build" in service, f"{name}: needs an image or a build"


def test_ports_are_quoted_strings(compose):
    # Unquoted "39092:39092" is a YAML 1.1 base-60 integer to some parsers.
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: port {port!r} must be a quoted string"
            assert _PORT.match(port), f"{name}: {port!r} is not [IP:]HOST:CONTAINER"


def test_environment_values_are_strings(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert isinstance(value, str), f"{name}: {key} must be a quoted string"


def test_volumes_are_declared_or_exist(compose):
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/", "~")):
                assert (COMPOSE.parent / source).exists(), f"{name}: bind mount {source} missing"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"


def test_healthchecks_are_well_formed(compose):
    kafka = compose["services"]["kafka"]
    assert "healthcheck" in kafka
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        if check is None:
            continue
        test = check["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        for key in ("interval", "timeout", "start_period"):
            if key in check:
                assert _DURATION.match(str(check[key])), f"{name}: {key}={check[key]!r}"
        assert isinstance(check.get("retries", 1), int)


def test_depends_on_names_services(compose):
    services = compose["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_only_kafka_starts_by_default(compose):
    for name, service in compose["services"].items():
        if name != "kafka":
            assert service.get("profiles") == ["observability"], f"{name} must be opt-in"


def test_kafka_is_the_same_version_as_the_local_broker(compose):
    image, _, tag = compose["services"]["kafka"]["image"].partition(":")
    assert image == "apache/kafka"
    assert tag == kafka_version() and tag.split(".")[0] == "4"


def test_kafka_listeners_match_the_published_port(compose):
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # single-node KRaft
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]

    assert set(listeners) <= set(protocols)
    assert set(advertised) <= set(listeners)
    assert controller in listeners and controller not in advertised
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == env["KAFKA_NODE_ID"]
    assert voter == f"{kafka['hostname']}:{listeners[controller][1]}"

    published = {}
    for port in kafka["ports"]:
        match = _PORT.match(port)
        assert match
        published[int(match["host"])] = int(match["container"])
    host_facing = {n: a for n, a in advertised.items() if a[0] in ("127.0.0.1", "localhost")}
    assert host_facing, "no listener is advertised to host clients"
    for name, (_host, port) in host_facing.items():
        # A host client dials the advertised port; Docker must forward it to this listener.
        assert published.get(port) == listeners[name][1], f"{name}: {port} is not published"
    for name, (host, port) in advertised.items():
        if name not in host_facing:  # other containers reach the broker by service name
            assert host == kafka["hostname"] and port == listeners[name][1]
    # With no env, stream-learner looks exactly where this broker is advertised.
    assert (LOCAL_HOST, DEFAULT_LOCAL_PORT) in host_facing.values()


def test_cluster_id_is_a_kafka_uuid(compose):
    import base64

    cluster_id = compose["services"]["kafka"]["environment"]["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
