"""`Channel`: one TCP connection as a protocol, read and written by one coroutine.

asyncio's streams cost more per request than the rest of the loop's work together (a
StreamReader, a StreamWriter, and an `asyncio.timeout` context per read); a file server that
answers one request per connection pays that on every request. This protocol keeps only
what `Connection` needs: a byte buffer with an idle timeout on reads, and writes with
flow control whose timeout bounds a stall rather than a whole transfer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import cast

_READ = "read"
_WRITE = "write"

HIGH_WATER = 256 * 1024
"""Buffered unread bytes at which reading from the socket pauses (memory bound)."""


class Channel(asyncio.Protocol):
    def __init__(self, timeout: float, on_open: Callable[[Channel], None]) -> None:
        self.timeout = timeout
        self._on_open = on_open
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for = _READ
        self.lost = False

    # Protocol callbacks, from the loop.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._on_open(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self._transport().pause_reading()
        self._wake(_READ)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(_READ)
        return True  # keep the connection open: the response may still go out

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self.lost = True
        self._wake(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake(_WRITE)

    # The coroutine's side.

    def now(self) -> float:
        return self._loop.time()

    async def read(self, limit: int, deadline: float | None = None) -> bytes:
        """Up to `limit` bytes; b"" at EOF or when the connection is gone.

        Raises TimeoutError when nothing arrives for `timeout` seconds, or by `deadline`
        (a time of `now()`), whichever comes first.
        """
        while not self._chunks:
            if self._eof:
                return b""
            wait = self.timeout
            if deadline is not None:
                wait = min(wait, deadline - self._loop.time())
                if wait <= 0:
                    raise TimeoutError
            await self._wait(wait, _READ)
        chunk = self._chunks.popleft()
        if len(chunk) > limit:
            chunk, rest = chunk[:limit], chunk[limit:]
            self._chunks.appendleft(rest)
        self._buffered -= len(chunk)
        if self._reading_paused and self._buffered < HIGH_WATER // 4 and not self.lost:
            self._reading_paused = False
            self._transport().resume_reading()
        return chunk

    async def send(self, data: bytes) -> None:
        """Write `data`; wait while the client is behind, failing only when it stalls.

        Raises ConnectionError if the connection is gone, TimeoutError if the client took
        no byte for `timeout` seconds.
        """
        if self.lost:
            raise ConnectionResetError("connection lost")
        transport = self._transport()
        transport.write(data)
        while self._writing_paused and not self.lost:
            unsent = transport.get_write_buffer_size()
            try:
                await self._wait(self.timeout, _WRITE)
            except TimeoutError:
                if transport.get_write_buffer_size() >= unsent:
                    raise
        if self.lost:
            raise ConnectionResetError("connection lost")

    def finish_sending(self) -> None:
        """Send FIN after what is queued (the response is complete)."""
        transport = self._transport()
        if not self.lost and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def _wait(self, seconds: float, kind: str) -> None:
        """Sleep until a `kind` event (or the loss of the connection) wakes this channel,
        or `seconds` pass (TimeoutError). Only the awaited kind wakes it: bytes arriving
        from a client that does not read must not restart a send's stall timer."""
        self._waiting_for = kind
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(seconds, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self, kind: str | None) -> None:
        waiter = self._waiter
        if kind is not None and kind != self._waiting_for:
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
