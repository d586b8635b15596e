"""Where retrain jobs run: inline (tests, replay) or in a worker process (the service).

A job is submitted when the learner hands it out and its result is *applied* at a
fixed point of that key's input: ``apply_after`` inputs later. The worker has that
long to finish; if it is late, ingestion waits for it at that point. Because the
point does not depend on how fast the worker was, a replay, a restart or an inline
run promote the same model at the same event.

The worker runs at a lower CPU priority (``nice``): on a small machine it shares the cores
with ingestion and the broker, and ingestion must not slow down because a retrain runs.
It takes every idle cycle, and gives way when the service or the broker needs the CPU. It
is started with the service (not at the first job), so the first retrain does not wait for
a process to start and import River.

Nothing of the worker outlives the service, however it ends. The pool's queues hold five
POSIX semaphores, which multiprocessing names (so the worker can open them) and leaves to
its resource tracker to remove at exit; after a SIGKILL that tracker removed them and
printed a plain-text "leaked semaphore objects" warning into the next instance's JSON log.
So once the worker has opened them their names are removed at once (the kernel frees the
semaphores with the last process that holds them), and the tracker is started without that
warning for the moment before. The worker logs JSON too (``logs.json_stderr``).
"""

from __future__ import annotations

import _multiprocessing
import contextlib
import dataclasses
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor

from stream_learner.core.events import Event
from stream_learner.core.models import ModelSpec, build_model
from stream_learner.core.processor import Pending
from stream_learner.core.retrain import Example, RetrainJob, RetrainResult
from stream_learner.logs import configure_logging, json_stderr

#: The worker's niceness (0 is the service's own; 19 the lowest priority).
WORKER_NICE = 10


def _run(job: RetrainJob | tuple) -> RetrainResult:
    return (_unpack(job) if isinstance(job, tuple) else job).run()


# A job travels to the worker pickled, and pickling runs in the service's process, holding
# the interpreter lock that ingestion needs. Thousands of Examples and Events pickle
# through a reduction each (~11 ms for 5,000); the same data as plain tuples pickles in C in
# a ninth of that. The packing knows the fields of Example and Event: should they
# change, jobs are pickled as they are (slower, still correct).
_EXAMPLE_FIELDS = ("index", "event", "y_pred", "proba")
_EVENT_FIELDS = ("id", "key", "x", "y", "ts")
_PACKABLE = Example._fields == _EXAMPLE_FIELDS and Event.__struct_fields__ == _EVENT_FIELDS


def _pack(job: RetrainJob) -> tuple | RetrainJob:
    if not _PACKABLE:
        return job
    rest = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    train, holdout = rest.pop("train"), rest.pop("holdout")
    return rest, _rows(train), _rows(holdout)


def _rows(examples: tuple[Example, ...]) -> list[tuple]:
    return [
        (index, e.id, e.key, e.x, e.y, e.ts, y_pred, proba) for index, e, y_pred, proba in examples
    ]


def _unpack(packed: tuple) -> RetrainJob:
    rest, train, holdout = packed
    return RetrainJob(**rest, train=_examples(train), holdout=_examples(holdout))


def _examples(rows: list[tuple]) -> tuple[Example, ...]:
    return tuple(
        Example(index, Event(id_, key, x, y, ts), y_pred, proba)
        for index, id_, key, x, y, ts, y_pred, proba in rows
    )


def _init_worker(nice: int, service_pid: int) -> None:
    """In the worker: lower its priority, log JSON, and end it when the service is gone (a
    killed service cannot shut its pool down, and the worker would wait for jobs forever)."""
    configure_logging("WARNING")
    json_stderr("stream_learner.retrain_worker")
    if nice and hasattr(os, "nice"):
        with contextlib.suppress(OSError):  # not permitted: the service's priority it is
            os.nice(nice)
    threading.Thread(target=_exit_with, args=(service_pid,), daemon=True).start()


def _exit_with(pid: int, every_s: float = 1.0) -> None:
    while True:
        time.sleep(every_s)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)
        except OSError:  # exists, but not ours to signal: still alive
            pass


def _started() -> None:
    """The first job: once it is done, the worker has opened the pool's semaphores."""


def _quiet_tracker() -> None:
    """Start multiprocessing's resource tracker (if this process has none yet) without its
    plain-text leak warning: it still removes what a killed service left, silently."""
    from multiprocessing import resource_tracker

    saved = sys.warnoptions[:]
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    try:
        resource_tracker.ensure_running()
    finally:
        sys.warnoptions[:] = saved


def _unlink_semaphores(pool: ProcessPoolExecutor) -> None:
    """Remove the names of the pool's semaphores (see the module docstring); the worker and
    this process keep them open. Best effort: what is left is the tracker's to remove."""
    from multiprocessing import resource_tracker, synchronize, util

    queues = [getattr(pool, name, None) for name in ("_call_queue", "_result_queue")]
    for lock in [v for q in queues if q is not None for v in vars(q).values()]:
        name = getattr(getattr(lock, "_semlock", None), "name", None)
        if not isinstance(lock, synchronize.SemLock) or not name:
            continue
        with contextlib.suppress(OSError):
            _multiprocessing.sem_unlink(name)
        resource_tracker.unregister(name, "semaphore")
        for finalizer in list(getattr(util, "_finalizer_registry", {}).values()):
            if getattr(finalizer, "_args", None) == (name,):
                finalizer.cancel()  # it would remove the name again at exit


def _warm(spec: ModelSpec | None) -> None:
    """Import what a job needs (River's estimators of this spec) before the first job."""
    if spec is not None:
        build_model(spec)


class Retrainer:
    """Runs retrain jobs, one worker process at most (or inline when ``workers=0``): the
    service's :class:`~stream_learner.core.processor.Runner`."""

    def __init__(
        self,
        *,
        workers: int = 1,
        apply_after: int = 200,
        timeout_s: float = 600.0,
        nice: int = WORKER_NICE,
    ):
        self.apply_after = apply_after
        self.timeout_s = timeout_s  # a job late by this much at its apply point is abandoned
        self.nice = nice
        self._workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def start(self, spec: ModelSpec | None = None) -> Future | None:
        """Start the worker now (it imports ``spec``'s estimators in the background), so the
        first job does not pay for it; returns the warm-up's future (``None`` inline or when
        already started)."""
        if self._workers > 0 and self._pool is None:
            pool = self._ensure_pool()
            pool.submit(_started).add_done_callback(lambda _: _unlink_semaphores(pool))
            return pool.submit(_warm, spec)
        return None

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            _quiet_tracker()
            # forkserver: never fork a process that holds librdkafka threads.
            ctx = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(
                max_workers=self._workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(self.nice, os.getpid()),
            )
        return self._pool

    def submit(self, job: RetrainJob, index: int, *, due: int | None = None) -> Pending:
        """Start ``job``; its result is due at input ``index + apply_after`` (or ``due``,
        for a job restored from a checkpoint)."""
        pending = Pending(job, index + self.apply_after if due is None else due)
        if self._workers > 0:
            pending.future = self._ensure_pool().submit(_run, _pack(job))
        return pending

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
