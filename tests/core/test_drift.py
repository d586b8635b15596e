from __future__ import annotations

import copy
import dataclasses
import pickle
import random

import pytest

from stream_learner.core.drift import (
    DriftSignal,
    ErrorDriftMonitor,
    FeatureDriftMonitor,
    _Feature,
    _renewed,
)
from stream_learner.errors import ConfigError


def bernoulli(rates: list[tuple[float, int]], seed: int = 7) -> list[float]:
    """0/1 losses: ``n`` draws at each error rate, in order."""
    rng = random.Random(seed)
    return [float(rng.random() < p) for p, n in rates for _ in range(n)]


def signals(monitor: ErrorDriftMonitor, losses: list[float]) -> list[DriftSignal]:
    return [s for i, loss in enumerate(losses) if (s := monitor.update(loss, i))]


# -- performance --------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_a_rise_in_error_is_reported_once_as_drift_soon_after_the_change(detector):
    losses = bernoulli([(0.1, 5000), (0.35, 5000)])
    found = signals(ErrorDriftMonitor(detector), losses)
    drifts = [s for s in found if s.level == "drift"]
    assert len(drifts) == 1  # re-armed after the detection: not reported again and again
    d = drifts[0]
    assert 5000 <= d.index < 5500
    assert (d.kind, d.detector, d.direction, d.feature) == ("performance", detector, "up", None)
    assert d.after > d.before


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_a_warning_comes_no_later_than_the_drift(detector):
    losses = bernoulli([(0.1, 5000), (0.2, 5000)])
    found = signals(ErrorDriftMonitor(detector), losses)
    first_warning = min(s.index for s in found if s.level == "warning")
    first_drift = min(s.index for s in found if s.level == "drift")
    assert 5000 <= first_warning <= first_drift


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
def test_a_fall_in_error_is_improvement_not_drift(detector):
    """A model still learning (or a tree that just split) gets better: not degradation."""
    monitor = ErrorDriftMonitor(detector)
    assert signals(monitor, bernoulli([(0.45, 3000), (0.1, 7000)])) == []
    if detector == "adwin":  # ADWIN saw the change, and it was counted as an improvement
        assert monitor.improvements >= 1


def test_a_stationary_error_stream_raises_no_drift():
    monitor = ErrorDriftMonitor()
    found = signals(monitor, bernoulli([(0.15, 100_000)], seed=3))
    assert [s for s in found if s.level == "drift"] == []


def test_reset_rearms_the_detectors():
    monitor = ErrorDriftMonitor()
    losses = bernoulli([(0.1, 3000), (0.4, 3000)])
    assert any(s.level == "drift" for s in signals(monitor, losses))
    # After a reset the current (high) level is the baseline: staying there is no drift.
    monitor.reset()
    assert [
        s for s in signals(monitor, bernoulli([(0.4, 5000)], seed=8)) if s.level == "drift"
    ] == []


@pytest.mark.parametrize(
    ("detector", "params"),
    [("adwin", {"delta": 0.01, "warning_delta": 0.05, "clock": 8}), ("page_hinkley", {})],
)
def test_detectors_are_renewed_as_river_clones_them(detector, params):
    monitor = ErrorDriftMonitor(detector, **params)
    for made in (monitor._warning, monitor._drift):
        renewed = _renewed(made)
        assert type(renewed) is type(made) and renewed is not made
        assert renewed._get_params() == made.clone()._get_params() == made._get_params()
    losses = bernoulli([(0.1, 3000), (0.4, 3000), (0.1, 3000), (0.5, 3000)])
    assert sum(s.level == "drift" for s in signals(monitor, losses)) >= 2  # renewed on the way


def test_index_defaults_to_the_count_of_updates():
    monitor = ErrorDriftMonitor()
    found = [s for loss in bernoulli([(0.05, 2000), (0.6, 1000)]) if (s := monitor.update(loss))]
    assert found and 2000 < found[0].index <= 3000


def test_the_monitor_pickles_and_deepcopies_mid_stream_without_changing_what_it_reports():
    losses = bernoulli([(0.1, 4000), (0.3, 4000)])
    monitor = ErrorDriftMonitor()
    signals(monitor, losses[:3000])
    clones = [pickle.loads(pickle.dumps(monitor)), copy.deepcopy(monitor)]
    expected = [s for i, loss in enumerate(losses[3000:]) if (s := monitor.update(loss, i))]
    assert expected
    for clone in clones:
        assert [
            s for i, loss in enumerate(losses[3000:]) if (s := clone.update(loss, i))
        ] == expected


def _public_api(monitor: ErrorDriftMonitor) -> ErrorDriftMonitor:
    """The same monitor on River's public ADWIN API (``update``, ``drift_detected``)."""
    monitor._rust = False
    return monitor


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("params", [{}, {"delta": 0.01, "warning_delta": 0.05, "clock": 8}])
def test_adwin_read_through_its_rust_window_reports_what_the_public_api_does(seed, params):
    rng = random.Random(seed)
    # 0/1 losses whose rate goes up and down, then absolute errors that jump.
    losses = bernoulli([(0.1, 3000), (0.3, 2000), (0.05, 3000), (0.5, 1500), (0.2, 2000)], seed)
    losses += [abs(rng.gauss(1.0 if i < 3000 else 1.6, 1.0)) for i in range(6000)]
    fast = ErrorDriftMonitor("adwin", **params)
    reference = _public_api(ErrorDriftMonitor("adwin", **params))
    assert fast._rust  # the fast path is the one under test
    found = signals(fast, losses)
    assert found == signals(reference, losses)
    assert any(s.level == "drift" for s in found) and fast.improvements > 0
    assert fast.improvements == reference.improvements
    assert (fast._n, fast._total) == (reference._n, reference._total)
    for a, b in ((fast._warning, reference._warning), (fast._drift, reference._drift)):
        assert (a.width, a.total, a.variance) == (b.width, b.total, b.variance)


def test_detector_parameters_reach_river():
    # A stricter delta needs more evidence: it cannot fire before the default does.
    losses = bernoulli([(0.1, 3000), (0.2, 3000)])
    default = min(s.index for s in signals(ErrorDriftMonitor(), losses) if s.level == "drift")
    strict = [s.index for s in signals(ErrorDriftMonitor(delta=1e-6), losses) if s.level == "drift"]
    assert not strict or strict[0] >= default
    assert ErrorDriftMonitor("page_hinkley", threshold=80.0)._drift.threshold == 80.0
    assert ErrorDriftMonitor("page_hinkley", threshold=80.0)._warning.threshold == 40.0


@pytest.mark.parametrize(
    ("args", "params", "message"),
    [
        (("kswin",), {}, "drift.detector: 'kswin'; choose one of: adwin, page_hinkley"),
        (("adwin",), {"threshold": 3.0}, "drift.threshold: unknown for adwin; choose from: delta"),
        (("page_hinkley",), {"clock": 3}, "drift.clock: unknown for page_hinkley"),
        (("adwin",), {"delta": 0.05}, "warning_delta must be larger than delta"),
        (("page_hinkley",), {"warning_threshold": 60.0}, "warning_threshold must be below"),
        (("page_hinkley",), {"min_instances": "many"}, "drift.min_instances: 'many'; expected a"),
    ],
)
def test_bad_configuration_is_a_config_error_naming_the_key(args, params, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        ErrorDriftMonitor(*args, **params)


def test_signals_are_frozen():
    signal = DriftSignal("performance", "adwin", "drift", "up", 1, 0.1, 0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        signal.level = "warning"  # type: ignore[misc]


# -- data ---------------------------------------------------------------------------------


def feature_stream(n: int, shift_at: int | None = None, shift: float = 1.0, seed: int = 1):
    """Three independent features: a standard normal (which moves by ``shift`` at
    ``shift_at``), a uniform integer and a string."""
    rng = random.Random(seed)
    for i in range(n):
        moved = shift if shift_at is not None and i >= shift_at else 0.0
        yield {"a": rng.gauss(moved, 1.0), "n": rng.randint(0, 20), "city": rng.choice("xyz")}


def data_signals(monitor: FeatureDriftMonitor, xs) -> list[DriftSignal]:
    return [s for i, x in enumerate(xs) for s in monitor.update(x, i)]


@pytest.mark.parametrize(("shift", "direction"), [(0.5, "up"), (-0.5, "down")])
def test_a_mean_shift_of_one_feature_is_found_in_both_directions(shift, direction):
    found = data_signals(FeatureDriftMonitor(), feature_stream(20_000, 10_000, shift))
    assert [(s.feature, s.direction) for s in found] == [("a", direction)]
    s = found[0]
    assert (s.kind, s.level, s.detector) == ("data", "drift", "page_hinkley")
    assert 10_000 <= s.index < 11_000
    assert abs(s.before) < 0.2 and abs(s.after - shift) < 0.4


def test_stationary_features_raise_nothing():
    monitor = FeatureDriftMonitor()
    assert data_signals(monitor, feature_stream(100_000, seed=2)) == []


def test_a_signal_comes_only_at_the_end_of_a_block():
    monitor = FeatureDriftMonitor(block=50)
    outs = [monitor.update(x, i) for i, x in enumerate(feature_stream(5000, 2000, 5.0))]
    assert all(out == () for i, out in enumerate(outs) if (i + 1) % 50)
    assert any(outs)


def test_string_features_are_not_tracked_and_numbers_are_capped():
    monitor = FeatureDriftMonitor(block=10, max_features=2)
    xs = [{"s": "a", "b": 1.0, "c": 2.0, "d": 3.0} for _ in range(10)]
    data_signals(monitor, xs)
    assert list(monitor._features) == ["b", "c"]  # in name order; "s" is categorical
    assert monitor.untracked == 1  # "d": over the cap


def test_a_feature_that_appears_later_is_tracked_from_then_on():
    def xs():
        rng = random.Random(3)
        for i in range(30_000):
            x = {"a": rng.gauss(0, 1)}
            if i >= 5000:
                x["late"] = rng.gauss(0 if i < 20_000 else 2, 1)
            yield x

    found = data_signals(FeatureDriftMonitor(), xs())
    assert [s.feature for s in found] == ["late"]
    assert 20_000 <= found[0].index < 21_000


def test_a_feature_missing_from_some_events_is_averaged_over_those_that_have_it():
    rng = random.Random(4)
    xs = [{"a": rng.gauss(0 if i < 10_000 else 3, 1)} if i % 3 else {} for i in range(20_000)]
    found = data_signals(FeatureDriftMonitor(), xs)
    assert [s.feature for s in found] == ["a"]


def test_a_constant_feature_that_starts_moving_is_drift():
    xs = [{"k": 1.0 if i < 5000 else 1.5} for i in range(6000)]
    found = data_signals(FeatureDriftMonitor(), xs)
    assert [(s.feature, s.direction) for s in found] == [("k", "up")]


def test_memory_does_not_grow_with_ever_new_feature_names():
    monitor = FeatureDriftMonitor(block=10, max_features=3)
    data_signals(monitor, [{f"id{i}": 1.0} for i in range(10_000)])
    assert len(monitor._features) == 3
    assert len(monitor._known) == 30


def test_the_data_monitor_pickles_mid_block_without_changing_what_it_reports():
    xs = list(feature_stream(20_000, 10_000, 1.0))
    monitor = FeatureDriftMonitor()
    data_signals(monitor, xs[:9_950])
    clone = pickle.loads(pickle.dumps(monitor))
    rest = xs[9_950:]
    assert data_signals(clone, rest) == data_signals(monitor, rest) != []
    assert data_signals(copy.deepcopy(monitor), rest[:10]) == []


class _OnePass(FeatureDriftMonitor):
    """The definition the monitor implements: register the block's new names, then test
    every tracked feature in insertion order, dropping one that shows a string."""

    def _flush(self, block, index):
        for name in sorted(set().union(*block) - self._known, key=str):
            if type(next(x[name] for x in block if name in x)) is str:
                pass
            elif len(self._features) < self.max_features:
                self._features[name] = _Feature()
            elif len(self._known) < 10 * self.max_features:
                self.untracked += 1
            else:
                continue
            self._known.add(name)
        found = []
        for name, feature in list(self._features.items()):
            values = [x[name] for x in block if name in x]
            try:
                total = sum(values)
            except TypeError:
                del self._features[name]
                continue
            if values and (s := self._feed(feature, name, values, total, len(values), index)):
                found.append(s)
        return tuple(found)


def messy_stream(n: int, seed: int):
    """Features that shift, go missing, turn up late, turn out categorical, or keep coming."""
    rng = random.Random(seed)
    for i in range(n):
        x = {"a": rng.gauss(0.0 if i < n // 2 else 0.8, 1.0), "flag": rng.random() < 0.3}
        if rng.random() < 0.8:
            x["b"] = rng.gauss(-1.0 if (i // 1500) % 2 else 1.0, 2.0)
        if i > n // 5:
            x["late"] = rng.uniform(0, 10)
        if i % 7 == 0:
            x["city"] = rng.choice("pq")
        if i > n // 3:
            x["mixed"] = rng.random() if i != 2 * n // 3 else "oops"  # turns categorical
        if i == 2 * n // 3 + 1:
            x["after"] = 1.0  # new in the block where "mixed" is dropped: is its slot free?
        if i > n // 2 and i % 97 == 0:
            x[f"id{i}"] = 1.0  # ever-new names: past max_features, then past 10 times that
        yield x


@pytest.mark.parametrize(("seed", "block", "max_features"), [(1, 20, 6), (2, 7, 3), (3, 50, 50)])
def test_the_data_monitor_does_what_its_one_pass_definition_says(seed, block, max_features):
    params = {"block": block, "reference": 100, "threshold": 5.0, "max_features": max_features}
    monitor, reference = FeatureDriftMonitor(**params), _OnePass(**params)
    xs = list(messy_stream(12_000, seed))
    found = [monitor.update(x, i) for i, x in enumerate(xs)]
    assert found == [reference.update(x, i) for i, x in enumerate(xs)]
    assert sum(map(len, found)) >= 2
    assert list(monitor._features) == list(reference._features)
    assert monitor._known == reference._known
    assert monitor.untracked == reference.untracked
    for name, f in monitor._features.items():
        g = reference._features[name]
        assert (f.n, f.total, f.squares, f.scale, f.sum_means, f.n_means) == (
            g.n,
            g.total,
            g.squares,
            g.scale,
            g.sum_means,
            g.n_means,
        )


def test_a_data_monitor_pickled_before_pending_had_its_name_restores():
    xs = list(feature_stream(3000, seed=5))
    monitor = FeatureDriftMonitor(block=40)
    data_signals(monitor, xs[:1010])
    state = dict(vars(monitor))
    state["_buffer"] = state.pop("pending")  # the attribute's earlier name
    old = FeatureDriftMonitor.__new__(FeatureDriftMonitor)
    old.__setstate__(state)
    restored = pickle.loads(pickle.dumps(old))
    assert restored.pending == monitor.pending and len(restored.pending) == 10
    assert data_signals(restored, xs[1010:]) == data_signals(monitor, xs[1010:])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"block": 0}, "feature_drift.block: 0; expected an integer >= 1"),
        ({"threshold": -1.0}, "feature_drift.threshold: -1.0; expected a number > 0"),
        ({"max_features": 2.5}, "feature_drift.max_features: 2.5"),
    ],
)
def test_bad_data_monitor_configuration_names_the_key(params, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        FeatureDriftMonitor(**params)


def test_a_feature_monitor_pickles_to_the_same_bytes_whatever_the_hash_seed():
    """Snapshots are compared and verified by their bytes: a set pickled in hash order would
    make them depend on the process's hash seed."""
    import os
    import subprocess
    import sys

    script = (
        "import hashlib, pickle\n"
        "from stream_learner.core.drift import FeatureDriftMonitor\n"
        "m = FeatureDriftMonitor(block=10, reference=20, max_features=5)\n"
        "for i in range(60):\n"
        "    m.update({f'f{j}': float(i % (j + 2)) for j in range(i % 40)}, i)\n"
        "print(hashlib.sha256(pickle.dumps(m)).hexdigest())\n"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "9", "12", "40")
    }
    assert len(digests) == 1
