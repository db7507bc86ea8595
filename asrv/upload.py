"""`UploadBody`: a PUT body on its way to the store, from the bytes of the connection.

A small body is gathered in memory and stored in one pool operation with its commit. A
large one is streamed into a temp file in the root as it arrives, in pieces of `CHUNK`
bytes, holding no URI lock: other requests for the same file go on meanwhile.

Whatever a body holds in memory counts against the server's `ReadBudget`. When the budget
runs out, every body that holds bytes writes them to its temp file at once, even a small
body, and even one whose client has gone quiet: otherwise slow uploaders could hold the
whole budget between them, and with it stop every connection from reading.

The body owns its temp file and descriptor until it hands them to the store's commit or
abandons them. Every write runs to its end even when the connection is cancelled, so an
abandon never closes a descriptor that a queued write would then use under a reused number.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from asrv.budget import ReadBudget
from asrv.conditions import Conditions
from asrv.http import RequestLine
from asrv.pool import WorkerPool
from asrv.store import Store, Upload, WriteResult

CHUNK = 256 * 1024
"""Body bytes gathered before one write to the temp file."""
SMALL_BODY = CHUNK
"""Bodies up to this size are kept in memory (budget permitting) and stored in one step."""


class UploadBody:
    def __init__(self, pool: WorkerPool, store: Store, budget: ReadBudget, length: int) -> None:
        self._pool = pool
        self._store = store
        self._budget = budget
        self._length = length
        self._parts: list[bytes] = []
        self._held = 0  # bytes in _parts, counted in the budget
        self._received = 0
        self._upload: Upload | None = None
        # Writes, and the temp file's creation, happen one at a time: the connection's
        # own, and those the budget asks for while the connection waits for its client.
        self._writing = asyncio.Lock()
        self._spilling: asyncio.Task[None] | None = None
        self._failure: OSError | None = None
        budget.join(self, self._spill_soon, _nothing)

    async def add(self, data: bytes) -> None:
        """Take the next piece of the body; OSError if it cannot be stored."""
        self._raise_failure()
        self._parts.append(data)
        self._held += len(data)
        self._received += len(data)
        self._budget.take(len(data))
        if self._upload is None and self._received <= SMALL_BODY and not self._budget.exhausted:
            return
        if self._held >= CHUNK or self._received == self._length or self._budget.exhausted:
            async with self._writing:
                await self._write_held()
        self._raise_failure()

    async def commit(
        self,
        line: RequestLine,
        request_id: str,
        conditions: Conditions | None,
        handing_over: Callable[[], None],
    ) -> WriteResult:
        """The PUT's critical step, with the whole body received. `handing_over()` is
        called as the store takes the temp file: from then on the store owns it and logs
        the request, whatever happens. Before that, OSError if the body could not be
        stored (and a cancellation leaves the body to `abandon`)."""
        async with self._writing:
            self._raise_failure()
            if self._upload is not None and self._held:
                await self._write_held()
            self._budget.leave(self)
            handing_over()
            upload, self._upload = self._upload, None
            if upload is None:
                body = self._take_held()
                return await self._pool.run(
                    self._store.put_body,
                    line,
                    request_id,
                    body,
                    conditions,
                    durable=True,
                    alone=True,
                )
            return await self._pool.run(
                self._store.put, line, request_id, upload, conditions, durable=True, alone=True
            )

    async def abandon(self) -> None:
        """Drop the body: it was cut short, failed, or its request cancelled. Removing the
        temp file runs to its end even if the caller is cancelled meanwhile."""
        self._budget.leave(self)
        spilling = self._spilling
        cancelled = False
        # A spill's write must end before the descriptor closes, however often the caller
        # is cancelled meanwhile; its errors no longer matter.
        while spilling is not None and not spilling.done():
            try:
                await asyncio.wait({spilling})
            except asyncio.CancelledError:
                cancelled = True
        if spilling is not None and not spilling.cancelled():
            spilling.exception()
        self._take_held()
        upload, self._upload = self._upload, None
        if upload is not None:
            removal = asyncio.ensure_future(self._pool.run(self._store.abandon, upload))
            while not removal.done():
                try:
                    await asyncio.wait({removal})
                except asyncio.CancelledError:
                    cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    def _spill_soon(self) -> None:
        """The budget ran out: write what this body holds, without waiting for more."""
        if self._held and (self._spilling is None or self._spilling.done()):
            self._spilling = asyncio.ensure_future(self._spill())

    async def _spill(self) -> None:
        async with self._writing:
            if self._held:
                try:
                    await self._write_held()
                except OSError as error:
                    self._failure = error

    async def _write_held(self) -> None:
        """Holding `_writing`: write what is held to the temp file, made on first use."""
        if self._upload is None:
            self._upload = await self._pool.run(self._store.new_upload, discard=self._discard)
        held = self._held
        data = self._take_held(counted=True)
        try:
            if data:
                await self._pool.run_to_end(self._store.write_upload, self._upload, data)
        finally:
            # Counted until written: a write waiting for a worker still holds its bytes.
            self._budget.give(held)

    def _discard(self, upload: Upload) -> None:
        """A temp file made for a caller that was cancelled meanwhile: removed on a worker,
        not on the loop that delivers it (a close and an unlink can wait for the disk)."""
        self._pool.release(self._store.abandon, upload)

    def _take_held(self, *, counted: bool = False) -> bytes:
        """What is held in memory, handed over; no longer counted unless `counted` (the
        caller then gives it back to the budget itself)."""
        data = b"".join(self._parts)
        self._parts.clear()
        if not counted:
            self._budget.give(self._held)
        self._held = 0
        return data

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


def _nothing() -> None:
    pass
