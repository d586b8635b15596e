"""A key budget is invisible in what the engine serves and decides: under a budget of one
or two resident keys (evictions and reloads at almost every input) the processor serves
the same predictions, takes the same decisions and ends with the same metrics as without
one, across delayed labels parked in an evicted key, pause and resume, retrains in flight
and a drift that starts a race.
"""

from __future__ import annotations

import random

import pytest

from stream_learner.core.codec import KeyCodec
from stream_learner.core.commands import Command
from stream_learner.core.events import Event, Label
from stream_learner.core.learner import Learner
from stream_learner.core.policy import PolicyConfig
from stream_learner.core.processor import (
    PAUSED,
    InlineRunner,
    MemoryKeyStore,
    Processor,
    RetrainStarted,
)
from stream_learner.core.retrain import RetrainConfig
from stream_learner.errors import DecodeError
from tests.core.specs import LINEAR, TREE

KEYS = ("a", "b", "c", "d", "e")


def _step(proc: Processor, item, refused: list) -> object:
    """Feed one input to ``proc`` as the service does; a refused one is noted, not raised."""
    try:
        if isinstance(item, Event):
            return proc.event(item)
        if isinstance(item, Label):
            return proc.label(item)
        return proc.command(item)
    except DecodeError as exc:
        refused.append((item.id, exc.reason))
        return None


def _inputs(n: int = 3000, seed: int = 3) -> list:
    """Interleaved keys with a concept flip half-way, 20 % prediction requests whose
    labels come 30 inputs later, a label before its key's first event, pause/resume and
    on-demand retrains, and a few inputs the model refuses."""
    rng = random.Random(seed)
    out: list = [Label("early", "e", True, 0.0)]
    waiting: list[tuple[int, Label]] = []
    for i in range(n):
        key = KEYS[min(int(rng.expovariate(0.9)), len(KEYS) - 1)]  # a skewed key mix
        x = {"u": rng.random(), "v": rng.random(), "w": rng.choice([0.0, 1.0])}
        y = (x["u"] + x["v"] > 1.0) != (i > n // 2)
        ts = float(i + 1)
        if rng.random() < 0.2:
            out.append(Event(f"p{i}", key, x, None, ts))
            waiting.append((i + 30, Label(f"p{i}", key, y, ts + 30)))
        else:
            out.append(Event(f"l{i}", key, x, y, ts))
        while waiting and waiting[0][0] <= i:
            out.append(waiting.pop(0)[1])
        if i == 900:
            out.append(Command("pause", "b", ts=ts))
        if i == 1200:
            out.append(Command("resume", "b", ts=ts))
        if i in (1000, 2100):
            out.append(Command("retrain", "c", reason="operator", ts=ts))
        if i == 1600:
            out.append(Command("retrain", "*", reason="every key", ts=ts))
        if i == 1800:
            out.append(Event("bad", "a", {"u": "text"}, True, ts))
    out.extend(label for _, label in waiting)
    return out


def _factory(spec):
    """Learners that decide often on a short stream (warm-up, cooldown and window small)."""

    def factory(key: str) -> Learner:
        return Learner(
            key,
            spec,
            policy=PolicyConfig(warmup=100, cooldown_events=100, interval_events=300),
            retrain=RetrainConfig(window=300, holdout=40, min_train=60, margin=0.0),
        )

    return factory


def _run(spec, inputs, max_keys: int, renew_every: int = 0):
    factory = _factory(spec)
    store = MemoryKeyStore() if max_keys else None
    proc = Processor(factory, InlineRunner(apply_after=40), max_keys=max_keys, store=store)
    codec = KeyCodec(factory)
    served, refused, kinds, most = [], [], [], 0
    proc.renewals = []  # what each renew() answered
    for i, item in enumerate(inputs):
        if renew_every and i % renew_every == 0:
            for key in list(proc.learners):
                before = proc.learners[key]
                done = proc.renew(key, codec.copy)
                assert (proc.learners[key] is not before) == done
                proc.renewals.append(done)
        out = _step(proc, item, refused)
        if out is not None and out is not PAUSED:
            served.append((item.id, out.y_pred, out.version, out.proba))
        kinds += [type(e).__name__ for e in proc.effects]
        proc.effects.clear()
        most = max(most, len(proc.learners))
    learners = dict(proc.learners)
    for key in proc.evicted:  # the final state of every key, for comparison
        learners[key] = proc.store.load(key).learner
    learners = {k: learners[k] for k in sorted(learners)}
    decisions = {
        k: [(d.index, d.trigger, d.action, d.code, d.reason) for d in lr.decisions]
        for k, lr in learners.items()
    }
    final = {
        k: (lr.evaluator.values(), lr.index, lr.version, lr.learned) for k, lr in learners.items()
    }
    return proc, served, refused, decisions, final, kinds, most


@pytest.mark.parametrize("spec", [LINEAR, TREE], ids=["linear", "tree"])
def test_a_budget_serves_and_decides_as_no_budget(spec):
    inputs = _inputs()
    _, served, refused, decisions, final, kinds, _ = _run(spec, inputs, 0)
    assert "RetrainStarted" in kinds and "RetrainApplied" in kinds  # the stream exercises it
    assert sum(len(d) for d in decisions.values()) > 10
    for budget in (1, 2):
        proc, served_b, refused_b, decisions_b, final_b, kinds_b, most = _run(spec, inputs, budget)
        assert proc.evictions > 500 and proc.reloads > 500
        assert kinds_b.count("KeyEvicted") == proc.evictions
        assert kinds_b.count("KeyReloaded") == proc.reloads
        assert served_b == served
        assert refused_b == refused
        assert decisions_b == decisions
        assert final_b == final
        # Over the budget only while keys with a retrain in flight must stay.
        assert most <= budget + 1 + len(KEYS)


@pytest.mark.parametrize("spec", [LINEAR, TREE], ids=["linear", "tree"])
def test_a_renewed_learner_serves_and_decides_as_the_one_it_replaced(spec):
    inputs = _inputs()
    _, served, refused, decisions, final, _, _ = _run(spec, inputs, 0)
    proc, served_r, refused_r, decisions_r, final_r, _, _ = _run(spec, inputs, 0, renew_every=7)
    assert proc.renewals.count(True) > 1000
    assert proc.renewals.count(False) > 10  # keys with a retrain in flight keep theirs
    assert (served_r, refused_r, decisions_r, final_r) == (served, refused, decisions, final)


def _budget(max_keys: int, factory=None) -> Processor:
    factory = factory or (lambda key: Learner(key, LINEAR))
    return Processor(factory, InlineRunner(), max_keys=max_keys, store=MemoryKeyStore())


def _changes(proc: Processor) -> list[tuple[str, str]]:
    """The processor's key effects since they were last cleared (and clear them); an
    eviction right after the key's input (it passed) is ``KeyPassed``."""
    found = [
        ("KeyPassed" if getattr(e, "passed", False) else type(e).__name__, e.key)
        for e in proc.effects
    ]
    proc.effects.clear()
    return [(kind, key) for kind, key in found if kind.startswith("Key")]


def test_a_key_that_comes_back_takes_the_least_recently_used_keys_place():
    proc = _budget(2)
    proc.event(Event("1", "a", {"u": 1.0}))  # a prediction: parked for its label
    proc.event(Event("2", "b", {"u": 1.0}, True))
    proc.event(Event("3", "a", {"u": 1.0}, True))  # a is now the most recent
    proc.effects.clear()
    # New while the budget is full: c passes (learned, then evicted), a and b stay.
    proc.event(Event("4", "c", {"u": 1.0}, True))
    assert _changes(proc) == [("KeyOpened", "c"), ("KeyPassed", "c")]
    assert sorted(proc.learners) == ["a", "b"] and list(proc.missed) == ["c"]
    # c comes back: admitted, and b, the least recently used, goes.
    proc.event(Event("5", "c", {"u": 2.0}, True))
    assert _changes(proc) == [("KeyReloaded", "c"), ("KeyEvicted", "b")]
    assert proc.learners["c"].learned == 2 and not proc.missed
    # b did not pass when it went: its next input passes, the one after brings it in.
    proc.event(Event("6", "b", {"u": 1.0}, True))
    assert _changes(proc) == [("KeyReloaded", "b"), ("KeyPassed", "b")]
    proc.event(Event("7", "b", {"u": 1.0}, True))
    assert _changes(proc) == [("KeyReloaded", "b"), ("KeyEvicted", "a")]
    assert proc.learners["b"].learned == 3
    out = proc.label(Label("1", "a", True))  # a passes; its parked prediction went with it
    assert out is not None and out.loss is not None
    assert _changes(proc) == [("KeyReloaded", "a"), ("KeyPassed", "a")]
    assert proc.resident("a").joiner.joined == 1  # reloaded for the caller: c goes
    assert sorted(proc.learners) == ["a", "b"] and proc.evicted == {"c"}


def test_the_keys_that_passed_are_remembered_up_to_the_budget():
    proc = _budget(2)
    for i, key in enumerate("abcdef"):
        proc.event(Event(str(i), key, {"u": 1.0}, True))
    assert sorted(proc.learners) == ["a", "b"] and list(proc.missed) == ["e", "f"]
    proc.event(Event("g", "c", {"u": 1.0}, True))  # forgotten: it passes again
    assert list(proc.missed) == ["f", "c"] and "c" in proc.evicted
    proc.drop([0])
    assert not proc.missed and not proc.learners and not proc.evicted


def test_a_passing_key_leaves_after_a_refused_or_paused_input():
    proc = _budget(1)
    proc.event(Event("1", "a", {"u": 1.0}, True))
    with pytest.raises(DecodeError, match="model_rejected"):
        proc.event(Event("2", "b", {"u": "not a number"}, True))
    assert list(proc.learners) == ["a"] and "b" in proc.evicted
    proc.command(Command("pause", "c"))  # keys not held yet: paused when they come
    proc.command(Command("pause", "d"))
    assert proc.event(Event("3", "c", {"u": 1.0}, True)) is PAUSED
    assert proc.label(Label("4", "d", True)) is PAUSED  # a label first opens its key
    assert list(proc.learners) == ["a"] and proc.evicted == {"b", "c", "d"}
    assert not proc.paused  # the pauses went with the keys' states
    assert proc.resident("d").learned == 0 and proc.paused == {"d"}


def test_a_key_with_a_retrain_in_flight_stays_resident():
    def factory(key: str) -> Learner:
        return Learner(key, LINEAR, retrain=RetrainConfig(min_train=1, holdout=1))

    proc = Processor(factory, InlineRunner(apply_after=5), max_keys=1, store=MemoryKeyStore())
    for i in range(30):
        proc.event(Event(str(i), "a", {"u": float(i % 3)}, i % 2 == 0))
    proc.command(Command("retrain", "a", reason="now"))
    assert any(isinstance(e, RetrainStarted) for e in proc.effects)
    proc.event(Event("b1", "b", {"u": 1.0}, True))  # over the budget: b passes
    assert list(proc.learners) == ["a"] and "b" in proc.evicted
    with pytest.raises(ValueError, match="retrain in flight"):
        proc.evict("a")
    proc.effects.clear()
    proc.event(Event("b2", "b", {"u": 1.0}, True))  # b comes back: a must stay, both held
    assert sorted(proc.learners) == ["a", "b"] and "a" in proc.pending
    assert _changes(proc) == [("KeyReloaded", "b")]
    proc.event(Event("c1", "c", {"u": 1.0}, True))  # c passes; a and b stay
    assert _changes(proc) == [("KeyOpened", "c"), ("KeyPassed", "c")]


def test_a_passing_key_whose_input_starts_a_retrain_is_admitted():
    def factory(key: str) -> Learner:
        return Learner(
            key, LINEAR, retrain=RetrainConfig(min_train=1, holdout=1),
            policy=PolicyConfig(warmup=0, cooldown_events=0, label_volume=5),
        )  # fmt: skip

    proc = Processor(factory, InlineRunner(apply_after=50), max_keys=1, store=MemoryKeyStore())
    proc.event(Event("x", "x", {"u": 1.0}, True))
    for i in range(5):  # a new key between a's inputs: a never comes in lately, it passes
        proc.event(Event(f"a{i}", "a", {"u": float(i)}, i % 2 == 0))
        if "a" in proc.pending:
            break
        assert "a" in proc.evicted
        proc.event(Event(f"n{i}", f"n{i}", {"u": 1.0}, True))
    assert "a" in proc.pending and list(proc.learners) == ["a"] and "x" in proc.evicted


def test_commands_reach_evicted_keys_and_a_revoke_forgets_them():
    store = MemoryKeyStore()
    proc = Processor(lambda key: Learner(key, LINEAR), InlineRunner(), max_keys=1, store=store)
    proc.event(Event("1", "a", {"u": 1.0}, True), partition=0)
    proc.event(Event("2", "b", {"u": 1.0}, True), partition=0)  # passes
    proc.event(Event("3", "c", {"u": 1.0}, True), partition=1)  # passes
    assert proc.evicted == {"b", "c"}
    proc.command(Command("pause", "*"), partition=0)  # both keys of partition 0
    assert proc.paused == {"b"} and proc.evicted == {"a", "c"}  # a was paused, then evicted
    assert proc.event(Event("4", "a", {"u": 1.0}, True)) is PAUSED  # its pause came back
    assert proc.drop([0]) == ["a", "b"]
    assert proc.evicted == {"c"} and list(store.states) == ["c"]


def test_a_budget_needs_a_store():
    with pytest.raises(ValueError, match="needs a store"):
        Processor(lambda key: Learner(key, LINEAR), InlineRunner(), max_keys=3)
