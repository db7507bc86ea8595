"""`UploadWriter`: a large PUT body, streamed into a temp file in the root as it arrives.

The body is written through the pool in pieces of `CHUNK` bytes while the connection reads
it, holding no URI lock: other requests for the same file go on meanwhile. The writer owns
the upload's descriptor and temp file until it hands them to the store's commit or abandons
them. Every write runs to its end even when the connection is cancelled, so an abandon
never closes a descriptor that a queued write would then use under a reused number.
"""

from __future__ import annotations

import asyncio

from asrv.http import RequestLine
from asrv.pool import WorkerPool
from asrv.store import PutResult, Store, Upload

CHUNK = 256 * 1024
"""Body bytes gathered before one write: the per-connection memory bound of an upload."""


class UploadWriter:
    def __init__(self, pool: WorkerPool, store: Store, upload: Upload, length: int) -> None:
        self._pool = pool
        self._store = store
        self._upload: Upload | None = upload
        self._length = length
        self._pending: list[bytes] = []
        self._pending_size = 0

    @classmethod
    async def open(cls, pool: WorkerPool, store: Store, length: int) -> UploadWriter:
        """A writer on a new temp file; OSError if it cannot be created."""
        upload = await pool.run(store.new_upload, discard=store.abandon)
        return cls(pool, store, upload, length)

    async def write(self, data: bytes) -> None:
        """Take the next piece of the body; OSError if it cannot be stored."""
        self._pending.append(data)
        self._pending_size += len(data)
        upload = self._owned()
        if self._pending_size >= CHUNK or upload.size + self._pending_size == self._length:
            chunk = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            await self._pool.run_to_end(self._store.write_upload, upload, chunk)

    async def commit(self, line: RequestLine, request_id: str) -> PutResult:
        """The PUT's critical step, with the whole body written; the store owns the upload
        from here on, whatever happens."""
        upload = self._owned()
        self._upload = None
        return await self._pool.run(
            self._store.put, line, request_id, upload, durable=True, alone=True
        )

    async def abandon(self) -> None:
        """Remove the temp file: the body was cut short, failed, or its request cancelled.
        Runs to its end even if the caller is cancelled meanwhile."""
        upload, self._upload = self._upload, None
        if upload is not None:
            await asyncio.shield(self._pool.run(self._store.abandon, upload))

    def _owned(self) -> Upload:
        assert self._upload is not None, "upload already committed or abandoned"
        return self._upload
