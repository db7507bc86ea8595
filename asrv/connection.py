"""One client connection, driven on the event loop.

All network I/O happens here, on the loop, holding no worker and no lock: reading the head
and the body, sending the response, lingering before the close. File work goes to the pool
as one job per logical step (the store's methods). Every response waits until its request's
audit line is durable (`DurabilityGate.wait`), so nothing is acknowledged that the log lacks.

Every way a request can end funnels through `_respond`: it logs the request if its request
line parsed, waits for the line to be durable, and sends the byte-exact response.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asrv.config import Config
from asrv.durable import DurabilityGate
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
    oversized_head_error,
    parse_head,
    parse_request_line,
    response_head,
)
from asrv.pool import WorkerPool
from asrv.store import GetResult, Store, Upload

CHUNK = 256 * 1024
"""Most bytes read from a socket, or a file, in one step: the per-connection memory bound."""


@dataclass(frozen=True, slots=True)
class Services:
    """What a connection needs from its server."""

    config: Config
    pool: WorkerPool
    store: Store
    gate: DurabilityGate
    on_fatal: Callable[[FatalError], None]


class _ClientGone(Exception):
    """The client closed, reset or stalled: whatever remains of its request is lost."""


class Connection:
    def __init__(
        self, services: Services, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._services = services
        self._config = services.config
        self._reader = reader
        self._writer = writer
        self._buffer = b""
        self._requests = 0
        self.idle = True
        """True while waiting for the first byte of a request: safe to close at shutdown."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            # Head and small body go out in one write; Nagle would hold it for an ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def serve(self) -> None:
        """Serve requests until the connection ends, then close it."""
        try:
            while await self._serve_one():
                self._requests += 1
            await self._linger()
        except FatalError as error:
            self.abort()
            self._services.on_fatal(error)
        except (_ClientGone, OSError):
            self.abort()
        finally:
            self._writer.close()

    def abort(self) -> None:
        """Drop the connection at once, sending nothing more."""
        self._writer.transport.abort()

    async def _serve_one(self) -> bool:
        """Serve one request; True if the connection stays open for another."""
        self.idle = not self._buffer
        try:
            head = await self._read_head()
            if head is None:
                return False
            request = parse_head(head)
        except HttpError as error:
            await self._respond(
                error.status, error.line, error.request_id, close_requested=error.connection_close
            )
            return False
        keep = self._config.keep_alive and not request.connection_close
        if request.method is Method.PUT:
            status = await self._put(request, keep)
        else:
            status = await self._get(request, keep)
        return keep and status is not None

    async def _read_head(self) -> bytes | None:
        """The next request head, or None if the client closed (or, between keep-alive
        requests, idled out) before sending a byte of it."""
        line: RequestLine | None = None
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
            if len(buffer) >= MAX_HEAD:
                raise oversized_head_error(buffer)
            try:
                data = await self._receive()
            except TimeoutError:
                if not buffer and self._requests:
                    return None
                raise HttpError(Status.BAD_REQUEST, line) from None
            if not data:
                if not buffer:
                    return None
                raise HttpError(Status.BAD_REQUEST, line)
            self.idle = False
            self._buffer = buffer + data

    async def _receive(self, limit: int = CHUNK) -> bytes:
        """Buffered bytes first, else one read from the socket; b"" at EOF (or reset).

        Raises TimeoutError if the client sends nothing for `timeout` seconds.
        """
        if self._buffer:
            data, self._buffer = self._buffer[:limit], self._buffer[limit:]
            return data
        try:
            async with asyncio.timeout(self._config.timeout):
                return await self._reader.read(limit)
        except ConnectionError:
            return b""

    async def _read_body(
        self, length: int, sink: Callable[[bytes], Awaitable[None] | None] | None
    ) -> bool:
        """Read `length` body bytes; False if the client stopped short (EOF or stall).

        With a sink, each piece is handed to it (and awaited if it returns an awaitable).
        """
        remaining = length
        while remaining:
            try:
                data = await self._receive(min(remaining, CHUNK))
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

    async def _get(self, request: Request, keep: bool) -> Status | None:
        """Serve a GET; its status, or None if the request ended early (close after)."""
        line, request_id = request.line, request.request_id
        close_requested = request.connection_close
        if request.content_length and not await self._read_body(request.content_length, None):
            await self._respond(Status.BAD_REQUEST, line, request_id, close_requested)
            return None
        services = self._services
        result = await services.pool.run(
            services.store.get, line, request_id, discard=_close_result
        )
        try:
            await services.gate.wait(result.seq)
            close = self._announce_close(close_requested, keep)
            if result.fd is None:
                body = result.body
                await self._send(response_head(result.status, len(body), close=close) + body)
            else:
                await self._send(response_head(result.status, result.size, close=close))
                await self._stream(result.fd, result.size)
        finally:
            _close_result(result)
        return result.status

    async def _stream(self, fd: int, size: int) -> None:
        """Send `size` bytes of `fd`, one pool job per chunk, pacing on the client."""
        offset = 0
        while offset < size:
            data = await self._services.pool.run(os.pread, fd, min(CHUNK, size - offset), offset)
            if not data:
                # The file shrank behind the server's back (changed in place, not by a PUT):
                # the promised length cannot be met, so the response must end in a reset.
                raise _ClientGone("file shrank while being sent")
            offset += len(data)
            await self._send(data)

    async def _put(self, request: Request, keep: bool) -> Status | None:
        """Serve a PUT; its status, or None if the request ended early (close after)."""
        line, request_id = request.line, request.request_id
        close_requested = request.connection_close
        length = request.content_length or 0
        services = self._services
        store = services.store
        if request.expect_continue:
            await self._send(CONTINUE)
        if length <= CHUNK:
            parts: list[bytes] = []
            if not await self._read_body(length, parts.append):
                await self._respond(Status.BAD_REQUEST, line, request_id, close_requested)
                return None
            result = await services.pool.run(store.put_body, line, request_id, b"".join(parts))
        else:
            try:
                upload = await services.pool.run(store.new_upload, discard=store.abandon)
            except OSError:
                await self._respond(Status.INTERNAL_ERROR, line, request_id, close_requested)
                return None
            outcome = await self._upload(upload, length)
            if outcome is not None:
                await services.pool.run(store.abandon, upload)
                await self._respond(outcome, line, request_id, close_requested)
                return None
            result = await services.pool.run(store.put, line, request_id, upload)
        await services.gate.wait(result.seq)
        close = self._announce_close(close_requested, keep)
        await self._send(fixed_response(result.status, close=close))
        return result.status

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
            seq = self._services.store.record(line, status, request_id or NO_REQUEST_ID)
            await self._services.gate.wait(seq)
        close = self._announce_close(close_requested, keep=False)
        await self._send(fixed_response(status, close=close))

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
        self._writer.write(data)
        try:
            async with asyncio.timeout(self._config.timeout):
                await self._writer.drain()
        except TimeoutError:
            raise _ClientGone("client stopped reading") from None

    async def _linger(self) -> None:
        """Close after the last response without losing it to a reset.

        Send FIN, then read and discard whatever the client still sends until it closes
        too, for at most `timeout` seconds: closing with unread data would make the kernel
        send RST, which can destroy the response before the client reads it.
        """
        if self._writer.can_write_eof():
            self._writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(self._config.timeout):
                while await self._reader.read(CHUNK):
                    pass


def _close_result(result: GetResult) -> None:
    if result.fd is not None:
        fd, result.fd = result.fd, None
        os.close(fd)
