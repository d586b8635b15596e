"""The service's HTTP face: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

The standard library's threaded server is enough for a scrape every few seconds and a probe
per second; it runs in a daemon thread so it can never keep a stopping process alive.

- ``/healthz`` answers 200 as long as the process can serve a request at all (liveness).
- ``/readyz`` asks the service's ``ready()`` callable: 200 when it returns ``(True, reason)``,
  503 otherwise, with ``{"ready": bool, "reason": str}`` as the body either way. A ``ready()``
  that raises counts as not ready, so a broken check takes the instance out of rotation rather
  than crashing the server.
- Nothing is bound until :meth:`HealthServer.start`; the default host is loopback, so exposing
  metrics beyond the machine is a deliberate choice.
- Request logs go to the ``stream_learner.http`` logger at DEBUG, never straight to stderr.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "ReadyCheck"]

logger = logging.getLogger("stream_learner.http")

ReadyCheck = Callable[[], tuple[bool, str]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, ready: ReadyCheck):
        self.registry = registry
        self.ready = ready
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "stream-learner"

    def do_GET(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(self.server.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            ready, reason = self._readiness()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            body = orjson.dumps({"ready": ready, "reason": reason})
            self._send(status, body, "application/json")
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _readiness(self) -> tuple[bool, str]:
        try:
            ready, reason = self.server.ready()
        except Exception as exc:
            logger.exception("readiness check failed")
            return False, f"readiness check failed: {type(exc).__name__}"
        return bool(ready), str(reason)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        logger.debug("%s " + format, self.address_string(), *args)


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from a background thread.

    Parameters
    ----------
    registry
        The registry whose metrics ``/metrics`` exposes (``ServiceMetrics.registry``).
    host, port
        Where to listen; ``port=0`` lets the OS pick a free port (read it back from ``.url``).
    ready
        Called on every ``/readyz``; returns ``(ready, reason)``.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ready: ReadyCheck,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.ready = ready
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43121``; known only once started."""
        if self._server is None:
            raise RuntimeError("HealthServer is not started")
        host, port = self._server.server_address[:2]
        if ":" in str(host):
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def start(self) -> HealthServer:
        if self._server is not None:
            raise RuntimeError("HealthServer is already started")
        server = _Server((self.host, self.port), self.registry, self.ready)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="stream-learner-http",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        logger.debug("health server listening on %s", self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and release the port; a no-op when not started."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.server_close()
        thread.join(timeout)

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
