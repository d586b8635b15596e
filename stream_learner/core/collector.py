"""The cyclic garbage collector's thresholds while a learning loop runs (the service's,
a replay's).

Every learner keeps thousands of recent examples alive, so with many keys CPython's
default thresholds (700, 10, 10) spend a tenth of the hot path re-scanning those
survivors; a larger young generation lets each event's garbage die unscanned.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["THRESHOLDS", "learning_thresholds"]

#: The collector's thresholds while a loop runs.
THRESHOLDS = (10_000, 10, 10)


@contextmanager
def learning_thresholds() -> Iterator[None]:
    """Run the block with :data:`THRESHOLDS`; the previous thresholds are restored after.

    >>> import gc
    >>> before = gc.get_threshold()
    >>> with learning_thresholds():
    ...     gc.get_threshold() == THRESHOLDS
    True
    >>> gc.get_threshold() == before
    True
    """
    previous = gc.get_threshold()
    gc.set_threshold(*THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*previous)
