"""Where Kafka is and how to talk to it: bootstrap resolution and client settings.

Every command that talks to Kafka takes its bootstrap address from, in order:
an explicit ``--bootstrap``, the ``STREAM_LEARNER_BOOTSTRAP`` environment
variable, or the project's own local broker (``stream-learner kafka up``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from stream_learner.errors import BrokerError
from stream_learner.kafka.health import TransientFilter

BOOTSTRAP_ENV = "STREAM_LEARNER_BOOTSTRAP"
LOCAL_HOST = "127.0.0.1"
LOCAL_PORT_ENV = "STREAM_LEARNER_KAFKA_PORT"
DEFAULT_LOCAL_PORT = 39092

# librdkafka logs every failed connection attempt; route them through logging so
# the CLI stays quiet unless asked (``-v``) and tests are not flooded.
_RDKAFKA_LOGGER = logging.getLogger("stream_learner.librdkafka")
_RDKAFKA_LOGGER.addFilter(TransientFilter())  # a refused connection is retried: a WARNING


def local_port() -> int:
    raw = os.environ.get(LOCAL_PORT_ENV, str(DEFAULT_LOCAL_PORT))
    try:
        port = int(raw)
    except ValueError:
        raise BrokerError(f"{LOCAL_PORT_ENV}={raw!r} is not a port number") from None
    if not 1024 <= port <= 65534:
        raise BrokerError(f"{LOCAL_PORT_ENV}={port} must be between 1024 and 65534")
    return port


def local_bootstrap() -> str:
    return f"{LOCAL_HOST}:{local_port()}"


def resolve_bootstrap(explicit: str | None = None) -> str:
    """The bootstrap servers to use: ``--bootstrap``, else env, else the local broker."""
    for value in (explicit, os.environ.get(BOOTSTRAP_ENV)):
        if value and value.strip():
            return value.strip()
    return local_bootstrap()


def client_config(bootstrap: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings for any client: bootstrap, quiet logging, plus ``extra``.

    ``extra`` is passed through untouched (SASL, SSL, timeouts): any librdkafka
    key works, so the project never has to learn each security option.
    """
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": _RDKAFKA_LOGGER}
    if extra:
        conf.update(extra)
    return conf


def _first_address(bootstrap: str) -> tuple[str, int] | None:
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, sep, port = first.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or LOCAL_HOST, int(port)


def check_reachable(
    bootstrap: str, *, timeout: float = 10.0, extra: Mapping[str, Any] | None = None
) -> int:
    """Ask the cluster for metadata; return the number of brokers that answered.

    Raises ``BrokerError`` within ``timeout`` seconds when nothing answers, so a
    wrong address ends in one clear line instead of a hang.
    """
    from confluent_kafka.admin import AdminClient

    addr = _first_address(bootstrap)
    if addr is None:
        raise BrokerError(f"bootstrap {bootstrap!r} is not of the form host:port[,host:port]")
    if extra is None or "security.protocol" not in extra:
        # Fast path for plaintext: a refused TCP connect needs no metadata round trip.
        try:
            with socket.create_connection(addr, timeout=min(timeout, 5.0)):
                pass
        except OSError as exc:
            raise BrokerError(
                f"no Kafka broker is listening at {bootstrap} ({exc.strerror or exc}); "
                f"start one with 'stream-learner kafka up' or set --bootstrap / {BOOTSTRAP_ENV}"
            ) from None
    admin = AdminClient(client_config(bootstrap, extra))
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception as exc:  # KafkaException: librdkafka's own error object
        err = exc.args[0] if exc.args else None
        raise BrokerError(
            f"Kafka at {bootstrap} did not answer a metadata request within {timeout:g}s",
            code=getattr(err, "name", lambda: None)(),
            description=getattr(err, "str", lambda: None)(),
        ) from None
    return len(metadata.brokers)
