"""The retrain worker's job packing: a job sent as plain tuples is the job that was packed."""

from __future__ import annotations

import itertools
import pickle

from river.datasets import synth

from stream_learner.core.events import Event
from stream_learner.core.learner import Learner
from stream_learner.service.retrainer import _pack, _run, _unpack
from tests.core.specs import LINEAR


def _job(kind: str):
    learner = Learner("k", LINEAR)
    for i, (x, y) in enumerate(itertools.islice(synth.SEA(seed=3), 1500)):
        learner.learn(Event(f"e{i}", "k", x, y, float(i)))
    _, job = learner.request_retrain("test", kind=kind)
    assert job is not None
    return job


def test_a_packed_job_unpacks_to_the_same_job_and_result():
    for kind in ("stateless", "stateful"):
        job = _job(kind)
        packed = pickle.loads(pickle.dumps(_pack(job)))  # as it crosses to the worker
        assert isinstance(packed, tuple)
        again = _unpack(packed)
        assert again.train == job.train and again.holdout == job.holdout
        assert (again.key, again.number, again.kind, again.through) == (
            job.key, job.number, job.kind, job.through,
        )  # fmt: skip
        ours, theirs = job.run(), _run(packed)
        assert (theirs.promoted, theirs.challenger_score, theirs.champion_score) == (
            ours.promoted, ours.challenger_score, ours.champion_score,
        )  # fmt: skip
