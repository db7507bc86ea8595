"""One client connection, driven on the event loop.

All network I/O happens here, on the loop, holding no worker and no lock: reading the head
and the body, sending the response, lingering before the close. File work goes to the pool
as one operation per logical step (the store's methods). Operations that log are submitted
`durable=True`: their result comes back only once the line is durable, so nothing is
acknowledged that the log lacks.

Every way a request can end funnels through `_respond`: it logs the request if its request
line parsed, waits for the line to be durable, and sends the byte-exact response.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from asrv.channel import Channel, SendfileUnavailable
from asrv.config import Config
from asrv.errors import FatalError
from asrv.http import (
    CONTINUE,
    HEAD_END,
    MAX_HEAD,
    NO_REQUEST_ID,
    HttpError,
    Method,
    Request,
    RequestLine,
    Status,
    fixed_response,
    incomplete_head_error,
    oversized_head_error,
    parse_head,
    parse_request_line,
    request_id_of_partial_head,
    response_head,
)
from asrv.pool import WorkerPool
from asrv.store import WARM_SLICE, GetResult, PutResult, Store, Upload

T = TypeVar("T")

CHUNK = 256 * 1024
"""Most bytes read from a socket, or a file, in one step: the per-connection memory bound."""


@dataclass(frozen=True, slots=True)
class Services:
    """What a connection needs from its server."""

    config: Config
    pool: WorkerPool
    store: Store
    on_fatal: Callable[[FatalError], None]
    stopping: asyncio.Event
    """Set when the server shuts down: finish the current request, then close."""


class _ClientGone(Exception):
    """The client closed, reset or stalled: whatever remains of its request is lost."""


class Connection:
    def __init__(self, services: Services, channel: Channel) -> None:
        self._services = services
        self._config = services.config
        self._channel = channel
        self._buffer = b""
        self._requests = 0
        # A request whose line parsed and whose log line is not yet on its way: if the
        # connection is cancelled (shutdown), it is still logged, as the 400 it became.
        # (Its Request-Id is None while the head is incomplete: read it from the buffer.)
        self._unlogged: tuple[RequestLine, str | None] | None = None
        self.idle = True
        """True while waiting for the first byte of a request: safe to close at shutdown."""

    async def serve(self) -> None:
        """Serve requests until the connection ends, then close it."""
        try:
            while await self._serve_one():
                self._requests += 1
                if self._services.stopping.is_set():
                    break  # shutting down: take no further request on this connection
            await self._linger()
        except asyncio.CancelledError:
            await self._log_cancelled()
            raise
        except FatalError as error:
            self.abort()
            self._services.on_fatal(error)
        except (_ClientGone, OSError):
            self.abort()
        finally:
            self._channel.close()

    def abort(self) -> None:
        """Drop the connection at once, sending nothing more."""
        self._channel.abort()

    async def _serve_one(self) -> bool:
        """Serve one request; True if the connection stays open for another."""
        self.idle = not self._buffer
        try:
            head = await self._read_head()
            if head is None:
                return False
            request = parse_head(head)
            self._unlogged = (request.line, request.request_id)
        except HttpError as error:
            await self._respond(
                error.status, error.line, error.request_id, close_requested=error.connection_close
            )
            return False
        max_body = self._config.max_body
        if max_body is not None and (request.content_length or 0) > max_body:
            await self._respond(
                Status.PAYLOAD_TOO_LARGE, request.line, request.request_id, request.connection_close
            )
            return False
        if request.method is Method.PUT:
            return await self._put(request)
        return await self._get(request)

    async def _log_cancelled(self) -> None:
        """Log the request a shutdown cut short (SPEC: every parsed request has a line)."""
        if self._unlogged is None:
            return
        line, request_id = self._unlogged
        if request_id is None:
            request_id = request_id_of_partial_head(self._buffer)
        self._unlogged = None
        store = self._services.store
        with contextlib.suppress(asyncio.CancelledError, FatalError):
            await asyncio.shield(
                self._services.pool.run(
                    store.record, line, Status.BAD_REQUEST, request_id, durable=True
                )
            )

    def _keeps_open(self, request: Request) -> bool:
        """Decided as the response goes out: a shutdown that began meanwhile closes too."""
        return (
            self._config.keep_alive
            and not request.connection_close
            and not self._services.stopping.is_set()
        )

    async def _read_head(self) -> bytes | None:
        """The next request head, or None if the client closed (or, between keep-alive
        requests, idled out) before sending a byte of it."""
        line: RequestLine | None = None
        # However the head trickles in, it must be whole by this time (slowloris).
        deadline = self._channel.now() + self._config.head_timeout if self._buffer else None
        while True:
            buffer = self._buffer
            end = buffer.find(HEAD_END, 0, MAX_HEAD)
            if end >= 0:
                self._buffer = buffer[end + len(HEAD_END) :]
                return buffer[: end + len(HEAD_END)]
            if line is None:
                line_end = buffer.find(b"\r\n", 0, MAX_HEAD)
                if line_end >= 0:
                    # A bad request line is a 400 whatever follows: answer it now.
                    line = parse_request_line(buffer[:line_end])
                    self._unlogged = (line, None)
            if len(buffer) >= MAX_HEAD:
                raise oversized_head_error(buffer)
            try:
                data = await self._channel.read(CHUNK, deadline)
            except TimeoutError:
                if not buffer and self._requests:
                    return None
                raise self._incomplete_head(line) from None
            if not data:
                if not buffer:
                    return None
                raise self._incomplete_head(line)
            if deadline is None:
                deadline = self._channel.now() + self._config.head_timeout
            self.idle = False
            self._buffer = buffer + data

    def _incomplete_head(self, line: RequestLine | None) -> HttpError:
        """The 400 for a head the client stopped sending (it is logged if its line parsed)."""
        return incomplete_head_error(self._buffer, line)

    async def _receive(self, limit: int, deadline: float | None) -> bytes:
        """Bytes already buffered (read past a head), else one read from the socket."""
        if self._buffer:
            data, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return data
        return await self._channel.read(limit, deadline)

    async def _read_body(
        self, length: int, sink: Callable[[bytes], Awaitable[None] | None] | None
    ) -> bool:
        """Read `length` body bytes; False if the client stopped short (EOF or stall).

        With a sink, each piece is handed to it (and awaited if it returns an awaitable).
        """
        remaining = length
        started = self._channel.now()
        min_rate = self._config.min_rate
        while remaining:
            # Past its first `timeout` seconds, a body must keep averaging `min_rate`
            # bytes/s: a client trickling bytes cannot hold a connection forever.
            received = length - remaining
            deadline = None
            if min_rate:
                deadline = started + max(self._config.timeout, received / min_rate)
            try:
                data = await self._receive(min(remaining, CHUNK), deadline)
            except TimeoutError:
                return False
            if not data:
                return False
            remaining -= len(data)
            if sink is not None:
                outcome = sink(data)
                if outcome is not None:
                    await outcome
        return True

    async def _get(self, request: Request) -> bool:
        """Serve a GET; True if the connection stays open for another request."""
        line, request_id = request.line, request.request_id
        if request.content_length and not await self._read_body(request.content_length, None):
            await self._respond(Status.BAD_REQUEST, line, request_id, request.connection_close)
            return False
        pool = self._services.pool
        self._unlogged = None  # a queued operation runs, and logs, even if cancelled
        result = await pool.run(
            self._services.store.get, line, request_id, durable=True, discard=self._release_file
        )
        try:
            keep = self._keeps_open(request)
            close = self._announce_close(request.connection_close, keep)
            if result.fd is None:
                body = result.body
                await self._send(response_head(result.status, len(body), close=close) + body)
            else:
                head = response_head(result.status, result.size, close=close)
                await self._stream(head, result.fd, result.size)
        finally:
            self._release_file(result)
        return keep

    def _release_file(self, result: GetResult) -> None:
        """Close a GET's file once it is sent, or when its connection was cancelled before
        it got the result. On a worker: if a PUT replaced the file meanwhile, this close
        frees the old inode, which can take long for a big file. Nothing waits for it."""
        if result.fd is not None:
            self._services.pool.release(os.close, result.fd)

    async def _stream(self, head: bytes, fd: int, size: int) -> None:
        """Send `head`, then `size` bytes of `fd`: with sendfile where the connection
        allows, else by copying through the pool."""
        try:
            await self._send_file(head, fd, size)
        except SendfileUnavailable as refused:
            if not refused.head_sent:
                await self._send(head)
            await self._copy_file(fd, size)

    async def _send_file(self, head: bytes, fd: int, size: int) -> None:
        """Send the file slice by slice with sendfile on the loop. A worker first brings
        each slice into the page cache, so the loop never reads from the disk itself; it
        does so alone, so that a slow disk holds back no other request's batch."""
        store, channel = self._services.store, self._channel
        offset = 0
        while offset < size:
            end = min(size, offset + WARM_SLICE)
            await self._on_file(store.warm, fd, offset, end - offset)
            try:
                sent = await self._channel_call(channel.send_file(fd, offset, end - offset, head))
            except SendfileUnavailable:
                if offset:  # part of the body went out: copying from the start would corrupt it
                    raise _ClientGone("sendfile refused in the middle of a file") from None
                raise
            if sent < end - offset:
                raise _ClientGone("file shrank while being sent")
            offset, head = end, b""

    async def _copy_file(self, fd: int, size: int) -> None:
        """Send `size` bytes of `fd`, one pool job per chunk, pacing on the client."""
        offset = 0
        while offset < size:
            data = await self._on_file(os.pread, fd, min(CHUNK, size - offset), offset)
            if not data:
                # The file shrank behind the server's back (changed in place, not by a PUT):
                # the promised length cannot be met, so the response must end in a reset.
                raise _ClientGone("file shrank while being sent")
            offset += len(data)
            await self._send(data)

    async def _on_file(self, function: Callable[..., T], *args: object) -> T:
        """Run `function(*args)`, which uses a served file's descriptor, alone on a worker.

        If the connection is cancelled meanwhile, wait for the operation to end before
        going on: the descriptor is closed next, and its number could name another file
        by the time a still-queued operation used it.
        """
        operation = asyncio.ensure_future(self._services.pool.run(function, *args, alone=True))
        try:
            return await asyncio.shield(operation)
        except asyncio.CancelledError:
            await asyncio.wait({operation})
            if not operation.cancelled():
                operation.exception()  # retrieved: the cancellation is what propagates
            raise

    async def _put(self, request: Request) -> bool:
        """Serve a PUT; True if the connection stays open for another request."""
        line, request_id = request.line, request.request_id
        length = request.content_length or 0
        if request.expect_continue:
            try:
                await self._send(CONTINUE)
            except (_ClientGone, ConnectionError):
                # Gone before its body: logged as the 400 it would have been sent.
                await self._record(Status.BAD_REQUEST, line, request_id)
                raise
        if length <= CHUNK:
            parts: list[bytes] = []
            if await self._read_body(length, parts.append):
                body = b"".join(parts)
                self._unlogged = None
                outcome: PutResult | Status = await self._services.pool.run(
                    self._services.store.put_body, line, request_id, body, durable=True, alone=True
                )
            else:
                outcome = Status.BAD_REQUEST
        else:
            outcome = await self._put_streamed(line, request_id, length)
        if isinstance(outcome, Status):
            await self._respond(outcome, line, request_id, request.connection_close)
            return False
        keep = self._keeps_open(request)
        close = self._announce_close(request.connection_close, keep)
        await self._send(fixed_response(outcome.status, close=close))
        return keep

    async def _put_streamed(
        self, line: RequestLine, request_id: str, length: int
    ) -> PutResult | Status:
        """Stream a large body into an upload file, then commit it; a Status (400 or 500)
        if the body never arrived whole or could not be stored."""
        pool, store = self._services.pool, self._services.store
        try:
            upload = await pool.run(store.new_upload, discard=store.abandon)
        except OSError:
            return Status.INTERNAL_ERROR
        try:
            failure = await self._upload(upload, length)
        except BaseException:
            # Cancelled by a shutdown: the partial body must not outlive the request.
            await asyncio.shield(pool.run(store.abandon, upload))
            raise
        if failure is not None:
            await pool.run(store.abandon, upload)
            return failure
        self._unlogged = None
        return await pool.run(store.put, line, request_id, upload, durable=True, alone=True)

    async def _upload(self, upload: Upload, length: int) -> Status | None:
        """Stream the body into `upload`; None when complete, else the status to answer."""
        pool, store = self._services.pool, self._services.store
        pending: list[bytes] = []
        pending_size = 0

        async def write(data: bytes) -> None:
            nonlocal pending_size
            pending.append(data)
            pending_size += len(data)
            if pending_size >= CHUNK or upload.size + pending_size == length:
                chunk = b"".join(pending)
                pending.clear()
                pending_size = 0
                await pool.run(store.write_upload, upload, chunk)

        try:
            complete = await self._read_body(length, write)
        except OSError:
            return Status.INTERNAL_ERROR
        return None if complete else Status.BAD_REQUEST

    async def _respond(
        self, status: Status, line: RequestLine | None, request_id: str, close_requested: bool
    ) -> None:
        """Answer a request that ends the connection without file work (a 400, 501, 505,
        or a failed upload): log it if its request line parsed, then send the response."""
        if line is not None:
            await self._record(status, line, request_id)
        close = self._announce_close(close_requested, keep=False)
        await self._send(fixed_response(status, close=close))

    async def _record(self, status: Status, line: RequestLine, request_id: str) -> None:
        """Log a request that did no file work, and wait until its line is durable."""
        store = self._services.store
        self._unlogged = None
        await self._services.pool.run(
            store.record, line, status, request_id or NO_REQUEST_ID, durable=True
        )

    def _announce_close(self, close_requested: bool, keep: bool) -> bool:
        """Whether the response carries `Connection: close`.

        Always when the client asked; with keep-alive on, also whenever the server is the
        one ending the connection (RFC 9112 §9.6). The default one-request mode sends no
        other header (SPEC §4).
        """
        if close_requested:
            return True
        return self._config.keep_alive and not keep

    async def _send(self, data: bytes) -> None:
        """Write; a client that takes no byte for `timeout` seconds is given up."""
        await self._channel_call(self._channel.send(data))

    @staticmethod
    async def _channel_call(sending: Awaitable[T]) -> T:
        """Await a send; a client that takes no byte for `timeout` seconds is given up."""
        try:
            return await sending
        except TimeoutError:
            raise _ClientGone("client stopped reading") from None

    async def _linger(self) -> None:
        """Close after the last response without losing it to a reset.

        Send FIN, then read and discard whatever the client still sends until it closes
        too, for at most `timeout` seconds: closing with unread data would make the kernel
        send RST, which can destroy the response before the client reads it.
        """
        self._channel.finish_sending()
        deadline = self._channel.now() + self._config.timeout
        with contextlib.suppress(TimeoutError):
            while await self._channel.read(CHUNK, deadline):
                pass
