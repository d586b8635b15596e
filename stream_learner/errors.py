"""Exceptions raised by stream-learner.

One root, one branch per area, so callers can catch as broadly or as narrowly
as they need::

    StreamLearnerError
    ├── ConfigError          bad configuration (file, env, model spec, policy)
    ├── DecodeError          an input message that does not fit the event contract
    ├── BrokerError          Kafka unreachable or refused a request
    │   ├── TransactionAborted  an exactly-once batch given up (replayed, not lost)
    │   └── LocalBrokerError the project's own local broker could not be run
    ├── FencedError          a write this instance may no longer make
    └── SnapshotError        a checkpoint that cannot be trusted or read

The CLI turns any ``StreamLearnerError`` into one line on stderr and a non-zero
exit; nothing here should ever surface as a traceback to a user.
"""

from __future__ import annotations


class StreamLearnerError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(StreamLearnerError):
    """Configuration that cannot be used; the message names the offending key."""


class DecodeError(StreamLearnerError):
    """An input message rejected by the event contract.

    ``reason`` is a short machine-readable code (``not_json``, ``missing_x``,
    ...) that the runtime puts in the dead-letter headers; ``detail`` is the
    human explanation.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class BrokerError(StreamLearnerError):
    """Kafka could not be reached or refused a request.

    ``code`` and ``description`` carry librdkafka's error when there is one.
    """

    def __init__(self, message: str, *, code: str | None = None, description: str | None = None):
        super().__init__(message)
        self.code = code
        self.description = description


class FencedError(StreamLearnerError):
    """A write refused because this instance may no longer own what it would write (it
    stood still long enough for the group to move its partitions; see service/stall.py)."""


class TransactionAborted(BrokerError):
    """An exactly-once transaction that did not commit and was aborted (or, stuck inside
    librdkafka, abandoned to be fenced by the next one): none of its outputs or input
    positions are visible to ``read_committed`` readers, so the batch is replayed from the
    last committed positions, not lost and not learned twice."""


class LocalBrokerError(BrokerError):
    """The project's own local Kafka (``stream-learner kafka up``) failed."""


class SnapshotError(StreamLearnerError):
    """A model snapshot failed verification or could not be decoded."""
