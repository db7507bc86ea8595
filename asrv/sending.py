"""`FileSender`: a GET's file, from the descriptor its critical step opened, to the client.

Large files go out with sendfile(2) on the loop, straight from the page cache. A worker
first brings each slice into the cache, alone in its job, so the loop never waits for the
disk and a cold file holds back no other request's batch. Where the kernel refuses
sendfile (no socket, a file it cannot send), the file is copied through the pool instead.
The descriptor is the snapshot the request's log line refers to: a PUT that replaces the
file meanwhile renames a new inode into place and changes nothing here.
"""

from __future__ import annotations

import os

from asrv.channel import Channel, ClientGone, SendfileUnavailable
from asrv.pool import WorkerPool
from asrv.store import WARM_SLICE, GetResult, Store

COPY_CHUNK = 256 * 1024
"""Bytes of a file copied per pool operation when sendfile cannot be used."""


class FileSender:
    def __init__(self, pool: WorkerPool, store: Store, channel: Channel) -> None:
        self._pool = pool
        self._store = store
        self._channel = channel

    async def send(self, head: bytes, fd: int, offset: int, count: int) -> None:
        """Send `head`, then `count` bytes of `fd` from `offset`. Raises ClientGone, or
        ConnectionError, when the response cannot be completed (the connection must then
        be dropped)."""
        try:
            await self._send_file(head, fd, offset, offset + count)
        except SendfileUnavailable as refused:
            if not refused.head_sent:
                await self._channel.send(head)
            await self._copy_file(fd, offset, offset + count)

    def release(self, result: GetResult) -> None:
        """Close a GET's file once it is sent, or when nobody will send it. On a worker: if
        a PUT replaced the file meanwhile, this close frees the old inode, which can take
        long for a big file. Nothing waits for it."""
        if result.fd is not None:
            self._pool.release(os.close, result.fd)

    async def _send_file(self, head: bytes, fd: int, start: int, stop: int) -> None:
        offset = start
        while offset < stop:
            end = min(stop, offset + WARM_SLICE)
            await self._pool.run_to_end(self._store.warm, fd, offset, end - offset, alone=True)
            try:
                sent = await self._channel.send_file(fd, offset, end - offset, head)
            except SendfileUnavailable:
                if offset > start:  # part of the body went out: copying it again would corrupt it
                    raise ClientGone("sendfile refused in the middle of a file") from None
                raise
            if sent < end - offset:
                raise ClientGone("file shrank while being sent")
            offset, head = end, b""

    async def _copy_file(self, fd: int, start: int, stop: int) -> None:
        """Send bytes `start` to `stop` of `fd`, one pool operation per chunk, pacing on
        the client."""
        offset = start
        while offset < stop:
            count = min(COPY_CHUNK, stop - offset)
            data = await self._pool.run_to_end(os.pread, fd, count, offset, alone=True)
            if not data:
                # The file shrank behind the server's back (changed in place, not by a PUT):
                # the promised length cannot be met, so the response must end in a reset.
                raise ClientGone("file shrank while being sent")
            offset += len(data)
            await self._channel.send(data)
