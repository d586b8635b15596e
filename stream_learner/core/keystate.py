"""What one model key's snapshot holds: its learner, a retrain in flight and whether it
is paused.

The service snapshots a key as a :class:`KeyState` and restores it from one; ``replay
--rebuild --publish`` offers one. The class is pickled into every snapshot, so its
module path and field names are part of the checkpoint format: add fields only with a
default (an older snapshot then restores with the default), never rename or move it.
Snapshots written before it existed hold a dict ``{"learner", "pending", "paused"}``;
:meth:`KeyState.of` reads both, so checkpoints already on users' topics still restore.

>>> state = KeyState.of({"learner": "a learner", "pending": None, "paused": True})
>>> state
KeyState(learner='a learner', pending=None, paused=True)
>>> KeyState.of(state) is state
True
>>> state["paused"]  # reads like the dict it replaced
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stream_learner.errors import SnapshotError

if TYPE_CHECKING:
    from stream_learner.core.learner import Learner
    from stream_learner.core.retrain import RetrainJob

__all__ = ["KeyState"]

_FIELDS = ("learner", "pending", "paused")


@dataclass(frozen=True)
class KeyState:
    """One key's whole state as of a snapshot.

    ``pending`` is the retrain in flight, as ``(job, due)``: the job to run again and the
    learner input index at which its result is applied (see ``retrainer.py``). Not slotted:
    an instance pickles its ``__dict__``, so a field added later with a default reads as
    that default from older snapshots.
    """

    learner: Learner
    pending: tuple[RetrainJob, int] | None = None
    paused: bool = False

    @classmethod
    def of(cls, state: object) -> KeyState:
        """The state of a loaded snapshot: a :class:`KeyState`, or the dict that older
        snapshots hold (``pending`` and ``paused`` may be missing there)."""
        if isinstance(state, cls):
            return state
        if isinstance(state, dict) and "learner" in state and set(state) <= set(_FIELDS):
            pending = state.get("pending")
            return cls(
                state["learner"],
                None if not pending else (pending[0], pending[1]),
                bool(state.get("paused", False)),
            )
        raise SnapshotError(
            f"a key's snapshot holds {type(state).__name__}, not a KeyState "
            "(or the dict of older snapshots)"
        )

    def __getitem__(self, name: str) -> Any:
        """Read a field by name, as from the dict this class replaced (code and tests
        written against dict-shaped snapshots keep working)."""
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def get(self, name: str, default: Any = None) -> Any:
        """Like ``dict.get`` over the fields (see :meth:`__getitem__`)."""
        return getattr(self, name) if name in _FIELDS else default
