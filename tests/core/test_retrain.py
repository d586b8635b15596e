from __future__ import annotations

import concurrent.futures
import itertools
import multiprocessing
import pickle

import pytest
from river.datasets import synth

from stream_learner.core.events import Event
from stream_learner.core.models import ModelSpec, build_model
from stream_learner.core.policy import Decision
from stream_learner.core.retrain import (
    Example,
    RecentWindow,
    RetrainConfig,
    RetrainJob,
    RetrainResult,
)
from stream_learner.errors import ConfigError
from tests.core.specs import TREE

CAUSE = Decision("k", 0, 0.0, "performance", "retrain", "performance_degraded", "test", "stateless")


def sea(variant: int, n: int, seed: int, start: int = 0) -> list[Event]:
    pairs = itertools.islice(synth.SEA(variant, noise=0.1, seed=seed), n)
    return [
        Event(f"e{start + i}", "k", {f"x{k}": v for k, v in x.items()}, y)
        for i, (x, y) in enumerate(pairs)
    ]


def prequential(model, evts: list[Event], start: int) -> list[Example]:
    """Test-then-train ``model`` on ``evts``, recording each prediction as the learner does."""
    out = []
    for i, e in enumerate(evts):
        proba = model.predict_proba_one(e.x)
        out.append(Example(start + i, e, max(proba, key=proba.get) if proba else None, proba))
        model.learn_one(e.x, e.y)
    return out


@pytest.fixture(scope="module")
def after_change():
    """A tree that learned SEA's concept 3 for 10,000 events, then concept 2 for 700 (its
    prequential record on those is what the champion is judged by)."""
    champion = build_model(TREE)
    prequential(champion, sea(3, 10_000, seed=1), 0)
    examples = prequential(champion, sea(2, 700, seed=2, start=10_000), 10_000)
    return champion, examples


def job(kind: str, champion, examples: list[Example], margin: float = 0.0, spec=TREE) -> RetrainJob:
    return RetrainJob(
        key="k",
        number=1,
        kind=kind,
        spec=spec,
        base=champion if kind == "stateful" else None,
        train=tuple(examples[:-200]),
        holdout=tuple(examples[-200:]),
        margin=margin,
        decision=CAUSE,
        through=examples[-1].index,
    )


def test_a_cold_candidate_of_the_new_concept_is_promoted(after_change):
    champion, examples = after_change
    result = job("stateless", champion, examples).run()
    assert (result.key, result.number, result.kind, result.decision) == ("k", 1, "stateless", CAUSE)
    assert (result.n_train, result.n_holdout, result.metric) == (500, 200, "accuracy")
    recorded = sum(ex.y_pred == ex.event.y for ex in examples[-200:]) / 200
    assert result.champion_score == pytest.approx(recorded)  # the champion's own record
    assert result.challenger_score > result.champion_score + 0.05
    assert result.promoted
    assert result.duration_s > 0
    # It was judged on the holdout, then learned it: it has seen every example.
    assert result.through == examples[-1].index
    fresh = build_model(TREE)
    for ex in examples:
        fresh.learn_one(ex.event.x, ex.event.y)
    probe = sea(2, 300, seed=9)
    assert [result.candidate.predict_one(e.x) for e in probe] == [
        fresh.predict_one(e.x) for e in probe
    ]


def test_the_margin_must_be_beaten_and_a_kept_champion_ships_no_model(after_change):
    champion, examples = after_change
    gap = job("stateless", champion, examples).run()
    margin = gap.challenger_score - gap.champion_score + 0.01
    result = job("stateless", champion, examples, margin=margin).run()
    assert not result.promoted
    assert result.candidate is None
    assert result.margin == margin


def test_a_stateful_candidate_is_judged_like_for_like_against_the_live_model(after_change):
    champion, examples = after_change
    before = pickle.dumps(champion)
    result = job("stateful", champion, examples).run()
    assert pickle.dumps(champion) == before  # the base is copied, never trained in place
    right = sum(champion.predict_one(ex.event.x) == ex.event.y for ex in examples[-200:])
    assert result.champion_score == pytest.approx(right / 200)  # re-scored, not its record
    assert result.through == examples[-1].index  # the base had learned everything already


def test_run_is_pure_and_repeatable(after_change):
    champion, examples = after_change
    j = job("stateless", champion, examples)
    state = pickle.dumps(j)
    first, second = j.run(), j.run()
    assert pickle.dumps(j) == state
    assert (first.champion_score, first.challenger_score) == (
        second.champion_score,
        second.challenger_score,
    )


def test_lower_is_better_metrics_promote_the_lower_score():
    spec = ModelSpec.from_dict(
        {"task": "regression", "pipeline": [{"estimator": "linear_model.LinearRegression"}]}
    )

    def examples(slope: float, start: int, n: int) -> list[Example]:
        out = []
        for i in range(n):
            x = {"a": (i % 10) / 10}
            out.append(
                Example(start + i, Event(f"r{start + i}", "k", x, slope * x["a"]), 0.0, None)
            )
        return out

    # The champion predicted 0.0 throughout: a large MAE. A fresh linear model does far better.
    exs = examples(3.0, 0, 2000)
    result = job("stateless", None, exs, spec=spec).run()
    assert result.metric == "mae"
    assert result.challenger_score < result.champion_score
    assert result.promoted


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"kind": "hot"}, "kind: 'hot'; choose one of: stateful, stateless"),
        ({"kind": "stateful", "base": None}, "a stateful retrain needs the live model"),
        ({"holdout": ()}, "a retrain needs held-out events"),
    ],
)
def test_a_job_that_cannot_run_is_refused_when_built(after_change, change, error):
    champion, examples = after_change
    fields = job("stateless", champion, examples).__dict__ | change
    with pytest.raises((ConfigError, ValueError), match=error):
        RetrainJob(**fields)


def test_the_job_runs_in_a_worker_process_like_inline(after_change):
    champion, examples = after_change
    j = job("stateful", champion, examples)
    inline = j.run()
    context = multiprocessing.get_context("spawn")  # nothing inherited: all of it is pickled
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        remote = pool.submit(RetrainJob.run, j).result(timeout=120)
    assert isinstance(remote, RetrainResult)
    assert (remote.champion_score, remote.challenger_score, remote.promoted) == (
        inline.champion_score,
        inline.challenger_score,
        inline.promoted,
    )


# -- window and config -----------------------------------------------------------------------


def test_the_window_is_bounded_and_returns_newer_examples_in_order():
    window = RecentWindow(100)
    e = Event("e", "k", {"a": 1.0}, True)
    for i in range(1, 1001):
        window.append(Example(i, e, True, None))
    assert len(window) == 100
    assert [ex.index for ex in window][:2] == [901, 902]
    assert [ex.index for ex in window.after(995)] == [996, 997, 998, 999, 1000]
    assert window.after(1000) == []
    assert len(window.after(0)) == 100


def test_retrain_config_from_dict():
    assert RetrainConfig.from_dict({"holdout": 100, "margin": 0}) == RetrainConfig(
        holdout=100, margin=0.0
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"hold_out": 100}, "retrain.hold_out: unknown key; accepted: window, holdout"),
        ({"margin": -0.1}, "retrain.margin: -0.1; expected a number >= 0"),
        ({"holdout": 0}, "retrain: holdout and min_train must be at least 1"),
        ({"window": 400}, "retrain.window: 400 is smaller than min_train \\+ holdout"),
    ],
)
def test_bad_retrain_tables_name_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        RetrainConfig.from_dict(table)
