"""asrv.pool with its real threads: batching, job starts, shared group commits, release.

Operations block on events the test sets, so which thread runs what, and when, is fixed by
the test rather than by timing. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from asrv import pool as pool_module
from asrv.auditlog import AuditLog
from asrv.pool import WorkerPool
from tests.threads import TIMEOUT

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def log(tmp_path: Path) -> AsyncIterator[AuditLog]:
    fd = os.open(tmp_path / "audit.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    yield AuditLog(fd, sync_data=True)
    os.close(fd)


def started(threads: int, log: AuditLog | None = None) -> WorkerPool:
    pool = WorkerPool(threads)
    if log is None:
        pool.start()
    else:
        pool.start(settle=lambda: log.sync(log.last_seq))
    return pool


async def stopped(pool: WorkerPool) -> None:
    await pool.drained()
    pool.shutdown()


def blocked_until(event: threading.Event) -> Callable[[], int]:
    def operation() -> int:
        assert event.wait(TIMEOUT), "the test never released this operation"
        return threading.get_ident()

    return operation


async def test_a_burst_is_one_batch_on_one_thread() -> None:
    pool = started(4)
    try:
        # Queued in one step of the loop: the first job takes them all, no other wakes.
        idents = await asyncio.gather(*(pool.run(threading.get_ident) for _ in range(20)))
        assert len(set(idents)) == 1
    finally:
        await stopped(pool)


async def test_results_and_errors_reach_their_own_callers() -> None:
    pool = started(2)
    try:

        def fail() -> None:
            raise OSError("disk on fire")

        outcomes = await asyncio.gather(
            pool.run(pow, 2, 10), pool.run(fail), pool.run(str.upper, "x"), return_exceptions=True
        )
        assert outcomes[0] == 1024 and outcomes[2] == "X"
        assert isinstance(outcomes[1], OSError)
    finally:
        await stopped(pool)


async def test_what_waits_behind_a_lone_operation_gets_a_job_of_its_own() -> None:
    pool = started(2)
    release = threading.Event()
    try:
        lone = asyncio.ensure_future(pool.run(blocked_until(release), alone=True))
        # Queued with the lone one still running: the second thread takes it.
        other = await asyncio.wait_for(pool.run(threading.get_ident), TIMEOUT)
        assert not lone.done()
        release.set()
        assert await asyncio.wait_for(lone, TIMEOUT) != other
    finally:
        release.set()
        await stopped(pool)


async def test_batches_in_progress_share_one_group_commit(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first job to finish its batch waits for the other's before it flushes the log:
    one flush makes both batches' lines durable. (The wait's bound is lifted so that the
    outcome does not depend on how fast this machine switches threads.)"""
    monkeypatch.setattr(pool_module, "SHARE_WAIT", TIMEOUT)
    pool = started(2, log)
    first_taken, second_taken, first_done = threading.Event(), threading.Event(), threading.Event()

    def first() -> int:
        first_taken.set()
        assert second_taken.wait(TIMEOUT)
        seq = log.append(b"first\n")
        first_done.set()
        return seq

    def second() -> int:
        second_taken.set()
        # Its line comes only after the first batch has finished its work.
        assert first_done.wait(TIMEOUT)
        return log.append(b"second\n")

    try:
        one = asyncio.ensure_future(pool.run(first, durable=True))
        await asyncio.wait_for(asyncio.to_thread(first_taken.wait, TIMEOUT), TIMEOUT)
        two = await asyncio.wait_for(pool.run(second, durable=True), TIMEOUT)
        assert (await asyncio.wait_for(one, TIMEOUT), two) == (1, 2)
        assert log.syncs == 1
    finally:
        second_taken.set()
        first_done.set()
        await stopped(pool)


async def test_what_is_queued_while_a_batch_runs_joins_its_commit(log: AuditLog) -> None:
    pool = started(1, log)
    taken, queued = threading.Event(), threading.Event()

    def first() -> int:
        taken.set()
        assert queued.wait(TIMEOUT)
        return log.append(b"first\n")

    try:
        one = asyncio.ensure_future(pool.run(first, durable=True))
        await asyncio.wait_for(asyncio.to_thread(taken.wait, TIMEOUT), TIMEOUT)
        later = [
            asyncio.ensure_future(pool.run(log.append, b"later\n", durable=True)) for _ in range(2)
        ]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # both are in the queue now, while `first` still runs
        queued.set()
        seqs = await asyncio.wait_for(asyncio.gather(one, *later), TIMEOUT)
        assert seqs == [1, 2, 3]
        assert log.syncs == 1
    finally:
        queued.set()
        await stopped(pool)


async def test_what_logs_nothing_does_not_join_or_hold_back_a_commit(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close queued while a logging batch runs is not taken into it, and a commit waits
    only for batches that log: neither holds back the results of another request."""
    monkeypatch.setattr(pool_module, "SHARE_WAIT", TIMEOUT)
    pool = started(2, log)
    taken, queued, slow_started = threading.Event(), threading.Event(), threading.Event()
    gate = threading.Event()

    def logging_operation() -> int:
        taken.set()
        assert queued.wait(TIMEOUT)
        return log.append(b"logged\n")

    def slow_close() -> None:
        slow_started.set()
        assert gate.wait(TIMEOUT)

    try:
        first = asyncio.ensure_future(pool.run(logging_operation, durable=True))
        await asyncio.wait_for(asyncio.to_thread(taken.wait, TIMEOUT), TIMEOUT)
        pool.release(slow_close)  # queued behind a running job: it rides along later
        queued.set()
        assert await asyncio.wait_for(first, TIMEOUT / 2) == 1
        # The slow close now runs; a logging batch on the other worker commits at once.
        await asyncio.wait_for(asyncio.to_thread(slow_started.wait, TIMEOUT), TIMEOUT)
        assert (
            await asyncio.wait_for(pool.run(log.append, b"next\n", durable=True), TIMEOUT / 2) == 2
        )
    finally:
        queued.set()
        gate.set()
        await stopped(pool)


async def test_a_commit_waits_for_a_slow_batch_only_briefly(log: AuditLog) -> None:
    pool = started(2, log)
    release, stuck_started = threading.Event(), threading.Event()

    def stuck() -> int:
        stuck_started.set()
        assert release.wait(TIMEOUT)
        return log.append(b"stuck\n")

    try:
        slow = asyncio.ensure_future(pool.run(stuck, durable=True))
        await asyncio.wait_for(asyncio.to_thread(stuck_started.wait, TIMEOUT), TIMEOUT)
        # This batch does not wait for the stuck one to commit its own line.
        assert await asyncio.wait_for(pool.run(log.append, b"quick\n", durable=True), TIMEOUT) == 1
        assert not slow.done()
        release.set()
        assert await asyncio.wait_for(slow, TIMEOUT) == 2
    finally:
        release.set()
        await stopped(pool)


async def test_a_release_runs_without_anyone_waiting(tmp_path: Path) -> None:
    pool = started(1)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    pool.release(os.close, fd)
    await asyncio.wait_for(pool.drained(), TIMEOUT)
    with pytest.raises(OSError):
        os.fstat(fd)  # closed by the worker (nothing else opened a file meanwhile)
    pool.shutdown()


async def test_a_result_delivered_to_a_cancelled_caller_is_discarded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = started(1)
    discarded: list[int] = []
    caller: asyncio.Future[int] | None = None
    deliver = pool._deliver

    def deliver_then_cancel(batch: list[pool_module._Operation]) -> None:
        # The result reaches the caller's future, and the caller is cancelled before it
        # resumes: the result is delivered, yet nobody will take it.
        deliver(batch)
        assert caller is not None
        caller.cancel()

    monkeypatch.setattr(pool, "_deliver", deliver_then_cancel)
    try:
        caller = asyncio.ensure_future(pool.run(lambda: 7, discard=discarded.append))
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert discarded == [7]
    finally:
        monkeypatch.undo()
        await stopped(pool)


async def test_drained_waits_for_results_still_on_their_way() -> None:
    pool = started(1)
    discarded: list[int] = []
    finished = threading.Event()

    def operation() -> int:
        finished.set()
        return 7

    caller = asyncio.ensure_future(pool.run(operation, discard=discarded.append))
    await asyncio.sleep(0)
    caller.cancel()  # the operation is queued already: it runs, and its result is discarded
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished.wait(TIMEOUT)
    # Block the loop until the job has ended: its results are queued for the loop, which
    # cannot deliver them yet. drained() must still wait for that delivery.
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while pool._jobs and asyncio.get_running_loop().time() < deadline:
        threading.Event().wait(0.001)
    await asyncio.wait_for(pool.drained(), TIMEOUT)
    assert discarded == [7]
    pool.shutdown()
