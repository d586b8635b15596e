"""The prequential race: candidates that earn the champion's place event by event.

After a sign of change, a learner keeps a :class:`Race`: a few candidate models that see
every labelled event the champion sees. Each candidate predicts the event *before* learning
it, as the champion did, so champion and candidate are compared on the same events, each
prediction made blind (a paired, prequential comparison). Candidates come from three
sources:

- ``shadow``: a fresh model, started at the first performance warning or drift, learning
  online from there (River's ARF background trees and ``DriftRetrainingClassifier`` do the
  same). By the time it leads, it has learned every event since the warning.
- ``regrown``: the champion's Hoeffding trees with their splits kept and every leaf started
  afresh, learning online from the same point as the shadow: when a function of the same
  features changed, the old questions still hold and only the leaves' answers must be
  relearned, in a few examples each.
- ``pool``: a model the key retired earlier. A concept that comes back is already known to
  one of them, which then leads at once.
- ``window``: the candidate of a change-triggered window retrain that passed its holdout
  gate; it must still earn its place here, which protects a champion that adapts on its
  own (a Hoeffding adaptive tree, a forest) from a worse cold model.

The decision rests on the paired per-event difference ``d = champion loss - candidate loss``
(0/1 errors, or absolute errors for regression): its mean is the candidate's lead, and the
candidate is promoted when the lead is at least ``race_margin`` and ``race_z`` standard
errors above zero, over at least ``race_min_events`` events (1,000 by default: the leader
serves meanwhile, see below, so waiting costs little, and a lead that only a passing dip of
the champion's gave does not last that long). A 200-event holdout has a standard error of
2-3 accuracy points; here the standard error shrinks as the race goes on and disagreements
are what count (McNemar's idea: events both get right or both get wrong say nothing about
which is better). A candidate is given up when it has not led within ``race_max_events``
events, or, unless it is a shadow, when it is ``race_z`` standard errors *behind* after
``race_behind_events`` (50): a trained one (pool, window) is not the concept now served,
and a regrown one's splits are not the right questions for it.

A sound lead promotes only while the champion is itself soundly worse than before the race
(``race_confirm``): its loss over about the last :data:`LEVEL_EVENTS` raced events must be
above its loss over the recent window's examples it predicted before the race, by
``race_margin`` and ``race_z`` standard errors of the difference. A race is begun by a sign
of change, and a sign can be wrong: on a stationary stream a Hoeffding tree's own splits
cost it points for a while, and a young candidate that beats it there (on some streams a
tree is at its best before its first split) would be a new version for nothing, soon
beaten in turn. Such a candidate is given up when its time is out (``champion_unchanged``).
After a real change the champion stays worse; a champion that recovered by itself (an
adaptive tree, a linear model relearning) keeps its place.

While the race is on, the candidate with the best *recent* lead (``d`` averaged with
exponentially fading weights over about ``race_serve_window`` events) serves the predictions,
once that lead passes ``race_serve_margin``, and keeps serving while it stays positive: right
after a change the champion is often the worst of them, and a statistically sound lead takes
hundreds of events to build. Serving is on trial: promotion (a new version, the champion
retired) still needs the sound lead above, and the race still runs on the champion's own
losses.

Everything here is plain data, pickled with the learner: candidates, their paired sums and
the pool survive snapshots, restarts and rebalances, and the same events give the same
decisions at the same input indexes.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["SOURCES", "Candidate", "Race", "squared_error"]

#: Where a candidate came from; promotions are counted by source.
SOURCES = ("shadow", "regrown", "window", "pool")

#: The champion's loss during a race is averaged over about this many recent events.
LEVEL_EVENTS = 500
_LEVEL_RATE = 2.0 / (LEVEL_EVENTS + 1)  # the weight of an exponential mean of that span


def squared_error(n: float, total: float, squares: float) -> float:
    """The squared standard error of the mean of ``n`` values, from their sum and their sum
    of squares. The variance has a floor of one disagreement in ``n``: values that never
    differed do not make a mean infinitely sure."""
    spread = (squares - total * total / n) / (n - 1) if n > 1 else 0.0
    return max(spread, 1.0 / n) / n


class Candidate:
    """One model in the race and its paired record against the champion.

    ``n`` events raced, ``total`` the sum of ``d`` and ``squares`` the sum of ``d * d``
    (for 0/1 losses: wins minus losses, and disagreements). ``version`` is the version the
    model served as, for a pooled one."""

    __slots__ = ("model", "source", "started", "version", "n", "total", "squares", "recent")

    def __init__(self, model: Any, source: str, started: int, version: int | None = None):
        self.model = model
        self.source = source
        self.started = started  # input index at which it entered the race
        self.version = version
        self.n = 0
        self.total = 0.0
        self.squares = 0.0
        self.recent = 0.0  # the recent lead: d averaged with exponentially fading weights

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        # A candidate pickled before the recent lead was kept has none yet: 0.0.
        state = (*state, 0.0) if len(state) == len(self.__slots__) - 1 else state
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    @property
    def lead(self) -> float:
        """Mean paired difference: how much less loss per event than the champion."""
        return self.total / self.n if self.n else 0.0

    @property
    def error(self) -> float:
        """The standard error of :attr:`lead` (the variance has a floor of one
        disagreement in ``n``: a candidate that has never disagreed is not infinitely sure)."""
        if self.n < 2:
            return math.inf
        return math.sqrt(squared_error(self.n, self.total, self.squares))

    @property
    def z(self) -> float:
        """The lead in standard errors of the mean paired difference (0 before two events).

        The variance has a floor of one disagreement, so a candidate that has never
        disagreed has no z, and one that always won is not infinitely sure."""
        n = self.n
        if n < 2:
            return 0.0
        spread = (self.squares - self.total * self.total / n) * n / (n - 1)
        return self.total / math.sqrt(max(spread, 1.0))

    def reset(self) -> None:
        """Forget the paired record (the champion it was compared with has changed)."""
        self.n = 0
        self.total = self.squares = self.recent = 0.0

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "started": self.started,
            "events": self.n,
            "lead": round(self.lead, 6),
            "z": round(self.z, 3),
            "recent_lead": round(self.recent, 6),
            **({"pool_version": self.version} if self.version is not None else {}),
        }


class Race:
    """The candidates racing one champion, why the race began, and which of them serves.

    :meth:`step` is called once per labelled event, after the champion has predicted and
    learned it; it returns what the race decided on that event: a candidate to promote
    (first), and the candidates given up. ``serving`` is the candidate whose predictions are
    served meanwhile (``None``: the champion's), chosen by :meth:`choose` after each step."""

    __slots__ = ("trigger", "started", "candidates", "serving", "before", "level", "raced")

    def __init__(
        self, trigger: str, started: int, before: tuple[float, float] | None = None
    ) -> None:
        self.trigger = trigger
        self.started = started
        self.candidates: list[Candidate] = []
        self.serving: Candidate | None = None
        # The champion's mean loss before the race and its squared standard error (None:
        # promotion needs no rise of the champion's loss), and its loss during the race: the
        # mean, and the mean of the squares, over about LEVEL_EVENTS events.
        self.before = before
        self.level = [0.0, 0.0]
        self.raced = 0  # events raced

    def __getstate__(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple) -> None:
        if len(state) == 3:  # pickled before a candidate could serve: the champion serves
            state = (*state, None)
        if len(state) == 4:  # pickled before the champion's rise was asked for: it is not
            state = (*state, None, [0.0, 0.0], 0)
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    def rebase(self) -> None:
        """Another champion now serves (a window retrain replaced it): the candidates' paired
        records and the champion's levels start over, and the champion serves meanwhile. The
        new one has no loss from before the race, so no rise is asked of it."""
        self.serving = None
        for c in self.candidates:
            c.reset()
        self.before = None
        self.level = [0.0, 0.0]
        self.raced = 0

    @property
    def champion_loss(self) -> float:
        """The champion's loss per event over about the last :data:`LEVEL_EVENTS` raced."""
        return self.level[0]

    def champion_worse(self, z: float, margin: float) -> bool:
        """Whether the champion's recent loss is above its loss before the race by at least
        ``margin``, ``z`` standard errors of the difference clear of it: it got worse (a
        change), and is not merely a model that a young candidate beats. Always true without
        a loss from before."""
        before = self.before
        if before is None:
            return True
        n = min(self.raced, LEVEL_EVENTS)
        if n < 2:
            return False
        mean, squares = self.level
        spread = max(squares - mean * mean, 1.0 / n)  # as Candidate.error: a floor
        return mean - before[0] - margin >= z * math.sqrt(before[1] + spread / n)

    def predict(self, x: dict, classifier: bool) -> tuple[Any, dict | None]:
        """The serving candidate's prediction of ``x`` (and its class probabilities)."""
        model = self.serving.model
        if classifier:
            proba = model.predict_proba_one(x)
            return (max(proba, key=proba.get) if proba else None), proba
        return model.predict_one(x), None

    def step(
        self,
        x: dict,
        y: Any,
        champion_loss: float,
        classifier: bool,
        z: float,
        margin: float,
        min_events: int,
        max_events: int,
        rate: float = 0.0,
        known: float | None = None,
        behind_events: int | None = None,
    ) -> tuple[Candidate | None, list[Candidate]]:
        """Race one labelled event: each candidate predicts it, is scored, then learns it.

        ``known`` is the serving candidate's loss on this event, when its prediction was
        already made (it was served); ``rate`` the weight of this event in each candidate's
        recent lead (0: not kept). A candidate can be promoted after ``min_events``, once
        its lead is sound and the champion got worse (:meth:`champion_worse`), and given up
        for being behind after ``behind_events`` (default: ``min_events``)."""
        ready = min_events if behind_events is None else min(behind_events, min_events)
        # The champion's level: the plain mean of its losses over the first events raced,
        # then an exponential mean over about LEVEL_EVENTS.
        self.raced = raced = self.raced + 1
        weight = max(1.0 / raced, _LEVEL_RATE)
        level = self.level
        level[0] += (champion_loss - level[0]) * weight
        level[1] += (champion_loss * champion_loss - level[1]) * weight
        worse = None  # asked once per event, when a candidate could be promoted
        winner = None
        dropped = []
        serving = self.serving
        for c in self.candidates:
            model = c.model
            if c is serving and known is not None:
                loss = known
            elif classifier:
                proba = model.predict_proba_one(x)
                loss = 0.0 if proba and max(proba, key=proba.get) == y else 1.0
            else:
                loss = abs(y - (model.predict_one(x) or 0.0))
            model.learn_one(x, y)
            d = champion_loss - loss
            c.n += 1
            if d:
                c.total += d
                c.squares += d * d
            if rate:
                c.recent += (d - c.recent) * rate
            if c.n < ready:
                continue
            lead, error = c.lead, c.error
            if lead - z * error >= margin and c.n >= min_events:
                if worse is None:
                    worse = self.champion_worse(z, margin)
                if worse:
                    if winner is None or lead - z * error > winner.lead - z * winner.error:
                        winner = c
                    continue
            if c.n >= max_events or (c.source != "shadow" and lead + z * error < 0.0):
                dropped.append(c)
        if winner is not None:
            self.candidates.remove(winner)
        for c in dropped:
            self.candidates.remove(c)
        return winner, dropped

    def choose(self, min_events: int, threshold: float) -> tuple[Candidate | None, bool]:
        """Serve the candidate with the largest recent lead above ``threshold`` (raced for at
        least ``min_events``); one already serving keeps serving while its recent lead stays
        positive, so that the choice does not flap on noise. Returns the one serving now and
        whether that changed."""
        before = self.serving
        best = None
        for c in self.candidates:
            if c.n < min_events:
                continue
            bar = 0.0 if c is before else threshold
            if c.recent > bar and (best is None or c.recent > best.recent):
                best = c
        self.serving = best
        return best, best is not before

    def best(self) -> Candidate | None:
        """The candidate with the largest z (the one closest to promotion)."""
        return max(self.candidates, key=lambda c: c.z, default=None)
