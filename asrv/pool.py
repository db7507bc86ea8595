"""The worker pool: exactly N threads, all started up front, fed in batches.

`ThreadPoolExecutor` grows lazily, one thread per submit, so a server that just started would
otherwise change its thread count under its first load. `start` submits N jobs that meet at a
barrier, which forces all N threads into existence before the first connection.

Handing one request at a time to a thread costs two cross-thread hops (submit, then the
result back), each a GIL hand-off; under load that, not the file work, is what limits a
Python server. So requests queue on the loop, and a job takes every queued operation at
once (up to `BATCH`), runs them one after another, and hands all results back with a single
`call_soon_threadsafe`. At most N jobs exist at a time, and a new one starts only when no
job is already on its way to take the queue: a burst of requests wakes one thread, not N.
Under light load a batch is one operation and nothing waits.

An operation submitted with `durable=True` appends audit lines: its batch ends with the
`settle` callback (a group commit of the log) before any result goes back, so a result the
loop receives is already safe to acknowledge. A job about to commit first waits (at most
SHARE_WAIT) for the batches other jobs are running, so that one flush covers them all. An
operation submitted `alone=True` (a PUT, which waits for fsyncs of its own, or a read that
may wait for the disk) runs in a job by itself, so that it holds back no other request:
PUTs on different workers share group commits instead of queueing behind each other's
fsyncs in one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def _nothing() -> None:
    pass


BATCH = 64
"""Most operations one job runs before handing results back."""

SHARE_WAIT = 0.001
"""Longest a job waits for other jobs' batches before its group commit, in seconds."""


@dataclass(slots=True)
class _Operation:
    function: Callable[..., Any]
    args: tuple[object, ...]
    future: asyncio.Future[Any] | None  # None: nobody waits for the outcome
    durable: bool
    alone: bool
    discard: Callable[[Any], None] | None
    result: Any = None
    error: BaseException | None = None


class WorkerPool:
    def __init__(self, threads: int, *, name: str = "asrv-worker") -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.threads = threads
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._settle: Callable[[], None] = _nothing
        # Appended on the loop, taken by workers in arrival order under `_taking`: a
        # stream of PUTs must not keep the operations queued before them waiting.
        self._queue: deque[_Operation] = deque()
        self._taking = threading.Lock()
        self._drained: asyncio.Future[None] | None = None
        # Both counted under `_taking`. A job is "unstarted" until its thread takes its
        # first batch; such a job takes whatever is queued when it wakes, so starting
        # another one for the next operation would only wake a second thread to fight
        # over the GIL for it.
        self._jobs = 0
        self._unstarted = 0
        # Jobs running a batch that will share a group commit (see `_shares`). A job about
        # to commit waits for them, briefly, so that one flush covers both batches.
        self._sharing = 0
        # Batches whose results are on their way to the loop: their discards still run.
        self._undelivered = 0
        self._batch_done = threading.Condition(self._taking)

    def start(self, settle: Callable[[], None] = _nothing) -> None:
        """Start all N threads now (blocks until each one is running).

        `settle` runs at the end of every batch that holds a durable operation.
        """
        executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=self._name)
        barrier = threading.Barrier(self.threads)
        try:
            started = [executor.submit(barrier.wait) for _ in range(self.threads)]
        except RuntimeError:
            # The system would start no more threads: release those waiting for the others.
            barrier.abort()
            executor.shutdown(wait=True)
            raise
        for future in started:
            future.result()
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._settle = settle

    async def run(
        self,
        function: Callable[..., T],
        *args: object,
        durable: bool = False,
        alone: bool = False,
        discard: Callable[[T], None] | None = None,
    ) -> T:
        """Run `function(*args)` on a worker and return its result.

        Once queued, an operation runs even if the caller is cancelled meanwhile; then
        `discard` releases what it returned (an open file, say), since nobody else will.
        """
        assert self._loop is not None, "pool not started"
        future: asyncio.Future[T] = self._loop.create_future()
        with self._taking:
            self._queue.append(_Operation(function, args, future, durable, alone, discard))
            self._start_job_if_needed()
        try:
            return await future
        except asyncio.CancelledError:
            # Cancelled after the result was delivered but before this task resumed: the
            # result is nobody's unless it is released here.
            delivered = future.done() and not future.cancelled() and future.exception() is None
            if delivered and discard is not None:
                discard(future.result())
            raise

    async def run_to_end(self, function: Callable[..., T], *args: object, alone: bool = False) -> T:
        """`run`, except that a cancelled caller first waits for the operation to end
        (however often it is cancelled meanwhile); its result, if any, is dropped.

        For operations on a descriptor the caller closes next: by the time a still-queued
        operation ran, the number could name another file.
        """
        operation = asyncio.ensure_future(self.run(function, *args, alone=alone))
        try:
            return await asyncio.shield(operation)
        except asyncio.CancelledError:
            while not operation.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({operation})
            if not operation.cancelled():
                operation.exception()  # retrieved: the cancellation is what goes on
            raise

    def release(self, function: Callable[..., object], *args: object) -> None:
        """Run `function(*args)` on a worker without waiting for it: clean-up whose outcome
        nobody needs (closing a file whose last reference may free a large inode). Its
        errors are dropped. `drained()` waits for it like any operation.

        It starts no job of its own while any job exists: every job takes the queue again
        before it ends, so it rides along with the next batch instead of waking a thread.
        """
        with self._taking:
            self._queue.append(_Operation(function, args, None, False, False, None))
            if not self._jobs:
                self._start_job_if_needed()

    async def drained(self) -> None:
        """Return once no operation is queued or running, and every result has been
        delivered (or discarded, when its caller was cancelled)."""
        while self._jobs or self._queue or self._undelivered:
            assert self._loop is not None
            self._drained = self._loop.create_future()
            await self._drained

    def shutdown(self) -> None:
        """Wait for running jobs and join every worker thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _start_job_if_needed(self) -> None:
        """Start a job for queued operations that no job will take soon. Holding `_taking`."""
        if self._queue and self._jobs < self.threads and not self._unstarted:
            self._jobs += 1
            self._unstarted += 1
            assert self._executor is not None
            self._executor.submit(self._work)

    def _work(self) -> None:
        """A job, on a worker thread: run batches until the queue is empty."""
        loop = self._loop
        assert loop is not None
        with self._taking:
            self._unstarted -= 1
            batch = self._next_batch()
        if not batch:  # an earlier job took everything meanwhile
            loop.call_soon_threadsafe(self._notify_drained)
        while batch:
            sharing = _shares(batch)  # as counted when it was taken
            self._run(batch, sharing)
            durable = any(operation.durable for operation in batch)
            with self._taking:
                if sharing:
                    self._sharing -= 1
                    self._batch_done.notify_all()
                if durable:
                    self._wait_for_sharers()
            if durable:
                try:
                    self._settle()
                except BaseException as error:
                    # Nothing in this batch may be acknowledged: its lines are not durable.
                    for operation in batch:
                        if operation.durable and operation.error is None:
                            operation.error = error
            finished = batch
            with self._taking:
                batch = self._next_batch()
                self._undelivered += 1
            loop.call_soon_threadsafe(self._deliver, finished)  # one wake-up per batch

    def _run(self, batch: list[_Operation], sharing: bool) -> None:
        """Run `batch`. A batch that will commit log lines also takes in the logging
        operations queued while it ran (up to BATCH): they would wait for a commit anyway,
        and this one is next. Nothing else joins it: an operation that logs nothing (a
        close, a read ahead of sending) must not hold back this batch's results."""
        done = 0
        while done < len(batch):
            for operation in batch[done:]:
                try:
                    operation.result = operation.function(*operation.args)
                except BaseException as error:
                    operation.error = error
            done = len(batch)
            if sharing:
                with self._taking:
                    queue = self._queue
                    while queue and len(batch) < BATCH and queue[0].durable and not queue[0].alone:
                        batch.append(queue.popleft())

    def _wait_for_sharers(self) -> None:
        """Holding `_taking`, before a group commit: let the other jobs' batches in
        progress append their lines first, so that one flush makes them all durable
        instead of one flush each. Their file work takes microseconds; SHARE_WAIT bounds
        the wait should one of them read from a slow disk."""
        deadline = time.monotonic() + SHARE_WAIT
        while self._sharing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._batch_done.wait(remaining)

    def _next_batch(self) -> list[_Operation]:
        """Take the next batch, or end this job if there is none. Holding `_taking`."""
        batch = self._take_batch()
        if not batch:
            self._jobs -= 1
        else:
            if _shares(batch):
                self._sharing += 1
            # What this batch left behind (it was full, or must wait behind a PUT that
            # runs alone) must not wait for this job: another one takes it.
            self._start_job_if_needed()
        return batch

    def _take_batch(self) -> list[_Operation]:
        """The oldest operations: one that must run alone, or up to BATCH that may not.
        Called holding `_taking`."""
        queue = self._queue
        batch: list[_Operation] = []
        while queue and len(batch) < BATCH:
            if queue[0].alone:
                if not batch:
                    batch.append(queue.popleft())
                break
            batch.append(queue.popleft())
        return batch

    def _deliver(self, batch: list[_Operation]) -> None:
        """On the loop: hand each operation's outcome to its waiter."""
        with self._taking:
            self._undelivered -= 1
        for operation in batch:
            future = operation.future
            if future is None:
                continue
            if future.cancelled():
                if operation.error is None and operation.discard is not None:
                    # A failed clean-up must not keep the rest of the batch from its waiters.
                    with contextlib.suppress(OSError):
                        operation.discard(operation.result)
            elif operation.error is not None:
                future.set_exception(operation.error)
            else:
                future.set_result(operation.result)
        self._notify_drained()

    def _notify_drained(self) -> None:
        drained = self._drained
        if drained is not None and not self._jobs and not self._queue and not drained.done():
            drained.set_result(None)


def _shares(batch: list[_Operation]) -> bool:
    """Whether a batch will commit log lines that other jobs' lines may join: one that
    holds a logging operation, and is not a PUT running alone (it syncs on its own)."""
    return not batch[0].alone and any(operation.durable for operation in batch)
