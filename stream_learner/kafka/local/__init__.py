"""The project's own Apache Kafka, run from Maven Central jars: one node or a cluster.

No Docker engine is needed: Maven resolves the broker jars once into a cache,
and KRaft brokers run on loopback from them — one broker+controller
(:class:`LocalBroker`), or N of them forming one cluster (:class:`LocalCluster`).
Used by ``stream-learner kafka up|down|status``, the test fixtures and CI.
"""

from stream_learner.kafka.local.broker import (
    BrokerStatus,
    ClusterNode,
    LocalBroker,
    LocalCluster,
    default_cluster_port,
)

__all__ = ["BrokerStatus", "ClusterNode", "LocalBroker", "LocalCluster", "default_cluster_port"]
