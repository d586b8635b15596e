"""A stale owner publishes nothing: the service loop over the in-memory source, sink and
checkpoint store, with the process standing still (as under SIGSTOP) in the middle of the
stream, or the group taking its partitions while it was away, or an exactly-once transaction
that does not commit.

What must hold, against an instance that was never interrupted, on the same records:
the interrupted batch's outputs, offsets and checkpoints are never handed over; every
request is predicted exactly once; and after restoring from the last checkpoint and the
committed offsets, the learners end in the same state (same decisions, same counts).
The same on the real broker, with a second instance taking over: test_stalled_instance.py.
"""

from __future__ import annotations

import orjson
import pytest

from stream_learner.cli.service_cmd import core_factory
from stream_learner.config import load_config
from stream_learner.core.checkpoints import MemoryCheckpointStore
from stream_learner.errors import TransactionAborted
from stream_learner.metrics import ServiceMetrics
from stream_learner.service import Retrainer, Service, Topics
from stream_learner.service.runtime import CheckpointPolicy
from stream_learner.service.stall import StallWatch
from stream_learner.synth import demo_messages
from tests.service.memory import MemorySink, MemorySource, logs_of

TOPICS = Topics.from_prefix("mem.")
KEYS = ("a", "b", "c")
PARTITION = {"a": 0, "b": 1, "c": 0}
CONFIG = """
[kafka]
topic_prefix = "mem."

[service]
batch_size = 100

[model]
task = "binary"
pipeline = [
  { estimator = "preprocessing.StandardScaler" },
  { estimator = "linear_model.LogisticRegression" },
]

[policy]
warmup = 200
"""


class _Source(MemorySource):
    """A memory source whose ``at``-th poll is where the trouble happens: ``trouble(run)``
    runs inside that poll (``during="poll"``: as a stop there would), or once the batch is
    polled, before it is processed (``during="batch"``: the service's first look after the
    poll has passed, so only its look before handing the batch over can see it)."""

    def __init__(self, logs, *, at: int, trouble, during: str, **kwargs) -> None:
        super().__init__(logs, **kwargs)
        self.polls, self.at, self.trouble, self.during = 0, at, trouble, during
        self.rejoins = 0
        self.commits: list[dict] = []
        self.run_of = None
        self._due = False

    def poll(self, max_messages, timeout):
        self.polls += 1
        out = super().poll(max_messages, timeout)
        if self.polls == self.at:
            if self.during == "poll":
                if self.trouble(self.run_of) == "reassigned":
                    return []  # a consumer returns nothing fetched before a reassignment
            else:
                self._due = True
        return out

    def high_watermark(self, tp):  # asked while the polled batch is merged
        if self._due:
            self._due = False
            self.trouble(self.run_of)
        return super().high_watermark(tp)

    def commit(self, positions, *, wait=True) -> None:
        self.commits.append(dict(positions))
        super().commit(positions, wait=wait)

    def rejoin(self) -> None:
        self.rejoins += 1
        run = self.run_of
        self.at_rejoin = (len(run.sink.outputs), dict(self.offsets), run.snapshots())
        super().rejoin()


class _Store(MemoryCheckpointStore):
    """Counts every record written (the compacted log keeps only the last per key)."""

    writes = 0

    def _write(self, records) -> None:
        self.writes += len(records)
        super()._write(records)


class _TransactionalSink(MemorySink):
    """Outputs become visible (``outputs``) only with the commit of their transaction, as
    to a ``read_committed`` reader; the ``fail_at``-th commit is aborted instead, as
    ``KafkaSink.commit_transaction`` reports one that did not commit."""

    transactional = True

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.open: list = []
        self.commits = 0
        self.fail_at = fail_at
        self.source: MemorySource | None = None

    def produce(self, topic, value, *, key=None, headers=None) -> None:
        self.open.append((topic, value, key, headers))

    def commit_transaction(self, positions, group_metadata) -> None:
        self.commits += 1
        held, self.open = self.open, []
        if self.commits == self.fail_at:
            raise TransactionAborted("transaction aborted: a test's", code="_TEST")
        self.outputs += held
        self.source.commit(positions)


class _Run:
    def __init__(
        self,
        config,
        logs,
        *,
        at=0,
        trouble=None,
        during="poll",
        limit=5.0,
        sink=None,
        committed=None,
    ) -> None:
        self.sink = sink or MemorySink()
        self.store = _Store(signing_key=b"k" * 32)
        self.watch = StallWatch()  # never started: the tests say what its thread would see
        self.service: Service
        self.source = _Source(
            logs,
            at=at,
            trouble=trouble or (lambda run: None),
            during=during,
            on_assign=lambda tps: self.service.on_assign(tps),
            on_revoke=self._revoked,
            committed=committed,
            run=40,
        )
        self.source.run_of = self
        self.sink.source = self.source
        self.service = Service(
            factory=core_factory(config),
            topics=TOPICS,
            source=self.source,
            sink=self.sink,
            metrics=ServiceMetrics(),
            retrainer=Retrainer(workers=0, apply_after=50),
            batch_size=config.service.batch_size,
            poll_timeout_s=0.0,
            store=self.store,
            checkpoint_policy=CheckpointPolicy(every_events=300, every_seconds=0),
            stall=self.watch,
            stall_limit_s=limit,
        )
        self.service.run(lambda: self.service.caught_up)

    def _revoked(self, tps) -> None:
        self.learners = dict(self.service.learners)  # as they were when the run ended
        self.service.on_revoke(tps)

    def predicted(self) -> list[tuple]:
        out = []
        for value, _, _ in self.sink.on(TOPICS.predictions):
            body = orjson.loads(value)
            out.append((body["id"], body["y_pred"], body["model_version"]))
        return out

    def fenced(self, why: str) -> float:
        return self.service.metrics.registry.get_sample_value(
            "stream_learner_fenced_total", {"why": why}
        )

    def snapshots(self) -> int:
        return self.store.writes


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    path = tmp_path_factory.mktemp("fencing") / "config.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    messages = []
    for i, key in enumerate(KEYS):
        messages += demo_messages(
            1500, generator="sea", change_at=900, keys=(key,), unlabelled_share=0.3,
            label_delay=25, seed=3 + i, id_prefix=f"{key}-", t0=1_700_000_000.0,
        )  # fmt: skip
    logs = logs_of(messages, TOPICS, PARTITION.__getitem__)
    return config, logs, _Run(config, logs)


def _same_learning(run: _Run, calm: _Run) -> None:
    assert sorted(run.predicted()) == sorted(calm.predicted())
    ids = [p[0] for p in run.predicted()]
    assert len(ids) == len(set(ids))  # each request exactly once
    for key in KEYS:
        mine, theirs = run.learners[key], calm.learners[key]
        assert [(d.index, d.trigger, d.action, d.code) for d in mine.decisions] == [
            (d.index, d.trigger, d.action, d.code) for d in theirs.decisions
        ]
        assert mine.index == theirs.index and mine.version == theirs.version


@pytest.mark.parametrize("during", ["poll", "batch"])
def test_a_stall_longer_than_the_limit_hands_nothing_of_its_state_over(setup, during):
    config, logs, calm = setup
    seen = {}

    def stop(run: _Run) -> None:
        # The process stood still here; what it holds from now on is a stale owner's.
        run.watch.note(12.0)
        seen.update(
            outputs=len(run.sink.outputs),
            committed=dict(run.source.offsets),
            snapshots=run.snapshots(),
            learned={k: run.service.learners[k].index for k in run.service.learners},
        )

    run = _Run(config, logs, at=25, trouble=stop, during=during)

    assert run.source.rejoins == 1 and run.fenced("stall") == 1
    assert seen["outputs"] > 0 and seen["committed"] and seen["snapshots"] > 0
    # Between the stop and the rejoin: no output, commit or snapshot.
    assert run.source.at_rejoin == (seen["outputs"], seen["committed"], seen["snapshots"])
    # The outputs up to the stop are the calm run's; after it, the state restored from the
    # checkpoints and the committed offsets serves on, each request once, as if calm.
    assert run.predicted()[: seen["outputs"]] == calm.predicted()[: seen["outputs"]]
    _same_learning(run, calm)


def test_a_stall_shorter_than_the_limit_changes_nothing(setup):
    config, logs, calm = setup
    run = _Run(config, logs, at=9, trouble=lambda run: run.watch.note(2.0))
    assert run.source.rejoins == 0 and run.fenced("stall") == 0
    assert run.predicted() == calm.predicted()
    _same_learning(run, calm)


def test_partitions_lost_to_the_group_are_dropped_without_handing_anything_over(setup):
    config, logs, calm = setup
    seen = {}

    def lose(run: _Run) -> None:
        source = run.source
        before = (run.snapshots(), dict(source.offsets))
        tps = sorted(source.assignment)
        run.service.on_lost_partitions(tps)  # what the consumer's on_lost calls
        source.assignment = set()
        seen["lost"] = (before, (run.snapshots(), dict(source.offsets)))
        seen["keys"] = len(run.service.learners)
        source.start()  # the group gives them back: restored from the checkpoints
        return "reassigned"

    run = _Run(config, logs, at=12, trouble=lose)
    before, after = seen["lost"]
    assert after == before  # no snapshot and no commit from the lost state
    assert seen["keys"] == 0
    assert run.fenced("partitions_lost") == 1
    _same_learning(run, calm)


def test_an_aborted_transaction_gives_the_batch_up_and_learns_it_again_once(setup):
    config, logs, calm = setup
    sink = _TransactionalSink(fail_at=7)
    run = _Run(config, logs, sink=sink)
    assert sink.commits > sink.fail_at and not sink.open
    assert run.source.rejoins == 1 and run.fenced("transaction") == 1
    # The aborted batch's outputs never became visible and its state was dropped with them:
    # replayed from the committed positions, every request is served once, as if calm.
    _same_learning(run, calm)


def test_a_restart_rebuilding_below_the_committed_offsets_never_moves_them_back(setup):
    config, logs, calm = setup
    # Every output was delivered and committed before; no snapshot survived: the state is
    # rebuilt from each log's start, silently, up to the committed offsets.
    ends = {tp: len(records) for tp, records in logs.items()}
    run = _Run(config, logs, committed=ends)
    assert run.predicted() == []
    assert all(c[tp] >= ends[tp] for c in run.source.commits for tp in c)
    assert run.source.offsets == ends
