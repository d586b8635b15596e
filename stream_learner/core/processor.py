"""One engine: the per-record steps that the service, the replay and embedders all drive.

A :class:`Processor` owns what a runtime holds besides its transport: the map of model keys
to :class:`~stream_learner.core.learner.Learner` (and the partition each key lives on),
paused keys, keys that only labels have opened so far, and retrains in flight. It takes one
decoded input at a time — an event, a label or a command — and says what happened:

- the :class:`~stream_learner.core.learner.Outcome` of an event or joined label is returned
  (the caller publishes a prediction from it), :data:`PAUSED` when the key is paused, and
  ``None`` for a label that was parked or had expired;
- an input that the contract or the model refuses raises
  :class:`~stream_learner.errors.DecodeError` with the reason the service dead-letters it
  with (``unseen_key``, ``bad_label``, ``model_rejected``, ...): the same exception for
  every runtime, so a replay skips exactly what the service dead-letters;
- everything else — drift signals and decisions, a retrain started, applied or failed, a
  command carried out or ignored, a key opened — is appended to :attr:`Processor.effects`
  as a plain value, in the order it happened. The caller drains that list after each input
  (the common event leaves it empty), and turns it into logs, metrics or a report.

Retrains run through a :class:`Runner`: :class:`InlineRunner` here (replays, embedders,
tests), or the service's worker process (``service/retrainer.py``). Either way a result is
applied at a fixed input index of its key — ``apply_after`` inputs after the retrain
started — so every runtime promotes the same model at the same event.

Pure: no Kafka, no clock, no logging, no metrics. Commands that need a checkpoint store
(``snapshot``, ``rollback``) are handed back to the caller as :class:`CommandTaken`
effects; a rollback then comes back through :meth:`Processor.rollback`.

**A key budget.** With ``max_keys`` (and a :class:`KeyStore`), at most that many keys are
resident: when a key's input would make one too many, the least recently used key —
never the one being processed, never one with a retrain in flight — is *evicted*: its
whole :class:`~stream_learner.core.keystate.KeyState` (learner with its parked
predictions and race, pause flag) goes to the store and leaves memory (:class:`KeyEvicted`).
The key's next input (or a command naming it) *reloads* it from the store before it is
processed (:class:`KeyReloaded`). "Recently used" is the order of the inputs this
processor was handed, so which keys are evicted when is a function of the input
sequence alone, and a key's learner sees the same inputs in the same order whether it
was evicted or not: predictions and decisions are those of a processor without a budget.
The store is the caller's (a local cache, then the checkpoint topic, in the service;
:class:`MemoryKeyStore` here).

*Admission.* While the budget is full, a key that an event or a label brings into memory
(new, or reloaded) takes a resident's place only if it passed lately (it is one of the
last ``max_keys`` keys that did, :attr:`Processor.missed`); otherwise it *passes*:
it is processed, then evicted again at once, and the residents stay. A key seen once
(a long tail's, or the cold 99 % of a skewed stream) so never pushes out a key that is
used again, and it is pickled while its objects are still in the CPU's caches — where a
least recently used key, pickled ``max_keys`` inputs after its last one, costs about half
as much again (``load_tests/key_budget.py``). A key that recurs is admitted on its second
arrival, as are keys a retrain in flight holds; commands reload keys as before.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from stream_learner.core import pickling
from stream_learner.core.commands import ALL_KEYS, Command
from stream_learner.core.drift import DriftSignal
from stream_learner.core.events import Event, Label
from stream_learner.core.keystate import KeyState
from stream_learner.core.labels import UnseenKeys
from stream_learner.core.learner import Learner, Outcome
from stream_learner.core.policy import Decision
from stream_learner.core.retrain import RetrainJob, RetrainResult
from stream_learner.errors import DecodeError

__all__ = [
    "PAUSED",
    "CommandIgnored",
    "CommandTaken",
    "Drift",
    "InlineRunner",
    "KeyEvicted",
    "KeyOpened",
    "KeyReloaded",
    "KeyStore",
    "MemoryKeyStore",
    "Pending",
    "Processor",
    "RetrainApplied",
    "RetrainFailed",
    "RetrainStarted",
    "Runner",
    "prediction",
]

#: Commands the processor leaves to its caller: they need a checkpoint store.
DEFERRED = frozenset({"snapshot", "rollback"})


class _Paused:
    """The value of an input that a paused key did not learn."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PAUSED"


PAUSED: Any = _Paused()


# -- effects: what happened besides an input's outcome, as plain values ------------------


class KeyOpened(NamedTuple):
    """A key's learner was created by its first input."""

    key: str
    learner: Learner


class KeyEvicted(NamedTuple):
    """A key left memory for the store (the budget); ``learner`` is its last state, for
    the caller's last look (metrics), not to be kept; ``passed``: right after its input,
    not admitted (see the module docstring)."""

    key: str
    learner: Learner
    passed: bool = False


class KeyReloaded(NamedTuple):
    """An evicted key was loaded back from the store, before its input is processed (the
    effect may be read after: ``joins`` are its joiner's counts as it came back, what it
    had when it left)."""

    key: str
    learner: Learner
    joins: tuple[int, int, int]  # joined, unmatched, expired


class Drift(NamedTuple):
    """Signals and the decisions taken on them (or on a schedule, a command, a rollback)."""

    key: str
    signals: tuple[DriftSignal, ...]
    decisions: tuple[Decision, ...]


class RetrainStarted(NamedTuple):
    key: str
    job: RetrainJob
    due: int  # the key's input index at which its result is applied


class RetrainApplied(NamedTuple):
    """A result was applied: ``decision.action`` is ``promote`` or ``keep``."""

    key: str
    decision: Decision
    result: RetrainResult


class RetrainFailed(NamedTuple):
    """The job raised (a crashed worker, a timeout); the retrain was abandoned."""

    key: str
    job: RetrainJob
    error: str
    decision: Decision | None


class CommandTaken(NamedTuple):
    """A command for one key, as it is carried out; ``snapshot`` and ``rollback`` (see
    :data:`DEFERRED`) are the caller's to carry out."""

    key: str
    command: Command


class CommandIgnored(NamedTuple):
    key: str
    command: Command
    why: str


# -- where retrains run ----------------------------------------------------------------


@dataclass
class Pending:
    """A retrain in flight: its job, the input index its result is due at, and where it
    runs (``future``: a worker's; ``None``: run inline when the result is needed)."""

    job: RetrainJob
    due: int
    future: Any = None  # concurrent.futures.Future, when a worker runs it
    result: RetrainResult | None = None

    def wait(self, timeout: float | None = None) -> RetrainResult:
        if self.result is None:
            self.result = self.future.result(timeout) if self.future else self.job.run()
        return self.result

    @property
    def done(self) -> bool:
        return self.result is not None or (self.future is not None and self.future.done())


class Runner(Protocol):
    """Where retrain jobs run. ``submit`` starts a job whose result is due at input
    ``index + apply_after`` of its key (or ``due``, for a job restored from a snapshot);
    ``timeout_s`` bounds the wait for a late result at that point."""

    apply_after: int
    timeout_s: float

    def submit(self, job: RetrainJob, index: int, *, due: int | None = None) -> Pending: ...


class InlineRunner:
    """Runs each job in the caller's thread when its result is due: replays, embedders and
    tests. The job is pure, so where it runs changes nothing but the timing.

    >>> InlineRunner(apply_after=5).apply_after
    5
    """

    def __init__(self, apply_after: int = 200, timeout_s: float = 600.0) -> None:
        self.apply_after = apply_after
        self.timeout_s = timeout_s

    def submit(self, job: RetrainJob, index: int, *, due: int | None = None) -> Pending:
        return Pending(job, index + self.apply_after if due is None else due)


# -- where evicted keys go ---------------------------------------------------------------


class KeyStore(Protocol):
    """Where evicted keys' states wait (see the module docstring). ``save`` takes a key's
    whole state (it is dropped from memory next); ``load`` gives it back — the same state,
    as if never evicted — and raises ``LookupError`` when the store cannot (a bug or a lost
    store: the caller's to report); ``discard`` forgets keys handed to another instance."""

    def save(self, key: str, partition: int, state: KeyState) -> None: ...
    def load(self, key: str) -> KeyState: ...
    def discard(self, keys: Iterable[str]) -> None: ...


class MemoryKeyStore:
    """Evicted states pickled in a dict: pure tests and small replays. ``bytes`` is what it
    holds, ``written`` what it was given in all.

    >>> store = MemoryKeyStore()
    >>> store.save("k", 0, KeyState("a learner"))
    >>> store.load("k")
    KeyState(learner='a learner', pending=None, paused=False)
    >>> store.bytes
    0
    """

    def __init__(self) -> None:
        self.states: dict[str, bytes] = {}
        self.bytes = 0
        self.written = 0

    def save(self, key: str, partition: int, state: KeyState) -> None:
        raw = self.states[key] = pickling.dumps(state)
        self.bytes += len(raw)
        self.written += len(raw)

    def load(self, key: str) -> KeyState:
        raw = self.states.pop(key)
        self.bytes -= len(raw)
        return pickle.loads(raw)

    def discard(self, keys: Iterable[str]) -> None:
        for key in keys:
            raw = self.states.pop(key, None)
            if raw is not None:
                self.bytes -= len(raw)


# -- the processor ---------------------------------------------------------------------


class Processor:
    """The keys of one runtime and the per-record steps; see the module docstring.

    ``factory(key)`` builds a fresh learner for a key's first input; ``max_unseen_keys``
    bounds the keys a label may open before their first event; ``max_keys`` (0: no bound)
    the keys resident at once, the others evicted to ``store``.

    >>> from stream_learner.core.models import ModelSpec
    >>> spec = ModelSpec.from_dict({"task": "binary", "pipeline": [
    ...     {"estimator": "linear_model.LogisticRegression"}]})
    >>> proc = Processor(lambda key: Learner(key, spec), InlineRunner())
    >>> proc.event(Event("e1", "fraud", {"a": 1.0}), partition=0).y_pred  # a prediction
    False
    >>> proc.label(Label("e1", "fraud", True)).loss  # its delayed label, learned
    1.0
    >>> [type(e).__name__ for e in proc.effects]
    ['KeyOpened']
    >>> proc.label(Label("e2", "other", True))  # a label first: parked
    >>> proc.command(Command("pause", "fraud"))
    >>> proc.event(Event("e3", "fraud", {"a": 1.0}, y=True))
    PAUSED
    """

    def __init__(
        self,
        factory: Callable[[str], Learner],
        runner: Runner,
        *,
        max_unseen_keys: int = 1000,
        max_keys: int = 0,
        store: KeyStore | None = None,
    ) -> None:
        if max_keys and store is None:
            raise ValueError("a key budget (max_keys) needs a store for the evicted keys")
        self.factory = factory
        self.runner = runner
        self.learners: dict[str, Learner] = {}
        # key -> the partition it lives on, for every key held: resident or evicted
        self.partitions: dict[str, int] = {}
        self.max_keys = max_keys
        self.store = store
        self.evicted: set[str] = set()  # keys whose state is in the store
        # Resident keys, least recently used first (only with a budget).
        self._recent: OrderedDict[str, None] | None = OrderedDict() if max_keys else None
        #: Keys that passed (see the module docstring), the last ``max_keys`` of them, oldest
        #: first: one of them is admitted when it comes in again.
        self.missed: OrderedDict[str, None] = OrderedDict()
        self._passing: str | None = None  # the key of the input in hand, when it passes
        self.evictions = 0
        self.reloads = 0
        self._waiting: set[str] = set()  # keys a command to every key has not reached yet
        self.paused: set[str] = set()
        self.pending: dict[str, Pending] = {}
        self.unseen = UnseenKeys(max_unseen_keys)  # keys only labels have opened, bounded
        self.effects: list[Any] = []

    # -- inputs ------------------------------------------------------------------------

    def event(self, event: Event, partition: int = 0) -> Outcome:
        """Learn a labelled event (test-then-train) or predict an unlabelled one."""
        key = event.key
        learner = self.learners.get(key)
        if learner is None:
            if key in self.evicted:
                learner = self._reload(key, arriving=True)
            else:
                learner = self._open(key, partition, arriving=True)
            if self.unseen.keys:
                self.unseen.seen(key)
        else:
            if self.unseen.keys:
                self.unseen.seen(key)
            if self._recent is not None:
                self._recent.move_to_end(key)
        try:
            try:
                if event.y is None:
                    out = learner.predict(event)
                elif self.paused and key in self.paused:
                    return PAUSED
                else:
                    out = learner.learn(event)
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise _refused(exc) from None
            if out.signals or out.decisions or out.job is not None or key in self.pending:
                self._after(learner, out)
            return out
        finally:
            if self._passing is not None:
                self._pass()

    def label(self, label: Label, partition: int = 0) -> Outcome | None:
        """Join a delayed label to its prediction and learn it; ``None`` when it was parked
        (no prediction yet) or its prediction had expired."""
        key = label.key
        learner = self.learners.get(key)
        if learner is None:
            if key in self.evicted:
                learner = self._reload(key, arriving=True)
            else:  # a label may come first: its learner parks it
                self.unseen.open(key)  # or unseen_key, past max_unseen_keys
                learner = self._open(key, partition, arriving=True)
        elif self._recent is not None:
            self._recent.move_to_end(key)
        try:
            if self.paused and key in self.paused:
                return PAUSED
            try:
                out = learner.on_label(label)
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise _refused(exc) from None
            if out is not None:
                self._after(learner, out)
            return out
        finally:
            if self._passing is not None:
                self._pass()

    def command(
        self,
        cmd: Command,
        partition: int = 0,
        *,
        skip: Callable[[str], bool] | None = None,
    ) -> None:
        """Carry out a command: ``*`` means every key this processor holds on ``partition``
        (keys restored from a snapshot included, input or not). ``skip(key)`` leaves out
        keys whose state already reflects this command (a restore's catch-up)."""
        if cmd.key == ALL_KEYS:
            keys: Iterable[str] = [k for k, p in self.partitions.items() if p == partition]
            # Keys still waiting for this command are never evicted meanwhile: an eviction
            # snapshot is taken as of the input being processed, which it must reflect.
            self._waiting = set(keys)
        else:
            keys = (cmd.key,)
        try:
            for key in keys:
                if skip is None or not skip(key):
                    self._command(cmd, key)
                self._waiting.discard(key)
        finally:
            self._waiting = set()

    def _command(self, cmd: Command, key: str) -> None:
        if key in self.evicted:  # its state is the store's: back in memory first
            self._reload(key)
        elif self._recent is not None and key in self._recent:
            self._recent.move_to_end(key)
        self.effects.append(CommandTaken(key, cmd))
        name = cmd.command
        if name == "pause":
            self.paused.add(key)
        elif name == "resume":
            self.paused.discard(key)
        elif name == "retrain":
            learner = self.learners.get(key)
            if learner is None:
                self.effects.append(CommandIgnored(key, cmd, "no such key on this instance"))
                return
            decision, job = learner.request_retrain(cmd.reason or "on demand", cmd.ts)
            self.effects.append(Drift(key, (), (decision,)))
            if job is not None:
                self._submit(learner, job)

    # -- retrains ----------------------------------------------------------------------

    def _after(self, learner: Learner, out: Outcome) -> None:
        """What follows an input: its signals and decisions, a new retrain job, and then a
        retrain result whose point has come (the order every runtime keeps)."""
        key = learner.key
        if out.signals or out.decisions:
            self.effects.append(Drift(key, out.signals, out.decisions))
        if out.job is not None:
            self._submit(learner, out.job)
        pending = self.pending.get(key)
        if pending is not None and learner.index >= pending.due:
            self._apply(learner, pending)

    def _submit(self, learner: Learner, job: RetrainJob) -> None:
        pending = self.pending[learner.key] = self.runner.submit(job, learner.index)
        self.effects.append(RetrainStarted(learner.key, job, pending.due))

    def _apply(self, learner: Learner, pending: Pending) -> None:
        key = learner.key
        del self.pending[key]
        try:
            result = pending.wait(self.runner.timeout_s)
        except Exception as exc:  # a crashed worker must not take the runtime down
            error = repr(exc)
            decision = learner.abandon(f"retrain #{pending.job.number} failed: {error}")
            self.effects.append(RetrainFailed(key, pending.job, error, decision))
            return
        self.effects.append(RetrainApplied(key, learner.apply(result), result))

    def rollback(
        self, key: str, model: Any, version: int, reason: str = "", spec: Any = None
    ) -> Decision:
        """Serve ``model`` (of ``version``, restored by the caller from its snapshot) again
        as the key's next version; see :meth:`Learner.rollback` (``ValueError`` for a model
        of another task)."""
        decision = self.learners[key].rollback(model, version, reason, spec)
        self.effects.append(Drift(key, (), (decision,)))
        return decision

    # -- keys --------------------------------------------------------------------------

    def _open(self, key: str, partition: int, arriving: bool = False) -> Learner:
        learner = self.learners[key] = self.factory(key)
        self.partitions[key] = partition
        self.effects.append(KeyOpened(key, learner))
        if self._recent is not None and not (arriving and self._passes(key)):
            self._recent[key] = None
            self._fit(key)
        return learner

    def _reload(self, key: str, arriving: bool = False) -> Learner:
        """Bring an evicted key back from the store, as it was when it left; ``arriving``:
        for an input of its own, which it may pass through (see the module docstring)."""
        assert self.store is not None
        state = self.store.load(key)
        self.evicted.discard(key)
        self.reloads += 1
        learner = self.learners[key] = state.learner
        if state.paused:
            self.paused.add(key)
        self.effects.append(KeyReloaded(key, learner, learner.joiner.counts))
        if self._recent is not None and not (arriving and self._passes(key)):
            self._recent[key] = None
            self._fit(key)
        return learner

    def _passes(self, key: str) -> bool:
        """Whether ``key``, just brought into memory for its input, leaves again after it
        (the budget is full and it did not pass lately); see the module docstring."""
        if len(self.learners) <= self.max_keys:
            return False  # room for it
        missed = self.missed
        if key in missed:
            del missed[key]
            return False
        missed[key] = None
        if len(missed) > self.max_keys:
            missed.popitem(last=False)
        self._passing = key
        return True

    def _pass(self) -> None:
        """The input of a passing key is done: evict it, unless a retrain in flight holds it
        (then it is admitted, and the least recently used key leaves in its place)."""
        key, self._passing = self._passing, None
        assert key is not None and self._recent is not None
        if key in self.pending:
            self._recent[key] = None
            self._fit(key)
        else:
            self.evict(key, passed=True)

    def _fit(self, keep: str) -> None:
        """Evict least recently used keys until the budget holds; ``keep`` (the key being
        processed) and keys with a retrain in flight stay (its result is applied at a
        fixed input index, in memory): the budget may then be exceeded for a while."""
        recent, learners = self._recent, self.learners
        assert recent is not None
        over = len(learners) - self.max_keys
        if over <= 0:
            return
        victims = []
        waiting = self._waiting
        for key in recent:
            if key != keep and key not in self.pending and key not in waiting:
                victims.append(key)
                if len(victims) == over:
                    break
        for key in victims:
            self.evict(key)

    def evict(self, key: str, *, passed: bool = False) -> None:
        """Hand ``key``'s whole state to the store and drop it from memory (the budget
        calls this; a caller may too). A key with a retrain in flight is refused."""
        if key in self.pending:
            raise ValueError(f"key {key!r} has a retrain in flight: it stays in memory")
        assert self.store is not None
        state = self.state(key)
        self.store.save(key, self.partitions[key], state)
        learner = self.learners.pop(key)
        self.paused.discard(key)
        if self._recent is not None:
            self._recent.pop(key, None)
        self.evicted.add(key)
        self.evictions += 1
        self.effects.append(KeyEvicted(key, learner, passed))

    def limit(self, max_keys: int, store: KeyStore) -> None:
        """Set the key budget (see the constructor) before the first input."""
        if self.learners or self.evicted:
            raise ValueError("the key budget is set before any key is held")
        self.max_keys, self.store = max_keys, store
        self._recent = OrderedDict() if max_keys else None

    def resident(self, key: str) -> Learner:
        """``key``'s learner, reloaded first if it was evicted (``KeyError``: not held)."""
        learner = self.learners.get(key)
        if learner is not None:
            return learner
        if key not in self.evicted:
            raise KeyError(key)
        return self._reload(key)

    def adopt(
        self,
        key: str,
        learner: Learner,
        partition: int = 0,
        *,
        paused: bool = False,
        pending: tuple[RetrainJob, int] | None = None,
    ) -> None:
        """Hold a restored key: its learner, whether it was paused, and the retrain it had
        in flight (resubmitted, due at the same input index as before)."""
        self.learners[key] = learner
        self.partitions[key] = partition
        self.evicted.discard(key)
        self.unseen.seen(key)
        if paused:
            self.paused.add(key)
        else:
            self.paused.discard(key)
        if pending:
            job, due = pending
            self.pending[key] = self.runner.submit(job, learner.index, due=due)
        else:
            self.pending.pop(key, None)
        if self._recent is not None:
            self._recent[key] = None
            self._recent.move_to_end(key)
            self._fit(key)

    def state(self, key: str) -> KeyState:
        """Everything a snapshot of ``key`` holds: learner, retrain in flight, pause."""
        pending = self.pending.get(key)
        return KeyState(
            self.learners[key],
            None if pending is None else (pending.job, pending.due),
            key in self.paused,
        )

    def renew(self, key: str, copy: Callable[[KeyState], KeyState]) -> bool:
        """Hold ``copy(state)`` of ``key`` (the same state in new objects) instead of its
        learner; ``False``, nothing done, for a key not resident or with a retrain in
        flight (its result is applied to the learner that asked for it). A learner whose
        objects were pickled or deep-copied reads its attributes through dicts from then
        on (``core/pickling.py``); new ones, unpickled, read them inline again."""
        if key not in self.learners or key in self.pending:
            return False
        self.learners[key] = copy(self.state(key)).learner
        return True

    def drop(self, partitions: Iterable[int]) -> list[str]:
        """Forget every key of ``partitions`` (handed to another instance), evicted ones
        included (the store forgets them too); returns them."""
        gone = set(partitions)
        keys = [k for k, p in self.partitions.items() if p in gone]
        evicted = [k for k in keys if k in self.evicted]
        if evicted and self.store is not None:
            self.store.discard(evicted)
        for key in keys:
            self.learners.pop(key, None)
            self.evicted.discard(key)
            if self._recent is not None:
                self._recent.pop(key, None)
            self.missed.pop(key, None)
            del self.partitions[key]
            self.pending.pop(key, None)
            self.paused.discard(key)
            self.unseen.seen(key)
        return keys


def prediction(event: Event, out: Outcome) -> dict[str, Any]:
    """The message every runtime publishes to the predictions topic for a prediction
    request (``proba`` only when the model gives one; class names as strings).

    >>> from stream_learner.core.models import ModelSpec
    >>> spec = ModelSpec.from_dict({"task": "binary", "pipeline": [
    ...     {"estimator": "linear_model.LogisticRegression"}]})
    >>> event = Event("e1", "fraud", {"a": 1.0}, ts=1.5)
    >>> body = prediction(event, Learner("fraud", spec).predict(event))
    >>> sorted(body)
    ['id', 'key', 'lineage', 'model_version', 'proba', 'ts', 'y_pred']
    >>> body["y_pred"], body["proba"]
    (False, {'False': 0.5, 'True': 0.5})
    """
    body: dict[str, Any] = {
        "id": event.id,
        "key": event.key,
        "y_pred": out.y_pred,
        "model_version": out.version,
        "lineage": out.lineage,
        "ts": event.ts,
    }
    proba = out.proba
    if proba:
        body["proba"] = {str(k): v for k, v in proba.items()}
    return body


def _refused(exc: Exception) -> DecodeError:
    """A model's refusal of an input (e.g. a string where the pipeline needs a number):
    the input is bad for this model, not the runtime's end."""
    return DecodeError("model_rejected", f"{type(exc).__name__}: {exc}")
