"""One client connection, driven on the event loop: the flow of its requests.

The connection moves bytes and awaits; it decides nothing about the wire format (`http`
frames and parses the heads) and sends files and writes uploads through objects of their
own (`sending`, `upload`). All network I/O happens on the loop, holding no worker and no
lock. File work goes to the pool as one operation per logical step (the store's methods).
Operations that log are submitted `durable=True`: their result comes back only once the
line is durable, so nothing is acknowledged that the log lacks.

Connections persist (RFC 9112 §9.3): requests are served one after another, pipelined ones
too, until the client closes or asks to, the connection idles out, a response leaves the
framing unknown, or the server shuts down (then the requests whose bytes have already
arrived are still served). With the course's grammar every connection carries one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from asrv.access import Access
from asrv.budget import ReadBudget
from asrv.channel import Channel, ClientGone
from asrv.config import Config
from asrv.errors import FatalError
from asrv.http import (
    CONTINUE,
    NEED_DATA,
    HeadReader,
    HttpError,
    Method,
    Persistence,
    Request,
    RequestLine,
    Status,
    fixed_response,
    not_modified_response,
    response_head,
)
from asrv.pool import WorkerPool
from asrv.sending import FileSender
from asrv.store import GetResult, Store, WriteResult
from asrv.upload import UploadBody

READ_LIMIT = 256 * 1024
"""Most bytes taken from the socket in one read."""


@dataclass(frozen=True, slots=True)
class Services:
    """What a connection needs from its server."""

    config: Config
    pool: WorkerPool
    store: Store
    budget: ReadBudget
    """The one bound on request bytes held in memory, across the server."""
    access: Access
    """Who may read and write."""
    on_fatal: Callable[[FatalError], None]
    stopping: asyncio.Event
    """Set when the server shuts down: serve what has arrived, then close."""


class _Step(enum.Enum):
    """How a connection goes on after a request."""

    NEXT = "next"
    """Serve the next request."""
    CLOSE = "close"
    """A response went out and ends the connection: close without losing it to a reset."""
    END = "end"
    """Nothing to answer (the client closed, idled out, or shutdown found it idle)."""


class Connection:
    def __init__(self, services: Services, channel: Channel) -> None:
        self._services = services
        self._config = services.config
        self._channel = channel
        self._reader = HeadReader(services.config.grammar)
        self._sender = FileSender(services.pool, services.store, channel)
        self._served = 0
        self.started = False
        """Whether `serve` has begun (and so will close its channel itself)."""
        self._waiting = True  # for the first byte of a next request
        # Whether every byte the last request sent or announced has been read: then the
        # client has nothing more on its way, and closing cannot reset the connection.
        self._consumed = True
        # A request whose line parsed and whose log line is not yet on its way: if the
        # connection is cancelled (shutdown), it is still logged, as the 400 it became.
        # (Its Request-Id is None while the head is incomplete: the reader finds it.)
        self._unlogged: tuple[RequestLine, str | None] | None = None

    @property
    def idle(self) -> bool:
        """Waiting for a next request of which no byte has reached the server, not even
        the kernel's buffer: safe to close at shutdown without losing a request."""
        return self._waiting and not self._reader.buffered and not self._channel.has_unread()

    def close_idle(self) -> None:
        """Shutdown: close an idle connection after what it has still to send (the end of
        its last response may still be queued). Its wait for a next request then ends."""
        self._channel.close()

    async def serve(self) -> None:
        """Serve requests until the connection ends, then close it."""
        self.started = True
        try:
            while (step := await self._serve_one()) is _Step.NEXT:
                self._served += 1
                if self._services.stopping.is_set() and not self._has_next():
                    step = _Step.CLOSE  # shutting down, and no byte of another request came
                    break
            if step is _Step.CLOSE:
                await self._linger()
            await self._channel.close_when_sent()
        except asyncio.CancelledError:
            await self._log_cancelled()
            raise
        except FatalError as error:
            self.abort()
            self._services.on_fatal(error)
        except (ClientGone, OSError):
            self.abort()
        finally:
            self._channel.close()

    def abort(self) -> None:
        """Drop the connection at once, sending nothing more."""
        self._channel.abort()

    def _has_next(self) -> bool:
        return bool(self._reader.buffered) or self._channel.has_unread()

    async def _serve_one(self) -> _Step:
        event = await self._next_request()
        if event is None:
            return _Step.END
        if isinstance(event, HttpError):
            self._consumed = False  # whatever follows a bad head is of unknown length
            return _step(await self._reject(event))
        request = event
        self._consumed = not request.content_length
        self._unlogged = (request.line, request.request_id)
        refusal = self._refusal(request)
        if refusal is not None:
            return _step(await self._refuse(request, refusal))
        max_body = self._config.max_body
        if max_body is not None and (request.content_length or 0) > max_body:
            # The body is not read, so where the next request starts is unknown: close.
            line, request_id = request.line, request.request_id
            await self._respond(Status.PAYLOAD_TOO_LARGE, line, request_id, request.persistence)
            return _Step.CLOSE
        if request.method is Method.PUT:
            return _step(await self._put(request))
        if request.method is Method.DELETE:
            return _step(await self._delete(request))
        return _step(await self._get(request))  # GET or HEAD

    def _refusal(self, request: Request) -> Status | None:
        """401 for a request without a token it needs, 403 for a write to a read-only
        server; None if it may go on (SPEC §3: after the method, before the file)."""
        access = self._services.access
        writes = request.method is Method.PUT or request.method is Method.DELETE
        if not access.allows(writes, request.authorization):
            return Status.UNAUTHORIZED
        if writes and access.read_only:
            return Status.FORBIDDEN
        return None

    async def _refuse(self, request: Request, status: Status) -> bool:
        """Answer a refused request without reading its body: no 100 Continue, nothing
        stored. The connection goes on only if there is no body to skip."""
        keep = not request.content_length and self._keeps_open(request.persistence)
        fields = b"WWW-Authenticate: Bearer\r\n" if status is Status.UNAUTHORIZED else b""
        line, request_id = request.line, request.request_id
        await self._respond(status, line, request_id, request.persistence, keep=keep, fields=fields)
        return keep

    async def _next_request(self) -> Request | HttpError | None:
        """The next request head, or an error to answer; None if the connection ends
        quietly (closed, idled out, or shutting down) before a byte of it came."""
        reader, channel = self._reader, self._channel
        self._waiting = True
        # However the head trickles in, it must be whole by this time (slowloris).
        deadline = channel.now() + self._config.head_timeout if reader.buffered else None
        while True:
            event = reader.next_event()
            if event is not NEED_DATA:
                self._waiting = False
                return event
            if reader.line is not None and self._unlogged is None:
                self._unlogged = (reader.line, None)
            if self._services.stopping.is_set() and not self._has_next():
                return None
            try:
                data = await channel.read(READ_LIMIT, deadline)
            except TimeoutError:
                self._waiting = False
                return reader.stalled(first=not self._served)
            if not data:
                self._waiting = False
                return reader.eof()
            if deadline is None:
                deadline = channel.now() + self._config.head_timeout
            self._waiting = False
            reader.feed(data)

    async def _reject(self, error: HttpError) -> bool:
        """Answer a head that cannot be served; True if the connection goes on (a 501
        whose body could be skipped)."""
        max_body = self._config.max_body
        if error.body_length is None or (max_body is not None and error.body_length > max_body):
            await self._respond(error.status, error.line, error.request_id, error.persistence)
            return False
        if error.line is not None:
            self._unlogged = (error.line, error.request_id)
        if not await self._read_body(error.body_length, None):
            await self._respond(Status.BAD_REQUEST, error.line, error.request_id, error.persistence)
            return False
        keep = self._keeps_open(error.persistence)
        await self._respond(
            error.status, error.line, error.request_id, error.persistence, keep=keep
        )
        return keep

    async def _log_cancelled(self) -> None:
        """Log the request a shutdown cut short (SPEC: every parsed request has a line)."""
        if self._unlogged is None:
            return
        line, request_id = self._unlogged
        if request_id is None:
            request_id = self._reader.partial_request_id()
        self._unlogged = None
        store = self._services.store
        try:
            await asyncio.shield(
                self._services.pool.run(
                    store.record, line, Status.BAD_REQUEST, request_id, durable=True
                )
            )
        except asyncio.CancelledError:
            pass  # cancelled again: the line is on its way all the same
        except FatalError as error:
            self._services.on_fatal(error)  # the server must not stop as if all were well

    def _keeps_open(self, persistence: Persistence) -> bool:
        """Decided as the response goes out: a shutdown that began meanwhile closes the
        connection too, unless bytes of a next request have already come."""
        return persistence.persists and (not self._services.stopping.is_set() or self._has_next())

    async def _receive(self, limit: int, deadline: float | None) -> bytes:
        """Bytes already read past the head, else one read from the socket."""
        if self._reader.buffered:
            return self._reader.take(limit)
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
                data = await self._receive(min(remaining, READ_LIMIT), deadline)
            except TimeoutError:
                return False
            if not data:
                return False
            remaining -= len(data)
            outcome = None if sink is None else sink(data)
            # Not kept while waiting for the next piece: the sink holds what it keeps (and
            # the server's read budget counts it), a stalled client nothing more.
            del data
            if outcome is not None:
                await outcome
        self._consumed = True
        return True

    async def _skip_body(self, request: Request) -> bool:
        """Read and ignore the body of a GET, HEAD or DELETE; False if it was cut short (the
        400 is then sent, and the connection ends)."""
        if not request.content_length:
            return True
        if request.expect_continue:
            await self._continue(request)
        if await self._read_body(request.content_length, None):
            return True
        await self._respond(
            Status.BAD_REQUEST, request.line, request.request_id, request.persistence
        )
        return False

    async def _get(self, request: Request) -> bool:
        """Serve a GET or HEAD; True if the connection stays open for another request."""
        if not await self._skip_body(request):
            return False
        sender = self._sender
        head = request.method is Method.HEAD
        self._unlogged = None  # a queued operation runs, and logs, even if cancelled
        result = await self._services.pool.run(
            self._services.store.get,
            request.line,
            request.request_id,
            request.conditions,
            head,
            durable=True,
            discard=sender.release,
        )
        try:
            keep = self._keeps_open(request.persistence)
            connection = request.persistence.connection_header(keep)
            fields = _version_fields(result)
            if result.status is Status.NOT_MODIFIED:
                assert result.etag is not None
                await self._channel.send(not_modified_response(result.etag, connection))
            elif head:
                length = result.file_size if result.status is Status.OK else len(result.body)
                await self._channel.send(response_head(result.status, length, connection, fields))
            elif result.fd is None:
                body = result.body
                head_bytes = response_head(result.status, len(body), connection, fields)
                await self._channel.send(head_bytes + body)
            else:
                head_bytes = response_head(result.status, result.count, connection, fields)
                await sender.send(head_bytes, result.fd, result.offset, result.count)
        finally:
            sender.release(result)
        return keep

    async def _put(self, request: Request) -> bool:
        """Serve a PUT; True if the connection stays open for another request."""
        line, request_id = request.line, request.request_id
        if request.expect_continue:
            await self._continue(request)
        services = self._services
        body = UploadBody(
            services.pool, services.store, services.budget, request.content_length or 0
        )
        outcome: WriteResult | Status
        try:
            complete = await self._read_body(request.content_length or 0, body.add)
        except OSError:
            complete = None  # the body could not be stored as it came: 500
        except BaseException:
            # Cancelled by a shutdown: the partial body must not outlive the request.
            await body.abandon()
            raise
        if complete:
            try:
                outcome = await body.commit(line, request_id, request.conditions, self._handed_over)
            except OSError:
                await body.abandon()
                outcome = Status.INTERNAL_ERROR  # logged and answered below
            except BaseException:
                await body.abandon()  # cancelled before the store took the body
                raise
        else:
            await body.abandon()
            outcome = Status.BAD_REQUEST if complete is False else Status.INTERNAL_ERROR
        if isinstance(outcome, Status):
            # The body was not read whole: where the next request starts is unknown.
            await self._respond(outcome, line, request_id, request.persistence)
            return False
        return await self._written(request, outcome)

    async def _delete(self, request: Request) -> bool:
        """Serve a DELETE; True if the connection stays open for another request."""
        if not await self._skip_body(request):
            return False
        self._unlogged = None  # a queued operation runs, and logs, even if cancelled
        outcome = await self._services.pool.run(
            self._services.store.delete,
            request.line,
            request.request_id,
            request.conditions,
            durable=True,
            alone=True,  # it waits for a sync of its own, as a PUT does
        )
        return await self._written(request, outcome)

    async def _written(self, request: Request, outcome: WriteResult) -> bool:
        """Answer a PUT or DELETE the store decided; True if the connection stays open."""
        keep = self._keeps_open(request.persistence)
        connection = request.persistence.connection_header(keep)
        fields = b"" if outcome.etag is None else _etag_field(outcome.etag)
        await self._channel.send(fixed_response(outcome.status, connection, fields))
        return keep

    def _handed_over(self) -> None:
        """The request's operation is on its way: it logs the request, even if cancelled."""
        self._unlogged = None

    async def _continue(self, request: Request) -> None:
        """Send 100 (Continue) to a client that waits for it before sending its body."""
        try:
            await self._channel.send(CONTINUE)
        except (ClientGone, ConnectionError):
            # Gone before its body: logged as the 400 it would have been sent.
            await self._record(Status.BAD_REQUEST, request.line, request.request_id)
            raise

    async def _respond(
        self,
        status: Status,
        line: RequestLine | None,
        request_id: str,
        persistence: Persistence,
        *,
        keep: bool = False,
        fields: bytes = b"",
    ) -> None:
        """Answer a request without file work (a 400, 401, 403, 413, 501, 505, or a failed
        upload): log it if its request line parsed, then send the response."""
        if line is not None:
            await self._record(status, line, request_id)
        connection = persistence.connection_header(keep)
        if line is not None and line.method == "HEAD" and not self._config.course:
            # RFC 9110 §9.3.2: the head a GET would get, and no body (the course's server
            # knows no HEAD, and answers it as any other method).
            body_length = len(status.body)
            await self._channel.send(response_head(status, body_length, connection, fields))
            return
        await self._channel.send(fixed_response(status, connection, fields))

    async def _record(self, status: Status, line: RequestLine, request_id: str) -> None:
        """Log a request that did no file work, and wait until its line is durable."""
        store = self._services.store
        self._unlogged = None
        await self._services.pool.run(store.record, line, status, request_id, durable=True)

    async def _linger(self) -> None:
        """Close after the last response without losing it to a reset.

        Closing a socket that still receives data makes the kernel send RST, which can
        destroy the response before the client reads it. So when the client may still be
        sending (a body the server did not read, a head it could not frame, bytes already
        here), the server half-closes and reads and discards until the client closes too,
        for at most `timeout` seconds. Otherwise it closes at once, as nginx does, and the
        client has its end of the response without a wait.
        """
        # Under TLS, which has no half-close, this sends nothing: closing sends close_notify
        # after the response, and the loop's TLS shutdown reads on until the client's own.
        # A client still sending must not meet that shutdown, which answers its data with
        # an alert and a reset: its end is awaited first, as without TLS.
        self._channel.finish_sending()
        # The course's server reads and ignores whatever follows, until the client closes.
        if self._consumed and not self._has_next() and not self._config.course:
            return
        deadline = self._channel.now() + self._config.timeout
        with contextlib.suppress(TimeoutError):
            while await self._channel.read(READ_LIMIT, deadline):
                pass


def _etag_field(etag: str) -> bytes:
    return b"ETag: %s\r\n" % etag.encode("ascii")


def _version_fields(result: GetResult) -> bytes:
    """A GET's or HEAD's fields beyond the course's: only a request that used HEAD, a
    range or a condition has an `etag`, and only a 206 or 416 a Content-Range."""
    fields = b""
    if result.span is not None:
        fields = b"Content-Range: %s\r\n" % result.span.content_range().encode("ascii")
    elif result.status is Status.RANGE_NOT_SATISFIABLE:
        fields = b"Content-Range: bytes */%d\r\n" % result.file_size
    if result.etag is not None:
        fields += _etag_field(result.etag)
    return fields


def _step(keep: bool) -> _Step:
    return _Step.NEXT if keep else _Step.CLOSE
