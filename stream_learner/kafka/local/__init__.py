"""The project's own single-node Apache Kafka, run from Maven Central jars.

No Docker engine is needed: Maven resolves the broker jars once into a cache,
and a KRaft broker+controller runs on loopback from them. Used by
``stream-learner kafka up|down|status``, the test fixtures and CI.
"""

from stream_learner.kafka.local.broker import BrokerStatus, LocalBroker

__all__ = ["BrokerStatus", "LocalBroker"]
