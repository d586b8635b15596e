"""Where retrain jobs run: inline (tests, replay) or in a worker process (the service).

A job is submitted when the learner hands it out and its result is *applied* at a
fixed point of that key's input: ``apply_after`` inputs later. The worker has that
long to finish; if it is late, ingestion waits for it at that point. Because the
point does not depend on how fast the worker was, a replay, a restart or an inline
run promote the same model at the same event.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

from stream_learner.core.retrain import RetrainJob, RetrainResult


def _run(job: RetrainJob) -> RetrainResult:
    return job.run()


@dataclass
class Pending:
    job: RetrainJob
    due: int  # the learner index at which the result is applied
    future: Future | None = None
    result: RetrainResult | None = None

    def wait(self, timeout: float | None = None) -> RetrainResult:
        if self.result is None:
            self.result = self.future.result(timeout) if self.future else self.job.run()
        return self.result

    @property
    def done(self) -> bool:
        return self.result is not None or (self.future is not None and self.future.done())


class Retrainer:
    """Runs retrain jobs, one worker process at most (or inline when ``workers=0``)."""

    def __init__(self, *, workers: int = 1, apply_after: int = 200, timeout_s: float = 600.0):
        self.apply_after = apply_after
        self.timeout_s = timeout_s  # a job late by this much at its apply point is abandoned
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, job: RetrainJob, index: int, *, due: int | None = None) -> Pending:
        """Start ``job``; its result is due at input ``index + apply_after`` (or ``due``,
        for a job restored from a checkpoint)."""
        pending = Pending(job, index + self.apply_after if due is None else due)
        if self._workers > 0:
            if self._pool is None:
                # forkserver: never fork a process that holds librdkafka threads.
                ctx = multiprocessing.get_context("forkserver")
                self._pool = ProcessPoolExecutor(max_workers=self._workers, mp_context=ctx)
            pending.future = self._pool.submit(_run, job)
        return pending

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
