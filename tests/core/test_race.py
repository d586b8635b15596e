"""The prequential race: shadow candidates, the pool of retired models, promotion and
abandonment at deterministic input indexes, and everything surviving a snapshot."""

from __future__ import annotations

import itertools
import pickle
import random

import pytest
from river.datasets import synth

from stream_learner.core.events import Event, Label
from stream_learner.core.learner import Learner
from stream_learner.core.models import ModelSpec, build_model, quicken, regrow, settle
from stream_learner.core.race import Candidate, Race
from stream_learner.core.retrain import RetrainConfig
from stream_learner.core.snapshot import SnapshotMeta, assemble, decode_snapshot, encode_snapshot
from tests.core.specs import LINEAR, TREE
from tests.core.test_suite import events as stream_events

KEY = b"race-test-signing-key-0123456789"
#: The race with promotion possible after 50 events (the default waits 1,000): for the
#: tests of what a promotion does, on short streams.
FAST = RetrainConfig(race_min_events=50)


def concepts(*segments: tuple[bool, int], seed: int = 1) -> list[Event]:
    """SEA concept 3; a segment ``(True, n)`` serves its ``n`` events with labels flipped
    (another concept), ``(False, n)`` the original one."""
    source = synth.SEA(3, noise=0.05, seed=seed)
    out = []
    i = 0
    for flipped, n in segments:
        for x, y in itertools.islice(source, n):
            out.append(Event(f"e{i}", "k", {f"x{j}": v for j, v in x.items()}, y != flipped))
            i += 1
    return out


def feed(learner: Learner, evts: list[Event]) -> list:
    outs = []
    for e in evts:
        out = learner.learn(e)
        outs.append(out)
        if out.job is not None:
            learner.apply(out.job.run())
    return outs


def decisions(outs: list, action: str) -> list:
    return [d for o in outs for d in o.decisions if d.action == action]


# -- the paired statistic ----------------------------------------------------------------


def test_a_candidate_that_wins_every_disagreement_leads_by_the_rate_of_them():
    c = Candidate(None, "shadow", 0)
    for i in range(400):
        d = 1.0 if i % 4 == 0 else 0.0  # wins one event in four, never loses
        c.n += 1
        c.total += d
        c.squares += d * d
    assert c.lead == 0.25
    assert 0.02 < c.error < 0.025  # sqrt(0.25 * 0.75 / 400) ~ 0.0217
    assert c.z > 10


def test_the_race_promotes_only_a_sound_lead():
    class Always:  # predicts one class, learns nothing: a fixed competitor
        def __init__(self, y):
            self.y = y

        def predict_proba_one(self, x):
            return {self.y: 1.0}

        def learn_one(self, x, y):
            pass

    race = Race("performance", 0)
    race.candidates = [Candidate(Always(True), "shadow", 0), Candidate(Always(False), "pool", 0)]
    winner = None
    for i in range(1000):
        y = i % 10 != 0  # 90 % True; the champion is right half the time
        champion_loss = float(i % 2)
        winner, dropped = race.step({}, y, champion_loss, True, 3.0, 0.02, 50, 5000)
        if dropped:
            assert [c.model.y for c in dropped] == [False]  # trained, and soundly behind
        if winner is not None:
            break
    assert winner is not None and winner.model.y is True
    assert 50 <= winner.n < 200 and winner.lead - 3.0 * winner.error >= 0.02


def test_a_sound_lead_is_promoted_only_while_the_champion_is_soundly_worse_than_before():
    def race(before: float) -> tuple:
        r = Race("performance", 0, (before, before * (1 - before) / 4000))
        r.candidates = [Candidate(Fixed(True), "shadow", 0)]  # always right
        for i in range(3000):
            champion_loss = float(i % 4 == 0)  # wrong one event in four, all along
            winner, dropped = r.step({}, True, champion_loss, True, 3.0, 0.01, 1000, 2000)
            if winner or dropped:
                return i + 1, winner, dropped, r
        raise AssertionError("neither promoted nor given up")

    # Before the race the champion was wrong one event in ten: it got worse, by 15 points.
    at, winner, dropped, r = race(0.10)
    assert at == 1000 and winner is not None and not dropped
    assert r.champion_loss == pytest.approx(0.25, abs=0.03)
    # It was as bad before (and 2 points better is within the margin and the noise): the
    # candidate leads by 25 points, soundly, and is still given up when its time is out.
    for before in (0.25, 0.23):
        at, winner, dropped, r = race(before)
        assert at == 2000 and winner is None and [c.source for c in dropped] == ["shadow"]
        assert dropped[0].lead == 0.25 and dropped[0].z > 10


# -- through the learner -------------------------------------------------------------------


def test_a_leading_shadow_is_promoted_at_a_deterministic_index_and_reported():
    evts = concepts((False, 3000), (True, 3000))

    def go():
        learner = Learner("k", LINEAR, retrain=FAST)
        return learner, feed(learner, evts)

    (learner, outs), (twin, twin_outs) = go(), go()
    promoted = decisions(outs, "promote")
    assert len(promoted) == 1
    d = promoted[0]
    assert (d.trigger, d.code, d.values["source"]) == ("performance", "candidate_leads", "shadow")
    assert 3000 < d.index < 3500  # well before a window retrain could have been applied
    assert d.values["version"] == 2 and "standard errors" in d.reason
    at = d.index - 1  # outcomes are 0-based, input indexes 1-based
    assert outs[at].version == 2 and outs[at - 1].version == 1  # callers see the new version
    assert learner.race_promotions == {"shadow": 1}
    assert [v for v, _ in learner.pool] == [1]  # the champion retired to the pool
    assert decisions(twin_outs, "promote") == promoted
    assert [o.y_pred for o in outs] == [o.y_pred for o in twin_outs]
    assert pickle.dumps(learner) == pickle.dumps(twin)
    started = decisions(outs, "race")
    assert started[0].code == "race_started" and started[0].index < d.index
    # The retrain decided at the detection was superseded, and the outcome says so.
    assert [(x.action, x.code) for x in outs[at].decisions] == [
        ("promote", "candidate_leads"),
        ("abandon", "retrain_superseded"),
    ]


def test_a_candidate_that_cannot_lead_is_abandoned_with_a_logged_decision():
    # Labels flip for a fifth of the space only (SEA 3 -> 2): the linear model adapts by
    # itself, and a fresh one never leads it soundly.
    pairs = itertools.chain(
        itertools.islice(synth.SEA(3, noise=0.1, seed=1), 3000), synth.SEA(2, noise=0.1, seed=2)
    )
    evts = [
        Event(f"e{i}", "k", {f"x{j}": v for j, v in x.items()}, y)
        for i, (x, y) in enumerate(itertools.islice(pairs, 6000))
    ]
    learner = Learner("k", LINEAR, retrain=RetrainConfig(race_min_events=50, race_max_events=800))
    outs = feed(learner, evts)
    abandoned = decisions(outs, "abandon")
    assert abandoned and not decisions(outs, "promote")
    shadow = [d for d in abandoned if d.values["source"] == "shadow"][0]
    assert shadow.code == "candidate_cannot_lead" and shadow.values["events"] == 800
    assert "no sound lead within 800 events" in shadow.reason
    assert learner.version == 1 and learner.race_status() == (0, 0.0)


def test_a_returning_concept_is_served_from_the_pool():
    evts = concepts((False, 4000), (True, 4000), (False, 4000))
    learner = Learner("k", LINEAR, retrain=FAST)
    outs = feed(learner, evts)
    promoted = decisions(outs, "promote")
    sources = [(d.values["source"], d.values.get("pool_version")) for d in promoted]
    assert sources[:2] == [("shadow", None), ("pool", 1)], sources
    back = promoted[1]
    assert 8000 < back.index <= 8500  # within 500 events of the return
    before = [o.loss for o in outs[3000:4000]]
    after = [o.loss for o in outs[back.index : back.index + 1000]]
    assert sum(after) <= sum(before) + 20  # served at its pre-change accuracy (within 2 %)
    assert learner.race_promotions == {"shadow": 1, "pool": 1}
    assert [v for v, _ in learner.pool] == [2]  # the concept that left waits in the pool


def test_a_snapshot_with_candidates_and_pool_alive_continues_exactly_like_the_original():
    evts = concepts((False, 3000), (True, 3000), (False, 3000))
    learner = Learner("k", LINEAR, retrain=FAST)
    feed(learner, evts[:6050])
    alive, _ = learner.race_status()
    sources = sorted(c.source for c in learner._race.candidates)
    assert alive == 2 and sources == ["pool", "shadow"]  # v1 races from the pool; v2 serves
    meta = SnapshotMeta("k", learner.lineage, learner.version, trigger="test")
    header, payload = assemble(encode_snapshot(learner, meta, KEY, chunk_bytes=1 << 20))
    restored = decode_snapshot(header, payload, KEY)
    rest = evts[6050:]
    a = [(o.y_pred, o.decisions, o.version) for o in feed(learner, rest)]
    b = [(o.y_pred, o.decisions, o.version) for o in feed(restored, rest)]
    assert a == b
    assert learner.race_promotions == restored.race_promotions
    assert learner.race_promotions["pool"] == 1


def test_a_stationary_stream_promotes_nothing():
    evts = concepts((False, 30_000), seed=3)
    for spec in (LINEAR, TREE):
        learner = Learner("k", spec)
        outs = feed(learner, evts)
        assert not decisions(outs, "promote"), spec.lineage
        assert learner.version == 1 and not learner.race_promotions


def test_a_young_tree_that_beats_a_champion_which_never_got_worse_is_not_promoted():
    # Stationary Hyperplane: a Hoeffding tree is at its best as one leaf (naive Bayes over
    # the whole space); its first splits cost it points, which a performance drift takes
    # for a change. The young shadow then leads soundly, but the champion's loss is not
    # soundly above its level before the race: no new version, and the log says why.
    evts = list(stream_events("hyperplane", 2, 6000, change=None))

    def run(confirm: bool) -> Learner:
        learner = Learner("k", TREE, retrain=RetrainConfig(race_confirm=confirm))
        feed(learner, evts)
        return learner

    learner = run(True)
    assert learner.version == 1 and not learner.race_promotions
    given_up = [d for d in learner.decisions if d.code == "champion_unchanged"]
    assert given_up and all(d.action == "abandon" for d in given_up)
    d = given_up[0]
    assert d.values["z"] >= 3.0 and d.values["lead"] > 0.02 and d.values["events"] == 2000
    assert d.values["champion_loss"] > d.values["champion_loss_before"]  # a little worse
    assert "did not rise soundly" in d.reason
    started = [x for x in learner.decisions if x.code == "race_started"]
    assert started[0].values["champion_loss_before"] == d.values["champion_loss_before"]
    # Without race_confirm, the same lead promotes the young tree (what the option stops).
    assert run(False).race_promotions["shadow"] >= 1


def test_a_window_candidate_after_a_change_races_instead_of_replacing_the_champion():
    evts = concepts((False, 3000), (True, 3000))
    # At z = 50 nothing wins, and within 10,000 events nothing is given up.
    learner = Learner("k", TREE, retrain=RetrainConfig(race_z=50.0, race_max_events=10_000))
    applied = []
    for e in evts:
        out = learner.learn(e)
        if out.job is not None:
            applied.append(learner.apply(out.job.run()))
    assert [(d.trigger, d.action, d.code) for d in applied] == [
        ("performance", "race", "candidate_races")
    ]
    assert learner.version == 1  # no sound lead at z = 50: the champion serves on
    assert sorted(c.source for c in learner._race.candidates) == ["regrown", "shadow", "window"]


def test_without_the_shadow_a_change_triggered_retrain_is_promoted_on_its_holdout():
    evts = concepts((False, 3000), (True, 3000))
    learner = Learner("k", LINEAR, retrain=RetrainConfig(shadow=False))
    outs = []
    for e in evts:
        out = learner.learn(e)
        if out.job is not None:
            outs.append(out._replace(decisions=(learner.apply(out.job.run()),)))
    promoted = decisions(outs, "promote")
    assert [d.code for d in promoted] == ["challenger_better"]
    assert not decisions(outs, "race") and learner.race_promotions == {"window": 1}


def test_a_learner_pickled_before_the_race_loads_without_one():
    learner = Learner("k", LINEAR)
    feed(learner, concepts((False, 100)))
    state = vars(learner)
    for name in ("_race", "pool", "race_promotions"):
        del state[name]
    old = pickle.loads(pickle.dumps(learner))
    assert old._race is None and not old.pool and old.pool.maxlen == 3
    assert not old.race_promotions
    feed(old, concepts((False, 3000), (True, 2000))[100:])
    assert old.race_promotions == {"shadow": 1}


def test_a_rollback_during_a_race_ends_it_and_keeps_the_pool():
    evts = concepts((False, 3000), (True, 3000), (False, 3000))
    learner = Learner("k", LINEAR)
    feed(learner, evts[:6050])  # v2 serves; v1 races it from the pool, with a shadow
    assert learner.race_status()[0] == 2 and not learner.pool
    old = learner.model
    decision = learner.rollback(learner.model.clone(), 1, "operator")
    assert decision.action == "rollback" and learner.version == 3
    assert learner.race_status() == (0, 0.0)  # they raced the model just replaced
    assert [v for v, _ in learner.pool] == [1, 2]  # the pooled one is back, v2 retired
    assert learner.pool[-1][1] is old


# -- serving the leader during a race ------------------------------------------------------


class Fixed:
    """Predicts one class and learns nothing: a competitor whose losses the test sets."""

    def __init__(self, y):
        self.y = y

    def predict_proba_one(self, x):
        return {self.y: 1.0}

    def learn_one(self, x, y):
        pass


def test_the_candidate_with_a_recent_lead_serves_and_keeps_serving_while_ahead():
    race = Race("performance", 0)
    right, wrong = Candidate(Fixed(True), "shadow", 0), Candidate(Fixed(False), "pool", 0)
    race.candidates = [wrong, right]
    for _ in range(20):  # the champion is wrong on every event: True is the label
        race.step({}, True, 1.0, True, 3.0, 0.5, 1000, 5000, rate=0.1)
    assert right.recent > 0.8 and wrong.recent == 0.0
    assert race.choose(30, 0.02) == (None, False)  # not raced long enough
    assert race.choose(10, 0.02) == (right, True)
    assert race.predict({}, True) == (True, {True: 1.0})
    for _ in range(5):  # now the champion is right: the lead fades but stays positive
        race.step({}, True, 0.0, True, 3.0, 0.5, 1000, 5000, rate=0.1, known=0.0)
        assert race.choose(10, 0.5) == (right, False)  # a server need only stay ahead
    assert right.n == 25 and 0.0 < right.recent < 0.6
    for _ in range(20):  # the champion is right and the candidate wrong
        race.step({}, False, 0.0, True, 3.0, 0.5, 1000, 5000, rate=0.1)
    assert right.recent < 0.0
    assert race.choose(10, 0.02) == (None, True)  # the champion serves again


def test_a_shadow_serves_before_its_promotion_and_its_predictions_are_scored():
    evts = concepts((False, 3000), (True, 3000))
    # No promotion before 300 raced events; a candidate may serve from 50 (serve window / 2).
    learner = Learner("k", LINEAR, retrain=RetrainConfig(race_min_events=300))
    champion = Learner("k", LINEAR, retrain=RetrainConfig(race_min_events=300, race_serve=False))
    outs, reference = feed(learner, evts), feed(champion, evts)
    serves = [d for d in decisions(outs, "race") if d.code == "candidate_serves"]
    promoted = decisions(outs, "promote")
    assert serves and promoted and serves[0].values["source"] == "shadow"
    first, promotion = serves[0].index, promoted[0].index
    assert first < promotion  # it served on trial before its lead was sound
    assert "serves on trial" in serves[0].reason and serves[0].values["recent_lead"] > 0.02
    # Between the two, the outcomes carry the shadow's predictions under the champion's
    # version, and the evaluator scores what was served: the loss of each outcome.
    trial = range(first, promotion - 1)  # outcomes are 0-based, input indexes 1-based
    assert all(outs[i].version == 1 for i in trial)
    assert sum(o.loss for o in outs[first:promotion]) < sum(
        o.loss for o in reference[first:promotion]
    )
    served = 1 - sum(o.loss for o in outs) / len(outs)
    assert abs(learner.evaluator.values()["accuracy"] - served) < 1e-4
    # Serving changes what is served, not what the race decides on (the champion's losses).
    assert [(d.index, d.code) for d in promoted] == [
        (d.index, d.code) for d in decisions(reference, "promote")
    ]
    assert learner.evaluator.values()["accuracy"] > champion.evaluator.values()["accuracy"]


def test_with_delayed_labels_the_served_candidate_is_scored_and_the_champion_races():
    evts = concepts((False, 3000), (True, 3000))
    learner = Learner("k", LINEAR, retrain=RetrainConfig(race_min_events=300))
    feed(learner, evts[:3200])  # the shadow is racing, not yet promoted
    race = learner._race
    assert race is not None and learner.version == 1
    serving = next(c for c in race.candidates if c.source == "shadow")
    race.serving = serving  # as choose() would have set it
    event = evts[3200]
    unlabelled = Event(event.id, "k", event.x)
    out = learner.predict(unlabelled)
    assert out.y_pred == race.predict(event.x, True)[0]  # the candidate's prediction served
    champion_pred = learner._predict(event.x)[0]
    n, total = serving.n, serving.total
    labelled = learner.on_label(Label(event.id, "k", event.y))
    assert labelled.loss == (0.0 if out.y_pred == event.y else 1.0)  # what was served
    # The champion predicted the event at label time, as the candidates do.
    champion_loss = 0.0 if champion_pred == event.y else 1.0
    assert serving.n == n + 1 and serving.total == total + champion_loss - labelled.loss
    assert list(learner.window)[-1].y_pred == champion_pred  # the champion's record


def test_a_snapshot_taken_while_a_candidate_serves_continues_exactly_like_the_original():
    evts = concepts((False, 3000), (True, 3000))
    learner = Learner("k", TREE, retrain=RetrainConfig(race_min_events=300))
    at = 0
    while learner._race is None or learner._race.serving is None:  # until a candidate serves
        feed(learner, evts[at : at + 1])
        at += 1
    assert 3000 < at < 3300 and learner.version == 1
    restored = pickle.loads(pickle.dumps(learner))
    assert (
        restored._race.serving
        is restored._race.candidates[learner._race.candidates.index(learner._race.serving)]
    )
    rest = evts[at:]
    a = [(o.y_pred, o.loss, o.decisions, o.version) for o in feed(learner, rest)]
    b = [(o.y_pred, o.loss, o.decisions, o.version) for o in feed(restored, rest)]
    assert a == b


def test_candidates_and_races_pickled_before_serving_load_with_none_serving():
    c = Candidate(Fixed(True), "shadow", 7)
    c.n, c.total, c.squares = 3, 1.0, 1.0
    old = Candidate.__new__(Candidate)
    old.__setstate__(c.__getstate__()[:-1])  # the fields before the recent lead
    assert (old.n, old.total, old.recent, old.started) == (3, 1.0, 0.0, 7)
    race = Race.__new__(Race)
    race.__setstate__(("performance", 5, [old]))
    assert race.serving is None and race.candidates == [old]
    assert race.before is None and race.champion_worse(3.0, 0.01)  # no rise asked of it
    race.__setstate__(("performance", 5, [old], old))  # before the champion's levels
    assert race.serving is old and race.before is None and race.raced == 0
    again = pickle.loads(pickle.dumps(race))
    assert (again.before, again.level, again.raced) == (None, [0.0, 0.0], 0)
    assert again.serving is again.candidates[0] and again.serving.started == 7


# -- young trees ---------------------------------------------------------------------------


def test_a_shadow_tree_splits_sooner_while_young_and_grows_up_once_promoted():
    evts = concepts((False, 3000), (True, 6000))
    # Labels flipped keep the champion's splits right: a regrown champion would win.
    rc = RetrainConfig(race_young_grace=20, race_young_events=2000, race_regrown=False)
    learner = Learner("k", TREE, retrain=rc)

    def grace(model):
        return model["HoeffdingTreeClassifier"].grace_period

    assert grace(learner.model) == 200  # River's default, the spec's
    outs = []
    at = 0
    while learner._race is None:  # until the change starts a race
        outs += feed(learner, evts[at : at + 1])
        at += 1
    assert [(c.source, grace(c.model)) for c in learner._race.candidates] == [("shadow", 20)]
    while learner.version == 1:  # until a candidate is promoted
        outs += feed(learner, evts[at : at + 1])
        at += 1
    promoted = decisions(outs, "promote")[0]
    assert promoted.values["source"] == "shadow" and grace(learner.model) == 20
    grown = promoted.values["started"] + 2000
    assert at < grown - 1
    feed(learner, evts[at : grown - 1])  # input indexes are 1-based: index grown - 1
    assert grace(learner.model) == 20
    feed(learner, evts[grown - 1 : grown])
    assert grace(learner.model) == 200 and learner._grown is None  # the spec's again


def test_without_young_trees_a_shadow_has_the_specs_grace_period():
    evts = concepts((False, 3000), (True, 200))
    learner = Learner("k", TREE, retrain=RetrainConfig(race_young_grace=0))
    at = 0
    while learner._race is None:
        feed(learner, evts[at : at + 1])
        at += 1
    assert [
        (c.source, c.model["HoeffdingTreeClassifier"].grace_period)
        for c in learner._race.candidates
    ] == [
        ("shadow", 200),
        ("regrown", 200),  # the champion's own trees: never quickened
    ]


def test_quicken_and_settle_touch_only_hoeffding_trees():
    tree, linear = build_model(TREE), build_model(LINEAR)
    assert quicken(tree, 20) and not quicken(linear, 20)
    assert tree["HoeffdingTreeClassifier"].grace_period == 20
    settle(tree, TREE)
    assert tree["HoeffdingTreeClassifier"].grace_period == 200


# -- regrown candidates --------------------------------------------------------------------


def stripes(n: int, flipped_from: int, seed: int = 1) -> list[Event]:
    """``y`` is whether ``a`` falls in the second or fourth quarter of [0, 1) (``b`` is
    noise): a tree learns it in three splits, naive Bayes never does. From ``flipped_from``
    the labels are flipped: the same splits, every leaf's answer wrong."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = {"a": rng.random(), "b": rng.random()}
        out.append(Event(f"e{i}", "k", x, (int(x["a"] * 4) % 2 == 1) != (i >= flipped_from)))
    return out


def splits(tree) -> list:
    """A Hoeffding tree's splits, as (feature, threshold), depth first."""
    return [(b.feature, b.threshold) for b in tree._root.iter_branches()]


def test_regrow_keeps_a_trees_splits_and_starts_every_leaf_afresh():
    model = build_model(TREE)
    for e in stripes(4000, 4000):
        model.learn_one(e.x, e.y)
    before = [model.predict_one(e.x) for e in stripes(200, 200, seed=2)]
    grown = regrow(model)
    tree = grown["HoeffdingTreeClassifier"]
    assert len(splits(tree)) >= 3 and splits(tree) == splits(model["HoeffdingTreeClassifier"])
    leaves = list(tree._root.iter_leaves())
    assert (
        tree.n_active_leaves
        == len(leaves)
        == len(list(model["HoeffdingTreeClassifier"]._root.iter_leaves()))
    )
    for leaf in leaves:  # the old answer, at the weight of one example
        assert leaf.total_weight == pytest.approx(1.0) and not leaf.splitters
    # The champion it was copied from is untouched.
    assert [model.predict_one(e.x) for e in stripes(200, 200, seed=2)] == before
    assert all(leaf.splitters for leaf in model["HoeffdingTreeClassifier"]._root.iter_leaves())
    assert regrow(build_model(LINEAR)) is None
    # A tree of one leaf gets one fresh leaf; a tree that has learned nothing stays empty.
    young = build_model(TREE)
    young.learn_one({"a": 0.1}, True)
    root = regrow(young)["HoeffdingTreeClassifier"]._root
    assert root is not young["HoeffdingTreeClassifier"]._root and root.total_weight == 1.0
    assert regrow(young).predict_one({"a": 0.9}) is True
    assert regrow(build_model(TREE))["HoeffdingTreeClassifier"]._root is None


def test_a_regrown_adaptive_tree_drops_its_alternates_and_predicts_from_the_first_event():
    spec = ModelSpec.from_dict(
        {
            "task": "binary",
            "pipeline": [{"estimator": "tree.HoeffdingAdaptiveTreeClassifier"}],
            "seed": 1,
        }
    )
    model = build_model(spec)
    for e in stripes(3200, 3000):  # just after the flip: alternate subtrees are growing
        model.learn_one(e.x, e.y)
    old = list(model["HoeffdingAdaptiveTreeClassifier"]._root.iter_branches())
    assert any(b._alternate_tree is not None for b in old)
    grown = regrow(model)
    tree = grown["HoeffdingAdaptiveTreeClassifier"]
    branches = list(tree._root.iter_branches())
    assert branches and all(b._alternate_tree is None for b in branches)
    assert all(b.drift_detector.total == 0 for b in branches)
    assert any(b._alternate_tree is not None for b in old)  # the original keeps its own
    e = stripes(1, 1, seed=3)[0]
    assert grown.predict_proba_one(e.x)  # a class distribution, not nothing
    grown.learn_one(e.x, e.y)


@pytest.mark.parametrize("estimator", ["HoeffdingTreeRegressor", "HoeffdingAdaptiveTreeRegressor"])
def test_a_regrown_regression_tree_keeps_its_splits_and_each_leafs_mean_as_one_example(estimator):
    spec = ModelSpec.from_dict(
        {"task": "regression", "pipeline": [{"estimator": f"tree.{estimator}"}], "seed": 1}
    )
    model = build_model(spec)
    for e in stripes(4000, 2000):
        model.learn_one(e.x, 3.0 * e.y + e.x["b"])
    old = model[estimator]
    new = regrow(model)[estimator]
    assert splits(new) and splits(new) == splits(old)
    leaves = list(new._root.iter_leaves())
    if estimator == "HoeffdingTreeRegressor":  # an adaptive tree's may count alternates too
        assert len(leaves) == len(list(old._root.iter_leaves()))
    for leaf in leaves:
        assert leaf.stats.mean.n == 1 and 0.0 <= leaf.stats.mean.get() <= 4.0
    assert all(
        b._alternate_tree is None
        for b in new._root.iter_branches()
        if hasattr(b, "_alternate_tree")
    )


def test_when_the_splits_still_hold_the_regrown_champion_wins_the_race():
    evts = stripes(9000, 6000)

    def run(regrown: bool) -> tuple[Learner, list]:
        learner = Learner("k", TREE, retrain=RetrainConfig(race_regrown=regrown))
        return learner, feed(learner, evts)

    learner, outs = run(True)
    started = [d for d in decisions(outs, "race") if d.code == "race_started"]
    assert any("the champion regrown" in d.reason for d in started)
    promoted = decisions(outs, "promote")
    assert [d.values["source"] for d in promoted] == ["regrown"]
    # Promoted after race_min_events (1,000); it served on trial long before.
    assert promoted[0].index == promoted[0].values["started"] + 1000
    serves = [d for d in decisions(outs, "race") if d.code == "candidate_serves"]
    assert serves[0].values["source"] == "regrown" and serves[0].index <= 6100
    after = sum(o.loss == 0.0 for o in outs[6000:7000]) / 1000
    _, plain = run(False)  # a fresh shadow must find the three splits again
    after_plain = sum(o.loss == 0.0 for o in plain[6000:7000]) / 1000
    assert after > 0.9 and after - after_plain > 0.15
    assert learner.race_promotions == {"regrown": 1}
