from __future__ import annotations

import http.client
import logging
from urllib.parse import urlsplit

import orjson
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter

from stream_learner.http import HealthServer


def get(base_url: str, path: str) -> tuple[int, str, bytes]:
    """GET without urllib, so no proxy setting of the environment gets in the way."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


class Readiness:
    """A switchable ready() callable, as the service will provide."""

    def __init__(self) -> None:
        self.state = (False, "no partitions assigned")
        self.calls = 0

    def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        return self.state


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("stream_learner_test_events", "test counter", registry=registry).inc(3)
    return registry


def test_metrics_endpoint_serves_the_registry(registry) -> None:
    with HealthServer(registry, ready=Readiness()) as server:
        status, content_type, body = get(server.url, "/metrics")
        assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
        assert b"stream_learner_test_events_total 3.0" in body
        assert get(server.url, "/metrics?name[]=x")[0] == 200  # query strings are ignored


def test_healthz_and_unknown_paths(registry) -> None:
    with HealthServer(registry, ready=Readiness()) as server:
        assert get(server.url, "/healthz")[::2] == (200, b"ok\n")
        assert get(server.url, "/nope")[0] == 404
        assert get(server.url, "/")[0] == 404


def test_readyz_follows_the_callable(registry) -> None:
    ready = Readiness()
    with HealthServer(registry, ready=ready) as server:
        status, content_type, body = get(server.url, "/readyz")
        assert (status, content_type) == (503, "application/json")
        assert orjson.loads(body) == {"ready": False, "reason": "no partitions assigned"}
        ready.state = (True, "caught up on 3 partitions")
        status, _, body = get(server.url, "/readyz")
        assert status == 200
        assert orjson.loads(body) == {"ready": True, "reason": "caught up on 3 partitions"}
    assert ready.calls == 2


def test_readyz_is_503_when_the_check_raises(registry, caplog) -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("boom")

    with HealthServer(registry, ready=broken) as server:
        status, _, body = get(server.url, "/readyz")
    assert status == 503
    assert orjson.loads(body) == {"ready": False, "reason": "readiness check failed: RuntimeError"}
    assert any(r.exc_info and r.name == "stream_learner.http" for r in caplog.records)


def test_binds_loopback_on_a_free_port(registry) -> None:
    with HealthServer(registry, ready=Readiness()) as server:
        parts = urlsplit(server.url)
        assert parts.hostname == "127.0.0.1"
        assert parts.port and parts.port > 0


def test_stop_releases_the_port_and_joins_the_thread(registry) -> None:
    server = HealthServer(registry, ready=Readiness()).start()
    url, thread = server.url, server._thread
    assert thread is not None and thread.daemon and thread.is_alive()
    server.stop()
    assert not thread.is_alive()
    with pytest.raises(ConnectionError):
        get(url, "/healthz")
    server.stop()  # a second stop is harmless


def test_lifecycle_misuse(registry) -> None:
    server = HealthServer(registry, ready=Readiness())
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    server.stop()  # stopping a server never started is harmless
    with server, pytest.raises(RuntimeError, match="already started"):
        server.start()


def test_requests_are_logged_at_debug_not_on_stderr(registry, capsys, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="stream_learner.http")
    with HealthServer(registry, ready=Readiness()) as server:
        get(server.url, "/healthz")
    assert capsys.readouterr().err == ""
    requests = [r for r in caplog.records if "GET /healthz" in r.getMessage()]
    assert requests and all(r.levelno == logging.DEBUG for r in requests)
