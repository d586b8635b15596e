"""stream-learner: continual learning on Kafka event streams.

The pure learning core lives in :mod:`stream_learner.core` (no Kafka, no HTTP,
no CLI imports); adapters to the outside world live in
:mod:`stream_learner.kafka`; :mod:`stream_learner.cli` wires config to
adapters to the service. :class:`StreamLearner` (:mod:`stream_learner.embed`)
is the learner as a library, for another stream processor's loop.

The embedding API is loaded on first use, so importing the pure core through this
package loads no edge module:

>>> import stream_learner
>>> stream_learner.StreamLearner.__module__
'stream_learner.embed'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream_learner.errors import DecodeError, StreamLearnerError

if TYPE_CHECKING:
    from stream_learner.embed import Result, StreamLearner, checkpoint_store

__version__ = "0.1.0"

__all__ = [
    "DecodeError",
    "Result",
    "StreamLearner",
    "StreamLearnerError",
    "__version__",
    "checkpoint_store",
]

_EMBED = frozenset({"Result", "StreamLearner", "checkpoint_store"})


def __getattr__(name: str) -> Any:
    if name in _EMBED:
        from stream_learner import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'stream_learner' has no attribute {name!r}")
