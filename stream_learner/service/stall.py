"""Noticing that the whole process stood still (SIGSTOP, a frozen VM, a swap storm).

A consumer group keeps a member's partitions only while the member heartbeats. librdkafka
heartbeats from its own threads, so a busy Python loop (a long batch, an inline retrain)
keeps them; a process that is *stopped* does not, and after ``session.timeout.ms`` its
partitions belong to another instance. When it resumes, it still holds their state and
maybe records fetched before the stop, and nothing has told it yet that it lost them:
whatever it published or committed from that state would be a stale owner's.

:class:`StallWatch` tells the two apart with a thread that only wakes up: its ticks keep
coming while Python is busy (the interpreter hands the GIL over every few milliseconds)
and stop only when the whole process does. The gap between two ticks is how long the
process stood still. The service asks for the longest gap before it releases a batch's
outputs, commits or writes a checkpoint (see ``Service.end_batch``).
"""

from __future__ import annotations

import threading
import time

__all__ = ["StallWatch"]


class StallWatch:
    """Measures the longest time the process stood still since the last :meth:`clear`.

    The gap in progress counts too: right after a resume the service may look before the
    ticking thread has run again, and the time since its last tick already says it all.

    >>> watch = StallWatch(tick_s=0.05)
    >>> watch.stood_still_s()
    0.0
    >>> watch.note(12.5)  # what the ticking thread records after a stop of 12.5 s
    >>> watch.stood_still_s()
    12.5
    >>> watch.clear(); watch.stood_still_s()
    0.0
    """

    def __init__(self, tick_s: float = 0.25) -> None:
        self.tick_s = tick_s
        self._longest = 0.0  # seconds beyond one tick, the longest since clear()
        self._last = time.monotonic()  # CLOCK_MONOTONIC runs on while the process is stopped
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._tick, name="stall-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def stood_still_s(self) -> float:
        """The longest stop since :meth:`clear`, the one still in progress included."""
        with self._lock:
            if self._thread is None:
                return self._longest
            return max(self._longest, time.monotonic() - self._last - self.tick_s)

    def note(self, gap: float) -> None:
        with self._lock:
            self._longest = max(self._longest, gap)

    def clear(self) -> None:
        with self._lock:
            self._longest = 0.0
            self._last = time.monotonic()

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self._lock:
                now = time.monotonic()
                self._longest = max(self._longest, now - self._last - self.tick_s)
                self._last = now
