"""stream-learner: continual learning on Kafka event streams.

The pure learning core lives in :mod:`stream_learner.core` (no Kafka, no HTTP,
no CLI imports); adapters to the outside world live in
:mod:`stream_learner.kafka`; :mod:`stream_learner.cli` wires config to
adapters to the service.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
