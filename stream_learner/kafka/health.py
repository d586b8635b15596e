"""Whether the service can do its job on Kafka right now, and what an outage is worth saying.

The clients report here from their callbacks and calls (any thread): the consumer that no
broker answers (its statistics, every two seconds, and its error callback), the sink that
outputs wait for delivery, the source that offsets could not be committed. Each *problem*
starts at its first report and ends at the first report that it is over.

- **Readiness.** A problem older than ``grace_s`` makes :meth:`KafkaHealth.check` not ready,
  with the problem and its age as the reason; ready again as soon as it is over. A shorter
  one is ridden out silently: a broker restart or a leader election is routine.
- **Log levels.** While a problem is younger than the grace its lines are WARNINGs (and
  librdkafka's own connection errors are demoted to WARNING, see :class:`TransientFilter`);
  once it outlasts the grace one ERROR line ``kafka_outage`` says so (that needs a person),
  and its end is one ``kafka_recovered`` line with how long it lasted. A watchdog thread
  makes the ERROR come on time even when no probe asks and no client calls back.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from stream_learner.logs import log_event

__all__ = ["PROBLEMS", "KafkaHealth", "TransientFilter"]

log = logging.getLogger("stream_learner.kafka")

#: What can be wrong, and how a reason names it.
PROBLEMS = {
    "brokers": "no Kafka broker answers",
    "delivery": "outputs cannot be delivered",
    "commit": "input offsets cannot be committed",
}


class KafkaHealth:
    """Problems with Kafka, their ages, and the lines they are worth; thread-safe."""

    def __init__(
        self, grace_s: float = 20.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}  # problem -> when it started
        self._detail: dict[str, str] = {}
        self._escalated: set[str] = set()
        self._stop = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- reports (from the clients) ------------------------------------------------------
    def problem(self, what: str, detail: str = "") -> None:
        """``what`` (one of :data:`PROBLEMS`) is wrong; the first report starts the clock."""
        if what not in PROBLEMS:
            raise ValueError(f"unknown problem {what!r}")
        with self._lock:
            if what in self._since:
                if detail:
                    self._detail[what] = detail
                return
            self._since[what] = self._clock()
            self._detail[what] = detail
        log_event(
            log,
            "kafka_unavailable",
            level=logging.WARNING,
            what=what,
            detail=detail or PROBLEMS[what],
            grace_s=self.grace_s,
        )

    def resolved(self, what: str) -> None:
        """``what`` works again."""
        with self._lock:
            since = self._since.pop(what, None)
            self._detail.pop(what, None)
            escalated = what in self._escalated
            self._escalated.discard(what)
        if since is not None:
            log_event(
                log,
                "kafka_recovered",
                level=logging.WARNING if escalated else logging.INFO,
                what=what,
                lasted_s=round(self._clock() - since, 1),
            )

    # -- what they amount to -------------------------------------------------------------
    def ages(self) -> dict[str, float]:
        """Seconds each current problem has lasted (every problem: 0 when fine)."""
        now = self._clock()
        with self._lock:
            return {what: now - self._since[what] if what in self._since else 0.0
                    for what in PROBLEMS}  # fmt: skip

    def check(self) -> tuple[bool, str]:
        """``(False, reason)`` while a problem is older than the grace, else ``(True, "")``."""
        self.escalate()
        now = self._clock()
        with self._lock:
            late = [
                (now - since, what) for what, since in self._since.items()
                if now - since >= self.grace_s
            ]  # fmt: skip
            if not late:
                return True, ""
            age, what = max(late)
            detail = self._detail.get(what)
        reason = f"{PROBLEMS[what]} for {age:.0f} s"
        return False, f"{reason}: {detail}" if detail else reason

    def escalate(self) -> None:
        """Log ``kafka_outage`` at ERROR, once per problem, when it outlasts the grace."""
        now = self._clock()
        with self._lock:
            due = [
                (what, now - since, self._detail.get(what, ""))
                for what, since in self._since.items()
                if now - since >= self.grace_s and what not in self._escalated
            ]
            self._escalated.update(what for what, _, _ in due)
        for what, age, detail in due:
            log_event(
                log,
                "kafka_outage",
                level=logging.ERROR,
                what=what,
                lasted_s=round(age, 1),
                grace_s=self.grace_s,
                detail=detail or PROBLEMS[what],
                action="outputs and commits wait for Kafka; check the brokers and the network",
            )

    # -- the watchdog --------------------------------------------------------------------
    def start(self, every_s: float = 1.0) -> None:
        if self._watchdog is None:
            self._stop.clear()
            self._watchdog = threading.Thread(
                target=self._watch, args=(every_s,), name="stream-learner-kafka-health", daemon=True
            )
            self._watchdog.start()

    def _watch(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.escalate()

    def close(self) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(5)
            self._watchdog = None


# librdkafka's lines about a connection that failed or dropped: it retries them by itself,
# so they are news only when they last (KafkaHealth's ERROR says so then).
_TRANSIENT = re.compile(
    r"Connect to .* failed|Connection refused|Disconnected|brokers? (are|is) down|"
    r"Receive failed|Send failed|Connection reset|timed out|transport failure|"
    r"Failed to resolve",
    re.IGNORECASE,
)


class TransientFilter(logging.Filter):
    """Demotes librdkafka's ERROR lines about failed or dropped connections to WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and _TRANSIENT.search(record.getMessage()):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
