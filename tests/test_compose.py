"""docker-compose.kafka.yml is valid Compose, its Kafka is reachable where we look, and the
stack's pieces point at each other: every mounted file exists, every port lines up.

No Docker engine is needed: the file is parsed and checked structurally here, and
``docker compose config -q`` runs too when the Compose plugin is installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from stream_learner.cli.service_cmd import core_factory
from stream_learner.config import load_config
from stream_learner.kafka.client import DEFAULT_LOCAL_PORT, LOCAL_HOST
from stream_learner.kafka.local.broker import kafka_version
from stream_learner.kafka.topics import load_topics

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.kafka.yml"
DOCKERFILE = ROOT / "Dockerfile"
STACK = {"kafka", "topics", "service", "demo-producer", "prometheus", "grafana"}
BUILT_FROM_DOCKERFILE = {"topics", "service", "demo-producer"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")
_PORT = re.compile(r"^(?:(?P<ip>[\d.]+):)?(?P<host>\d+):(?P<container>\d+)(?:/(?:tcp|udp))?$")
_DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")
_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


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


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` → {NAME: (host, port)}."""
    out = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def _published(service: dict) -> dict[int, int]:
    """Container port → host port of every published port."""
    out = {}
    for port in service.get("ports", []):
        match = _PORT.match(port)
        assert match, port
        out[int(match["container"])] = int(match["host"])
    return out


def _binds(service: dict) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of every bind mount."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((COMPOSE.parent / source).resolve(), PurePosixPath(target)))
    return out


def _host_path(service: dict, container_path: str) -> Path:
    """The repository file a container sees at ``container_path`` (via its bind mounts)."""
    wanted = PurePosixPath(container_path)
    for host, target in sorted(_binds(service), key=lambda b: -len(b[1].parts)):
        if wanted == target or target in wanted.parents:
            return host.joinpath(*wanted.relative_to(target).parts)
    raise AssertionError(f"{container_path} is not mounted from the repository")


def _in_network_bootstrap(services: dict) -> str:
    kafka = services["kafka"]
    advertised = _listeners(kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"])
    inside = [f"{h}:{p}" for h, p in advertised.values() if h == kafka["hostname"]]
    assert len(inside) == 1, "exactly one listener must be advertised to other containers"
    return inside[0]


def _service_config(services: dict):
    """The service's config as the container runs it: the mounted file plus its environment."""
    service = services["service"]
    command = service["command"]
    path = _host_path(service, command[command.index("--config") + 1])
    assert path.is_file(), f"{path} (the service's --config) does not exist"
    return load_config(path, env=service.get("environment") or {})


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def test_top_level_is_compose(compose):
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    assert isinstance(compose["services"], dict) and compose["services"]
    for name, service in compose["services"].items():
        assert re.match(r"^[a-zA-Z0-9._-]+$", name)
        assert isinstance(service, dict)
        assert "image" in service or "build" in service, f"{name}: needs an image or a build"


def test_the_whole_stack_is_there(services):
    assert set(services) == STACK


def test_ports_are_quoted_strings(compose):
    # Unquoted "39092:39092" is a YAML 1.1 base-60 integer to some parsers.
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str), f"{name}: port {port!r} must be a quoted string"
            assert _PORT.match(port), f"{name}: {port!r} is not [IP:]HOST:CONTAINER"


def test_ports_are_loopback_only_and_unique(services):
    # Nothing in this stack has authentication: publish to the host's loopback only.
    seen: dict[int, str] = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            match = _PORT.match(port)
            assert match and match["ip"] == "127.0.0.1", f"{name}: {port} must bind 127.0.0.1"
            host = int(match["host"])
            assert host not in seen, f"{name} and {seen.get(host)} both publish {host}"
            seen[host] = name


def test_environment_values_are_strings(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            assert isinstance(value, str), f"{name}: {key} must be a quoted string"


def test_volumes_are_declared_or_exist(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/", "~")):
                assert (COMPOSE.parent / source).exists(), f"{name}: bind mount {source} missing"
                assert (COMPOSE.parent / source).resolve().is_relative_to(ROOT), name
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


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


def test_depends_on_names_services_with_valid_conditions(compose):
    services = compose["services"]
    for name, service in services.items():
        depends = service.get("depends_on", [])
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dependency, how in depends.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = how["condition"]
            assert condition in _CONDITIONS, f"{name} -> {dependency}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", f"{dependency} is one-shot"
            # Without Docker, a profile-less service cannot wait for an opt-in one.
            assert set(services[dependency].get("profiles", [])) <= set(
                service.get("profiles", [])
            ), f"{name} depends on {dependency}, which is in another profile"


def test_only_kafka_starts_by_default(compose):
    for name, service in compose["services"].items():
        if name != "kafka":
            assert service.get("profiles") == ["stack"], f"{name} must be opt-in"


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


# -- the stream-learner containers -----------------------------------------------------------


def test_stream_learner_containers_use_the_image_and_the_in_network_broker(services):
    bootstrap = _in_network_bootstrap(services)
    images = {services[name]["image"] for name in BUILT_FROM_DOCKERFILE}
    assert len(images) == 1, "topics, service and demo-producer must run the same image"
    for name in BUILT_FROM_DOCKERFILE:
        service = services[name]
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (COMPOSE.parent / context / dockerfile).resolve() == DOCKERFILE, name
        assert service["environment"]["STREAM_LEARNER_BOOTSTRAP"] == bootstrap, name
        assert isinstance(service["command"], list), f"{name}: command as an exec list"
        depends = service["depends_on"]
        assert "kafka" in depends or "topics" in depends, f"{name} must wait for the broker"


def test_topics_job_applies_the_topics_the_service_reads(services):
    topics = services["topics"]
    assert topics["command"][:2] == ["topics", "apply"]
    assert topics["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "--prefix" not in topics["command"] and "--file" not in topics["command"]
    # Without --prefix the job uses topics/topics.toml's prefix; the service must read those.
    spec = load_topics(ROOT / "topics" / "topics.toml")
    config = _service_config(services)
    names = {spec.physical(t.name) for t in spec.topics}
    for logical in ("events", "labels", "control", "predictions", "dead-letters", "checkpoints"):
        assert config.kafka.topic(logical) in names, f"the service's {logical} topic is not applied"
    assert services["service"]["depends_on"]["topics"]["condition"] == (
        "service_completed_successfully"
    )


def test_service_config_is_valid_and_its_metrics_port_is_published(services):
    config = _service_config(services)
    core_factory(config)  # the model, learner, policy and retrain sections as the core sees them
    assert config.service.http_host == "0.0.0.0", "metrics must be reachable from Prometheus"
    port = config.service.http_port
    assert _published(services["service"]).get(port) == port
    check = " ".join(services["service"]["healthcheck"]["test"])
    assert f":{port}/healthz" in check


def test_demo_producer_runs_after_the_service_is_up(services):
    producer = services["demo-producer"]
    assert producer["command"][0] == "demo-produce"
    assert producer["depends_on"]["service"]["condition"] == "service_healthy"
    assert producer["restart"] == "no"


def test_dockerfile_runs_the_cli_as_a_non_root_user_on_the_metrics_port(services):
    lines = _dockerfile()
    assert lines[0] == ("FROM", "python:3.11-slim")
    entrypoints = [args for ins, args in lines if ins == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["stream-learner"]
    users = [args for ins, args in lines if ins == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container must not run as root"
    exposed = {int(p.split("/")[0]) for ins, args in lines if ins == "EXPOSE" for p in args.split()}
    assert _service_config(services).service.http_port in exposed
    # The image needs the topics file (topics apply reads ./topics/topics.toml) and examples/.
    copied = " ".join(args for ins, args in lines if ins == "COPY")
    for needed in ("pyproject.toml", "stream_learner", "topics", "examples"):
        assert needed in copied, f"the image lacks {needed}"


def test_dockerignore_keeps_what_the_image_needs():
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("pyproject.toml", "README.md", "stream_learner", "topics", "examples"):
        assert needed not in ignored
    assert {".git", ".venv"} <= ignored


# -- Prometheus and Grafana ------------------------------------------------------------------


def _prometheus_config(services) -> tuple[dict, Path]:
    prometheus = services["prometheus"]
    command = prometheus.get("command") or []
    flags = dict(a.split("=", 1) for a in command if a.startswith("--") and "=" in a)
    # The prom/prometheus image's default: --config.file=/etc/prometheus/prometheus.yml.
    path = _host_path(prometheus, flags.get("--config.file", "/etc/prometheus/prometheus.yml"))
    assert path.is_file(), f"{path} (Prometheus's config) does not exist"
    return yaml.safe_load(path.read_text()), path


def test_prometheus_scrapes_the_service_and_loads_the_alerts(services):
    config, path = _prometheus_config(services)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["stream-learner"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    port = _service_config(services).service.http_port
    assert targets == [f"service:{port}"]
    assert "service" in services
    rules = [path.parent / f for f in config["rule_files"]]
    assert rules and all(f.is_file() for f in rules), rules
    assert path.parent / "alerts.yml" in rules
    alerts = (path.parent / "alerts.yml").read_text()
    assert 'job="stream-learner"' in alerts  # the rules name this job


def test_grafana_datasource_is_the_prometheus_service(services):
    grafana = services["grafana"]
    folder = _host_path(grafana, "/etc/grafana/provisioning/datasources")
    files = sorted(folder.glob("*.yml"))
    assert files, "no data source is provisioned"
    sources = [s for f in files for s in yaml.safe_load(f.read_text())["datasources"]]
    assert [s["type"] for s in sources] == ["prometheus"]
    url = urlsplit(sources[0]["url"])
    assert url.hostname in services, f"{url.hostname} is not a compose service"
    assert url.hostname == "prometheus"
    assert url.port in _published(services["prometheus"]), "not the port Prometheus listens on"
    assert sources[0]["isDefault"] is True
    config, _ = _prometheus_config(services)
    # $__rate_interval is only right when Grafana knows the scrape interval.
    assert sources[0]["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    assert "prometheus" in [d if isinstance(d, str) else d for d in grafana["depends_on"]]


def test_grafana_provisions_the_dashboard_file(services):
    grafana = services["grafana"]
    folder = _host_path(grafana, "/etc/grafana/provisioning/dashboards")
    files = sorted(folder.glob("*.yml"))
    assert files, "no dashboard provider is provisioned"
    providers = [p for f in files for p in yaml.safe_load(f.read_text())["providers"]]
    assert [p["type"] for p in providers] == ["file"]
    directory = providers[0]["options"]["path"]
    mounted = [
        host
        for host, target in _binds(grafana)
        if str(target.parent) == directory and target.suffix == ".json"
    ]
    assert mounted == [ROOT / "deploy" / "grafana" / "stream-learner.json"]
    home = grafana["environment"].get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert _host_path(grafana, home) == mounted[0]
