"""Drift detection: is the model getting worse, and are its inputs moving?

Two monitors, two signals:

- :class:`ErrorDriftMonitor` watches the per-event loss of the prequential predictions (the
  *performance* signal). It needs labels, so it is late when labels are late, but it is the
  signal that says the model is wrong.
- :class:`FeatureDriftMonitor` watches the numeric input features (the *data* signal). It
  needs no labels, so it can see a shift first, but a moved input does not always hurt the
  model; the trigger policy treats it as a warning unless told otherwise.

Both return :class:`DriftSignal` records and re-arm after a detection, so one change is
reported once, not on every following event (River issue #574).

Performance drift is *direction-aware*: ADWIN cuts its window whenever the two halves
differ, including when the error falls (a model still learning, a tree that just split).
That is improvement, not degradation: it is counted in ``improvements`` and never reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import chain
from operator import itemgetter, mul
from typing import Any

from river import drift

from stream_learner.core import pickling
from stream_learner.errors import ConfigError

__all__ = ["DETECTORS", "DriftSignal", "ErrorDriftMonitor", "FeatureDriftMonitor"]

#: Detectors an :class:`ErrorDriftMonitor` can run.
DETECTORS = ("adwin", "page_hinkley")

_NO_SIGNALS: tuple[DriftSignal, ...] = ()


@dataclass(frozen=True, slots=True)
class DriftSignal:
    """One detected change.

    ``before``/``after`` are means of the watched value (the loss, or a feature) on either side
    of the change; ``index`` is the caller's event index at detection.
    """

    kind: str  # "performance" | "data"
    detector: str  # "adwin" | "page_hinkley"
    level: str  # "warning" | "drift"
    direction: str  # "up" | "down"
    index: int
    before: float
    after: float
    feature: str | None = None


def _config_error(where: str, name: str, detail: str) -> ConfigError:
    return ConfigError(f"{where}.{name}: {detail}")


_ADWIN_PARAMS = (
    "delta",
    "warning_delta",
    "clock",
    "max_buckets",
    "min_window_length",
    "grace_period",
)
_PH_PARAMS = ("threshold", "warning_threshold", "delta", "alpha", "min_instances")


#: Constructor parameters by detector class, read once (see :func:`_renewed`).
_PARAMS: dict[type, tuple[str, ...]] = {}


def _renewed(detector: Any) -> Any:
    """A new, armed detector with ``detector``'s parameters: River's ``clone()``, without
    reading the constructor's signature each time (that was most of what building a new
    key's learner cost)."""
    cls = type(detector)
    names = _PARAMS.get(cls)
    if names is None:
        names = _PARAMS[cls] = tuple(detector._get_params())
    return cls(**{name: getattr(detector, name) for name in names})


class ErrorDriftMonitor:
    """Detects a rise of the per-event loss, at a warning and at a drift level.

    Two detectors of the same kind run side by side: a sensitive one for the warning level
    and a strict one for the drift level. A warning marks a likely change (and can confirm a
    data-drift signal); only a drift is degradation worth a retrain.

    - ``"adwin"``: ``delta`` (drift, default 0.002) and ``warning_delta`` (default 0.01: a
      larger delta cuts sooner). When ADWIN cuts, the mean loss of the dropped older part is
      compared with the kept recent part; only a rise is reported.
    - ``"page_hinkley"``: River's test in ``mode="up"``, which by construction only sees
      rises; ``threshold`` (default 50) and ``warning_threshold`` (default half of it).
      ``before`` is the mean loss since the detector was armed, ``after`` a recent average.

    Other keyword arguments go to the River detectors (``clock``, ``grace_period``, ... for
    ADWIN; ``delta``, ``alpha``, ``min_instances`` for Page-Hinkley).

    >>> import random
    >>> rng = random.Random(1)
    >>> monitor = ErrorDriftMonitor("adwin")
    >>> losses = [float(rng.random() < 0.1) for _ in range(3000)]  # 10% error...
    >>> losses += [float(rng.random() < 0.2) for _ in range(2000)]  # ...then 20% from 3000
    >>> for i, loss in enumerate(losses):
    ...     signal = monitor.update(loss, i)
    ...     if signal:
    ...         print(signal.level, signal.index, f"{signal.before:.3f} -> {signal.after:.3f}")
    warning 3295 0.094 -> 0.120
    drift 3327 0.094 -> 0.122
    """

    _rust = False  # a monitor pickled before this flag existed takes the public API's path

    def __init__(self, detector: str = "adwin", *, where: str = "drift", **params: float) -> None:
        if detector not in DETECTORS:
            choices = ", ".join(DETECTORS)
            raise _config_error(where, "detector", f"{detector!r}; choose one of: {choices}")
        allowed = _ADWIN_PARAMS if detector == "adwin" else _PH_PARAMS
        for name, value in params.items():
            if name not in allowed:
                choices = ", ".join(allowed)
                raise _config_error(where, name, f"unknown for {detector}; choose from: {choices}")
            if type(value) not in (int, float):
                raise _config_error(where, name, f"{value!r}; expected a number")
        self.detector = detector
        p = dict(params)
        try:
            if detector == "adwin":
                warning_delta = p.pop("warning_delta", 0.01)
                strict = drift.ADWIN(**{"delta": 0.002, **p})
                warning = drift.ADWIN(**{**p, "delta": warning_delta})
                if not warning.delta > strict.delta:
                    raise ValueError("warning_delta must be larger than delta (it cuts sooner)")
            else:
                threshold = p.pop("threshold", 50.0)
                warning_threshold = p.pop("warning_threshold", threshold / 2)
                warning = drift.PageHinkley(mode="up", threshold=warning_threshold, **p)
                strict = drift.PageHinkley(mode="up", threshold=threshold, **p)
                if not warning.threshold < strict.threshold:
                    raise ValueError("warning_threshold must be below threshold")
        except (TypeError, ValueError) as e:
            raise _config_error(where, detector, str(e)) from None
        self._ph = detector == "page_hinkley"
        # ADWIN.update is a Python wrapper round River's Rust window (``_helper``) that only
        # re-arms a detector that has fired and stores the flag the window returns. Fired
        # detectors are replaced here, so calling the window directly is the same test at
        # half the cost per event (the tests pin it against the public API).
        self._rust = not self._ph and all(
            callable(getattr(getattr(d, "_helper", None), "update", None))
            for d in (warning, strict)
        )
        self._warning = warning
        self._drift = strict
        self.improvements = 0  # ADWIN cuts toward lower loss: seen, not reported
        self._armed()

    def reset(self) -> None:
        """Re-arm both detectors (after a drift, or when a new model is promoted)."""
        self._warning = _renewed(self._warning)
        self._drift = _renewed(self._drift)
        self._armed()

    def _armed(self) -> None:
        # Count and sum of the losses since the drift detector was armed, and where the
        # warning detector was last armed within them: ADWIN's window is exactly the updates
        # since it was armed until it cuts, so the dropped part's mean needs no per-event
        # reads from River.
        self._n = self._total = 0.0
        self._n_warning = self._total_warning = 0.0
        self._recent = 0.0  # moving average of the loss: Page-Hinkley's "after"

    def update(self, loss: float, index: int | None = None) -> DriftSignal | None:
        """Feed one event's loss; return a signal on a rise, else ``None``.

        ``index`` is the caller's event index, copied into the signal (default: the number of
        updates since the last reset). When both levels fire at once, only the drift is
        returned.
        """
        self._n += 1
        if loss:  # the same sum; most losses are 0, and a float add makes a new object
            self._total += loss
        warning = self._warning
        strict = self._drift
        if self._rust:
            warned = warning._helper.update(loss)
            drifted = strict._helper.update(loss)
            if not (warned or drifted):
                return None
        else:
            warning.update(loss)
            strict.update(loss)
            if self._ph:
                self._recent += 0.01 * (loss - self._recent)
            drifted = strict.drift_detected
            if not (drifted or warning.drift_detected):
                return None
        n, total = self._n, self._total
        at = int(n) if index is None else index
        if drifted:
            signal = self._signal(strict, "drift", at, n, total)
            self.reset()  # one change, one drift: the warning detector starts over too
            return signal
        signal = self._signal(
            warning, "warning", at, n - self._n_warning, total - self._total_warning
        )
        self._warning = _renewed(warning)
        self._n_warning, self._total_warning = n, total
        return signal

    def _signal(self, det, level: str, at: int, n: float, total: float) -> DriftSignal | None:
        if self._ph:
            before, after = total / n, self._recent
        else:
            width, kept = det.width, det.total
            if not 0 < width < n:  # a detection is a cut, so this is only a guard
                return None
            before = (total - kept) / (n - width)
            after = kept / width
            if after <= before:
                self.improvements += 1
                return None
        return DriftSignal("performance", self.detector, level, "up", at, before, after)


class _Feature:
    """Per-feature state of the data monitor."""

    __slots__ = ("n", "total", "squares", "scale", "ph", "sum_means", "n_means")

    def __init__(self) -> None:
        self.n = 0  # reference values seen
        self.total = 0.0
        self.squares = 0.0
        self.scale = 0.0  # standard deviation of one value, once the reference is complete
        self.ph: drift.PageHinkley | None = None
        self.sum_means = 0.0  # block means since (re)armed: the "before" of a signal
        self.n_means = 0


class FeatureDriftMonitor:
    """Detects a shift in the mean of numeric input features, without labels.

    Per event it only appends ``x`` to the current block (this runs on the hot path for every
    event). Every ``block`` events it computes each feature's block mean, standardises it, and
    feeds it to a two-sided Page-Hinkley test per feature, so River runs once per feature per
    block, not per event:

    - The first ``reference`` values of a feature fix its scale (standard deviation ``s``);
      later block means are fed as ``mean / (s / sqrt(count))``, so one ``threshold`` fits
      every feature whatever its units. Block means of independent events are near-normal,
      which is what ``delta`` and ``threshold`` are set for: in a simulation of standard
      normal inputs, the defaults raised no false alarm in 200,000 blocks (20 million events
      at ``block=100``), and found a shift of a tenth of a standard deviation after a median
      of 35 blocks.
    - Both directions count. ``before`` is the mean of block means since the feature was
      (re)armed, ``after`` the block mean that tipped the test.
    - Features are tracked lazily as they appear, up to ``max_features``; later names are
      counted in ``untracked`` and ignored (and no longer remembered past ten times that many,
      so a stream of ever-new names cannot grow memory). A feature with a string value is a
      categorical one and is dropped; bools count as 0/1. A constant reference feature gets
      a tiny scale, so any later movement is a drift.
    - Only shifts in the mean are seen, and features are assumed roughly independent across
      events (strong autocorrelation inflates the statistic).

    >>> import random
    >>> rng = random.Random(0)
    >>> monitor = FeatureDriftMonitor()
    >>> found = []
    >>> for i in range(20_000):
    ...     found += monitor.update({"a": rng.gauss(1.0 if i >= 10_000 else 0.0, 1.0)}, i)
    >>> [(s.feature, s.direction, s.index) for s in found]
    [('a', 'up', 10199)]
    """

    def __init__(
        self,
        block: int = 100,
        reference: int = 1000,
        threshold: float = 15.0,
        delta: float = 0.5,
        max_features: int = 50,
        *,
        where: str = "feature_drift",
    ) -> None:
        for name, value in (
            ("block", block),
            ("reference", reference),
            ("max_features", max_features),
        ):
            if type(value) is not int or value < 1:
                raise _config_error(where, name, f"{value!r}; expected an integer >= 1")
        for name, value in (("threshold", threshold), ("delta", delta)):
            if type(value) not in (int, float) or not value > 0:
                raise _config_error(where, name, f"{value!r}; expected a number > 0")
        self.block = block
        self.reference = reference
        self.threshold = float(threshold)
        self.delta = float(delta)
        self.max_features = max_features
        self._features: dict[str, _Feature] = {}
        self._known: set[str] = set()  # every name seen, tracked or not
        self.untracked = 0  # features not tracked because of max_features
        #: The events of the block being filled. A caller on a hot path may append to it
        #: itself and call :meth:`flush` once it holds ``block`` events: that is :meth:`update`.
        self.pending: list[dict] = []

    def __getstate__(self) -> dict:
        # The set of known names as a sorted list: a set pickles in hash order, which
        # changes with the process's hash seed, and a snapshot's bytes should not.
        return {**vars(self), "_known": sorted(self._known)}

    def __setstate__(self, state: dict) -> None:
        if "_buffer" in state:  # a monitor pickled before ``pending`` had its name
            state["pending"] = state.pop("_buffer")
        pickling.set_attributes(self, state)  # interns the names, as pickle's default does
        self._known = set(self._known)  # a list since it is pickled sorted; a set before

    def update(self, x: dict, index: int) -> tuple[DriftSignal, ...]:
        """Add one event's features; return the signals of a completed block (usually none)."""
        pending = self.pending
        pending.append(x)
        if len(pending) < self.block:
            return _NO_SIGNALS
        return self.flush(index)

    def flush(self, index: int) -> tuple[DriftSignal, ...]:
        """Test the pending block and start a new one; ``index`` goes into the signals."""
        block = self.pending
        self.pending = []
        return self._flush(block, index)

    def _flush(self, block: list[dict], index: int) -> tuple[DriftSignal, ...]:
        # Tracked features first, then the names new in this block, then the new features: the
        # outcome of registering new names first and then testing every feature in insertion
        # order (new ones last; a feature dropped in this block frees its slot only after the
        # registration), with a cheap test for the usual "no new names".
        features = self._features
        size = len(block)
        signals: list[DriftSignal] = []
        dropped = []
        complete = True  # every event has every tracked feature
        for name, feature in list(features.items()):  # insertion order: stable output
            if feature.ph is None:  # building the reference: the values are needed
                numeric = _numeric(block, name)
            else:  # monitoring: the sum and count will do (this runs per feature per block)
                try:
                    numeric = None, sum(map(itemgetter(name), block)), size
                except KeyError:  # not in every event
                    numeric = _numeric(block, name)
                except TypeError:  # a string value
                    numeric = None
            if numeric is None:  # a string value: a categorical feature, never tracked
                dropped.append(name)
                complete = False
                continue
            count = numeric[2]
            if count != size:
                complete = False
            if count:
                signal = self._feed(feature, name, *numeric, index)
                if signal is not None:
                    signals.append(signal)
        # Every event holding exactly the tracked names (all of them, and no more keys) means
        # no new name: a sum of lengths instead of a look at every key.
        if complete and sum(map(len, block)) == size * len(features):
            added = ()
        else:
            added = self._register(block)
        for name in dropped:
            del features[name]
        for name in added:
            numeric = _numeric(block, name)
            if numeric is None:
                del features[name]
            else:  # a new feature builds its reference: no signal yet
                self._feed(features[name], name, *numeric, index)
        return tuple(signals)

    def _register(self, block: list[dict]) -> list[str]:
        """Note the names new in ``block``; return those that are now tracked features."""
        known = self._known
        if known.issuperset(chain.from_iterable(block)):
            return []
        added = []
        for name in sorted(set().union(*block) - known, key=str):  # rare: sorting costs nothing
            if type(next(x[name] for x in block if name in x)) is str:
                pass  # categorical: known, never tracked
            elif len(self._features) < self.max_features:
                self._features[name] = _Feature()
                added.append(name)
            elif len(known) < 10 * self.max_features:
                self.untracked += 1
            else:  # a stream of ever-new names: stop remembering them (bounded memory)
                continue
            known.add(name)
        return added

    def _feed(
        self, f: _Feature, name: str, values: list | None, total: float, count: int, index: int
    ) -> DriftSignal | None:
        mean = total / count  # count >= 1: the name came from one of these events
        if f.ph is None:  # still building the reference scale
            f.n += count
            f.total += total
            f.squares += sum(map(mul, values, values))
            if f.n >= self.reference:
                var = max(f.squares / f.n - (f.total / f.n) ** 2, 0.0)
                f.scale = max(math.sqrt(var), 1e-9 * max(abs(f.total / f.n), 1.0))
                f.ph = self._new_test()
            return None
        f.ph.update(mean / (f.scale / math.sqrt(count)))
        if not f.ph.drift_detected:
            f.sum_means += mean
            f.n_means += 1
            return None
        before = f.sum_means / f.n_means if f.n_means else mean
        f.ph = self._new_test()
        f.sum_means, f.n_means = mean, 1  # the new regime starts with this block
        return DriftSignal(
            "data",
            "page_hinkley",
            "drift",
            "up" if mean > before else "down",
            index,
            before,
            mean,
            name,
        )

    def _new_test(self) -> drift.PageHinkley:
        return drift.PageHinkley(
            min_instances=10, delta=self.delta, threshold=self.threshold, alpha=1.0, mode="both"
        )


def _numeric(block: list[dict], name: str) -> tuple[list, float, int] | None:
    """The feature's values in the block, their sum and count; ``None`` if it is not numeric.

    Both steps run at C speed (``map``, ``sum``) when every event has the feature; the values
    may be empty when none has.
    """
    try:
        values = list(map(itemgetter(name), block))
    except KeyError:
        values = [x[name] for x in block if name in x]
    try:
        return values, sum(values), len(values)
    except TypeError:  # a string among the values: a categorical feature
        return None
