"""Delayed-label join: ground truth that arrives after the prediction it judges.

When an unlabelled event is predicted, the learner remembers the event and its prediction;
when a :class:`~stream_learner.core.events.Label` with the same ``id`` arrives, the pair is
handed back so the prediction can be scored and the model can learn from the event.

A label may also come *before* its prediction: the events and labels topics are read side by
side, and after a restart with a backlog the consumer may reach a label ahead of its event.
Such a label is *parked* and joined the moment its event is predicted, instead of being lost.

A pending prediction is held compactly: its features and probabilities packed into bytes,
its feature names, prediction and classes interned once per joiner
(:class:`~stream_learner.core.rows.Packer`); the event's id is the key it waits under. A
prediction that is not a ``(label, probabilities)`` pair, or with values that are not all
floats, is held as it came.

Memory is bounded twice: by count (the oldest pending prediction is evicted when full) and by
age (entries older than ``max_age_s`` are dropped). Both count as ``expired``. Parked labels
have the same bounds; one that never meets its prediction counts as ``unmatched``. Nothing reads
a clock: callers pass ``now`` (event time in replays, wall time in the service), so the join
is deterministic and replayable.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from stream_learner.core import pickling
from stream_learner.core.events import Event, Label
from stream_learner.core.rows import Packer
from stream_learner.errors import DecodeError

__all__ = ["LabelJoiner", "UnseenKeys"]


class LabelJoiner:
    """Pending predictions waiting for their labels, matched on event ``id``.

    Matching is on ``id`` alone, because a label message may omit ``key`` (it then decodes to
    the default key): the returned event carries the model key. Ids must therefore be unique
    across keys while their predictions are pending. Remembering an id again replaces the
    earlier entry and makes it the youngest.

    Parameters
    ----------
    max_pending
        How many predictions to keep at most; the oldest is evicted beyond that.
    max_age_s
        How long (in the units of ``now``, normally seconds) a prediction waits for its label;
        ``None`` keeps it until evicted by count. Assumes ``now`` does not go backwards.

    Examples
    --------
    >>> from stream_learner.core.events import Event, Label
    >>> joiner = LabelJoiner(max_pending=2, max_age_s=60)
    >>> joiner.remember(Event("e1", "default", {"f": 1.0}), True, now=0.0)
    >>> joiner.join(Label("e1", "default", False), now=5.0)
    (Event(id='e1', key='default', x={'f': 1.0}, y=None, ts=None), True)
    >>> joiner.join(Label("e9", "default", False), now=6.0) is None  # parked: no event yet
    True
    >>> joiner.remember(Event("e9", "default", {"f": 2.0}), True, now=7.0)  # joins at once
    Label(id='e9', key='default', y=False, ts=None)
    >>> joiner.joined, joiner.unmatched, joiner.expired, joiner.pending, joiner.parked
    (2, 0, 0, 0, 0)
    """

    def __init__(self, max_pending: int = 100_000, max_age_s: float | None = 3600.0) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        if max_age_s is not None and not max_age_s > 0:
            raise ValueError(f"max_age_s must be positive or None, got {max_age_s}")
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self.joined = 0
        self.unmatched = 0
        self.expired = 0
        # id -> (kind, packed numbers, time remembered, event time), or (event, prediction,
        # time remembered) for what is not packed; insertion order is age order.
        self._pending: OrderedDict[str, tuple] = OrderedDict()
        self._packer = Packer()
        self._key: str | None = None  # the key of the packed events (a learner's: one)
        # id -> (label, time parked): labels that came before their prediction.
        self._parked: OrderedDict[str, tuple[Label, float]] = OrderedDict()

    # With nothing pending or parked (a young key's joiner, and every key's whose labels
    # come with their events), the containers pickle as None: see pickling.hollowed.
    def __getstate__(self) -> dict:
        state = dict(vars(self))
        if not self._packer.kinds:
            state["_packer"] = None
        return pickling.hollowed(state, ("_pending", "_parked"))

    def __setstate__(self, state: dict) -> None:
        state.setdefault("_packer", None)  # pickled before pending predictions were packed
        state.setdefault("_key", None)
        pickling.refilled(state, _pending=OrderedDict, _packer=Packer, _parked=OrderedDict)
        pickling.set_attributes(self, state)

    @property
    def parked(self) -> int:
        return len(self._parked)

    @property
    def counts(self) -> tuple[int, int, int]:
        """``(joined, unmatched, expired)``: what the label metrics count from."""
        return self.joined, self.unmatched, self.expired

    @property
    def pending(self) -> int:
        return len(self._pending)

    def __len__(self) -> int:
        return len(self._pending)

    def remember(self, event: Event, y_pred: Any, now: float) -> Label | None:
        """Keep ``event`` and its prediction (any picklable object) until its label comes.

        When its label is already parked, nothing is kept: the label is returned (and
        counted as joined) so the caller can score and learn at once."""
        if self._parked:
            self.expire(now)
            parked = self._parked.pop(event.id, None)
            if parked is not None:
                self.joined += 1
                return parked[0]
        pending = self._pending
        if event.id in pending:
            del pending[event.id]
        elif len(pending) >= self.max_pending:
            pending.popitem(last=False)
            self.expired += 1
        packed = None
        if type(y_pred) is tuple and len(y_pred) == 2 and event.key == (self._key or event.key):
            packed = self._packer.pack(event.x, *y_pred)
        if packed is None:
            pending[event.id] = (event, y_pred, now)
        else:
            self._key = event.key
            pending[event.id] = (*packed, now, event.ts)
        return None

    def join(self, label: Label, now: float) -> tuple[Event, Any] | None:
        """The remembered event and prediction for ``label``; None when there is none yet,
        in which case the label is parked until its event is predicted (or it expires)."""
        self.expire(now)
        entry = self._pending.pop(label.id, None)
        if entry is None:
            parked = self._parked
            parked.pop(label.id, None)
            if len(parked) >= self.max_pending:
                parked.popitem(last=False)
                self.unmatched += 1
            parked[label.id] = (label, now)
            return None
        self.joined += 1
        if len(entry) == 3:
            return entry[0], entry[1]
        kind, data, _, ts = entry
        x, p, proba = self._packer.unpack(kind, data)
        return Event(label.id, self._key, x, None, ts), (p, proba)

    def expire(self, now: float) -> int:
        """Drop predictions (and parked labels) older than ``max_age_s``; returns how many
        predictions were dropped."""
        if self.max_age_s is None:
            return 0
        oldest_kept = now - self.max_age_s
        pending = self._pending
        n = 0
        while pending and next(iter(pending.values()))[2] < oldest_kept:
            pending.popitem(last=False)
            n += 1
        self.expired += n
        parked = self._parked
        while parked and next(iter(parked.values()))[1] < oldest_kept:
            parked.popitem(last=False)
            self.unmatched += 1
        return n

    def __repr__(self) -> str:
        return (
            f"LabelJoiner(pending={self.pending}, joined={self.joined}, "
            f"unmatched={self.unmatched}, expired={self.expired}, parked={self.parked})"
        )


class UnseenKeys:
    """Keys that a label opened before any event of theirs came.

    A label may come before its key's first event, so it may create its key's learner (which
    parks it). Made-up keys in a flood of labels would then each cost a learner; past ``cap``
    such keys, a label for yet another unseen key is refused instead (``unseen_key``: the
    service dead-letters it, a replay skips it). A key leaves the set at its first event.

    >>> unseen = UnseenKeys(cap=1)
    >>> unseen.open("a")
    >>> unseen.open("b")
    Traceback (most recent call last):
    ...
    stream_learner.errors.DecodeError: unseen_key: no event of key 'b' yet, and 1 other keys \
already wait for their first event (service.label_max_unseen_keys)
    >>> unseen.seen("a"); unseen.open("b")
    """

    __slots__ = ("cap", "keys")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.keys: set[str] = set()

    def open(self, key: str) -> None:
        """Admit ``key``, whose first input is a label, or raise ``unseen_key``."""
        if len(self.keys) >= self.cap:
            raise DecodeError(
                "unseen_key",
                f"no event of key {key[:40]!r} yet, and {len(self.keys)} other keys already "
                "wait for their first event (service.label_max_unseen_keys)",
            )
        self.keys.add(key)

    def seen(self, key: str) -> None:
        """``key`` had an event (or is gone from this instance): it no longer counts."""
        self.keys.discard(key)
