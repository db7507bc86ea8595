"""Waiting for audit-log durability on the event loop, without holding a worker.

A request whose line is appended but not yet durable parks a future here. The log's
leader thread reports each flush with one `call_soon_threadsafe`, which wakes every future
the flush covered, so a burst of requests costs one hop back to the loop, not one each.
When lines are waiting and no flush is under way, one flush job is sent to the pool (never
more than one at a time: lines that arrive meanwhile ride the next flush).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable

from asrv.auditlog import AuditLog, LogFailure
from asrv.pool import WorkerPool


class DurabilityGate:
    def __init__(
        self, log: AuditLog, pool: WorkerPool, on_failure: Callable[[LogFailure], None]
    ) -> None:
        self._log = log
        self._pool = pool
        self._on_failure = on_failure
        self._loop = asyncio.get_running_loop()
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tiebreak = itertools.count()
        self._flush_job: asyncio.Task[None] | None = None
        log.set_progress_callback(self._progress_from_thread)

    async def wait(self, seq: int) -> None:
        """Return once line `seq` is durable; raise `LogFailure` if it never will be."""
        failure = self._log.failure
        if failure is not None:
            raise failure
        if self._log.durable_seq >= seq:
            return
        future = self._loop.create_future()
        heapq.heappush(self._waiters, (seq, next(self._tiebreak), future))
        self._start_flush()
        await future

    def detach(self) -> None:
        """Stop listening to the log (the loop is about to close)."""
        self._log.set_progress_callback(None)

    def _progress_from_thread(self) -> None:
        # Called by whichever thread flushed; the loop may already be closed at shutdown,
        # and then nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        failure = self._log.failure
        durable = self._log.durable_seq
        waiters = self._waiters
        while waiters and (failure is not None or waiters[0][0] <= durable):
            future = heapq.heappop(waiters)[2]
            if future.done():
                continue
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(None)
        if failure is not None:
            self._on_failure(failure)

    def _start_flush(self) -> None:
        if self._flush_job is None:
            self._flush_job = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._waiters and self._log.failure is None:
                target = max(seq for seq, _, _ in self._waiters)
                await self._pool.run(self._log.sync, target)
                self._release()
        except LogFailure:
            self._release()
        finally:
            self._flush_job = None
