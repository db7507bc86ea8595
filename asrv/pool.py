"""The worker pool: exactly N threads, all started up front, never more than N jobs at once.

`ThreadPoolExecutor` grows lazily, one thread per submit, so a server that just started would
otherwise change its thread count under its first load. `start` submits N jobs that meet at a
barrier, which forces all N threads into existence before the first connection. Every job
then goes through an `asyncio.Semaphore(N)`: work waits on the event loop, where it can be
cancelled and where it holds nothing, instead of queueing inside the executor.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class WorkerPool:
    def __init__(self, threads: int, *, name: str = "asrv-worker") -> None:
        if threads < 1:
            raise ValueError("a worker pool needs at least one thread")
        self.threads = threads
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._gate: asyncio.Semaphore | None = None

    def start(self) -> None:
        """Start all N threads now (blocks until each one is running)."""
        executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=self._name)
        barrier = threading.Barrier(self.threads)
        started = [executor.submit(barrier.wait) for _ in range(self.threads)]
        for future in started:
            future.result()
        self._executor = executor
        self._gate = asyncio.Semaphore(self.threads)

    async def run(
        self,
        function: Callable[..., T],
        *args: object,
        discard: Callable[[T], None] | None = None,
    ) -> T:
        """Run `function(*args)` on a worker once one is free, and return its result.

        A job that started cannot be stopped. If the caller is cancelled meanwhile, the job
        still holds its place until it ends, and `discard` releases what it returned (an
        open file, say) since nobody else will.
        """
        assert self._executor is not None and self._gate is not None, "pool not started"
        async with self._gate:
            future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
            try:
                return await asyncio.shield(future)
            except asyncio.CancelledError:
                await _outlive_cancellation(future)
                if discard is not None and not future.cancelled() and not future.exception():
                    discard(future.result())
                raise

    def shutdown(self) -> None:
        """Wait for running jobs and join every worker thread."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


async def _outlive_cancellation(future: asyncio.Future[T]) -> None:
    """Wait for `future` to end, ignoring further cancellations of the waiting task."""
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            continue
