"""`Channel`: one TCP connection as a protocol, read and written by one coroutine.

asyncio's streams cost more per request than the rest of the loop's work together (a
StreamReader, a StreamWriter, and an `asyncio.timeout` context per read); a file server that
answers one request per connection pays that on every request. This protocol keeps only
what `Connection` needs: a byte buffer with an idle timeout on reads, and writes with
flow control whose timeout bounds a stall rather than a whole transfer.
"""

from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import math
import os
import socket
import struct
import termios
from collections import deque
from collections.abc import Callable
from typing import cast

from asrv.budget import ReadBudget

_READ = "read"
_WRITE = "write"
_CLOSED = "closed"

HIGH_WATER = 256 * 1024
"""Buffered unread bytes at which reading from the socket pauses (memory bound)."""

_BYTES_ACKED_OFFSET = 120
"""Where `struct tcp_info` (linux/tcp.h, since Linux 4.1) holds tcpi_bytes_acked, a u64."""

# sendfile(2) errors that mean "not with this file or socket", before any byte went out.
_SENDFILE_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK}


class ClientGone(Exception):
    """The response cannot be completed: the client took no byte for `timeout` seconds, or
    the body can no longer be sent as promised (the file shrank). The connection must be
    dropped."""


class SendfileUnavailable(Exception):
    """This connection, or this file, cannot be sent with sendfile(2): copy it instead.

    No byte of the file was sent; `head_sent` tells whether the head went out before.
    """

    def __init__(self, *, head_sent: bool) -> None:
        super().__init__("sendfile refused")
        self.head_sent = head_sent


class Channel(asyncio.Protocol):
    def __init__(
        self, timeout: float, on_open: Callable[[Channel], None], budget: ReadBudget
    ) -> None:
        self.timeout = timeout
        self._on_open = on_open
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False
        self._reading_paused = False
        self._full = False  # this channel's own buffer reached HIGH_WATER
        self._starved = False  # the server's read budget is exhausted
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for = _READ
        self._side: socket.socket | None = None
        self._watched = -1  # the side socket's descriptor while a send waits on it
        self._deadline = 0.0  # of the current wait
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self.lost = False

    # Protocol callbacks, from the loop.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self._budget.join(self, self._starve, self._feed)
        if self._starved:
            # uvloop starts reading once connection_made returns, whatever was asked during it.
            self._loop.call_soon(self._update_reading)
        self._on_open(self)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= HIGH_WATER:
            self._full = True
        self._budget.take(len(data))  # may starve every channel, this one too
        if self._full or self._starved:
            self._update_reading()
        self._wake(_READ)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake(_READ)
        # Keep the connection open: the response may still go out. TLS has no half-close
        # (the loop closes its transports at a client's close_notify whatever this says,
        # and warns if it says otherwise).
        return self._transport().get_extra_info("sslcontext") is None

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

    def has_unread(self) -> bool:
        """Whether bytes have reached the server that nobody has read yet: in this
        channel's buffer, or still in the kernel's (the loop has not read them yet)."""
        if self._chunks:
            return True
        transport_socket = None if self.lost else self._transport().get_extra_info("socket")
        if transport_socket is None:
            return False
        count = array.array("i", [0])
        try:
            fcntl.ioctl(transport_socket.fileno(), termios.FIONREAD, count)
        except OSError:
            return False
        return count[0] > 0

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
        if self._full and self._buffered < HIGH_WATER // 4:
            self._full = False
        if self._reading_paused and not self._full and not self._starved:
            self._update_reading()
        self._budget.give(len(chunk))
        return chunk

    def _starve(self) -> None:
        self._starved = True
        self._update_reading()

    def _feed(self) -> None:
        self._starved = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read from the socket unless this buffer is full or the server's budget is
        exhausted (then every channel stops, even an empty one: the loop reads every
        ready socket in one pass, and each read can bring 256 KiB)."""
        if self.lost:
            return
        transport = self._transport()
        if transport.is_closing():
            return
        paused = self._full or self._starved
        # The transport's own state, not a cached one: uvloop starts reading after
        # connection_made whatever was asked during it.
        if paused and transport.is_reading():
            transport.pause_reading()
        elif not paused and not transport.is_reading():
            transport.resume_reading()
        self._reading_paused = paused

    async def send(self, data: bytes) -> None:
        """Write `data`; wait while the client is behind, failing only when it stalls.

        Raises ConnectionError if the connection is gone, ClientGone if the client took
        no byte for `timeout` seconds.
        """
        if self.lost:
            raise ConnectionResetError("connection lost")
        self._transport().write(data)
        await self._wait_while_behind(lambda: self._writing_paused)

    async def send_file(self, fd: int, offset: int, count: int, head: bytes = b"") -> int:
        """Send `head`, then up to `count` bytes of `fd` from `offset` with sendfile(2),
        after whatever is queued; returns the file bytes sent, fewer only if the file
        ended first.

        The kernel copies from the page cache to the socket: no byte passes through Python.
        The caller makes sure those pages are cached (a worker read them), since a read
        from disk here would stall the loop. The transport is bypassed, so first its buffer
        must drain. Raises SendfileUnavailable if not one byte of the file could be sent
        this way (no socket, or a file the kernel cannot send), ClientGone when the client
        takes no byte for `timeout` seconds, ConnectionError when it is gone.
        """
        side = self._side_socket()
        if side is None:
            raise SendfileUnavailable(head_sent=False)
        await self._drain()
        if head:
            await self._send_head(side, head)
        sent = 0
        # Only progress moves the stall deadline: a socket that wakes writable and still
        # takes nothing must not keep the connection alive, nor spin the loop, forever.
        stall_deadline = self._loop.time() + self.timeout
        while sent < count:
            if self.lost:
                raise ConnectionResetError("connection lost")
            try:
                done = os.sendfile(side.fileno(), fd, offset + sent, count - sent)
            except BlockingIOError:
                remaining = stall_deadline - self._loop.time()
                if remaining <= 0:
                    raise ClientGone("client stopped reading") from None
                taken = self._taken()
                try:
                    await self._wait_writable(side.fileno(), remaining)
                except ClientGone:
                    if self._taken() <= taken:
                        raise
                    # The client took bytes, if too few yet to make the socket writable
                    # (a third of its buffer free): a slow reader is no stalled one.
                    stall_deadline = self._loop.time() + self.timeout
                continue
            except OSError as error:
                if sent == 0 and error.errno in _SENDFILE_UNSUPPORTED:
                    raise SendfileUnavailable(head_sent=bool(head)) from error
                raise
            if not done:
                break  # end of file: it shrank
            sent += done
            stall_deadline = self._loop.time() + self.timeout
        return sent

    def _side_socket(self) -> socket.socket | None:
        """This connection's socket on a descriptor of our own, made on first use.

        Both loops refuse a writability watch on a transport's descriptor, and a socket
        object can send with MSG_MORE; our own descriptor also stays valid whatever the
        transport does with its one. None if there is no socket (or no descriptor left);
        ConnectionResetError once the channel is closing.
        """
        if self._side is None:
            if self._transport().is_closing():
                raise ConnectionResetError("connection closed")
            transport = self._transport()
            transport_socket = transport.get_extra_info("socket")
            if transport_socket is None or transport.get_extra_info("sslcontext") is not None:
                return None  # under TLS the kernel would send the file unencrypted
            try:
                duplicate = os.dup(transport_socket.fileno())
            except OSError:
                return None
            try:
                self._side = socket.socket(
                    transport_socket.family, transport_socket.type, 0, duplicate
                )
            except OSError:
                os.close(duplicate)
                return None
        return self._side

    def _close_side_socket(self) -> None:
        # Unwatched first: the loop must not go on watching a closed descriptor number.
        # Before the transport closes its own descriptor: the connection ends (FIN or
        # RST) only when the last descriptor of the socket closes.
        self._unwatch()
        if self._side is not None:
            self._side.close()
            self._side = None

    async def _send_head(self, side: socket.socket, head: bytes) -> None:
        """Write `head` with the transport's buffer empty. MSG_MORE lets it leave with the
        file's first bytes instead of in a segment of its own, and the socket call lets go
        of the GIL, which uvloop's own write does not. Whatever the socket does not take
        goes through the transport."""
        try:
            written = side.send(head, socket.MSG_MORE)
        except BlockingIOError:
            written = 0
        if written < len(head):
            self._transport().write(head[written:])
            await self._drain()

    async def _drain(self) -> None:
        """Wait until the transport has handed every queued byte to the kernel."""
        transport = self._transport()
        if not transport.get_write_buffer_size():
            return
        # With both limits at zero the transport calls resume_writing once it is empty.
        transport.set_write_buffer_limits(high=0)
        try:
            await self._wait_while_behind(transport.get_write_buffer_size)
        finally:
            if not self.lost:
                transport.set_write_buffer_limits()

    async def _wait_while_behind(self, behind: Callable[[], object]) -> None:
        """Wait while `behind()` holds, failing only when the client stalls: ClientGone
        if the transport handed no byte to the kernel for `timeout` seconds,
        ConnectionError if the connection is gone."""
        while behind() and not self.lost:
            taken = self._taken()
            try:
                await self._wait(self.timeout, _WRITE)
            except TimeoutError:
                if self._taken() <= taken:
                    raise ClientGone("client stopped reading") from None
        if self.lost:
            raise ConnectionResetError("connection lost")

    def _taken(self) -> int:
        """A count that grows whenever the client takes bytes: the bytes it acknowledged
        (TCP_INFO's tcpi_bytes_acked). It moves on while a slow reader frees less of the
        socket's buffer than the third the kernel waits for before it reports the socket
        writable (or the transport drains), which can take longer than `timeout`. Where
        that cannot be read, the transport's buffer shrinking counts instead."""
        transport = self._transport()
        transport_socket = None if self.lost else transport.get_extra_info("socket")
        if transport_socket is not None:
            try:
                info = transport_socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            except OSError:
                info = b""
            if len(info) >= _BYTES_ACKED_OFFSET + 8:
                acked: int = struct.unpack_from("=Q", info, _BYTES_ACKED_OFFSET)[0]
                return acked
        return -transport.get_write_buffer_size()

    async def _wait_writable(self, watch_fd: int, seconds: float) -> None:
        """Wait until the socket takes bytes again; ClientGone after `seconds`.
        `watch_fd` must not be the transport's own descriptor."""
        self._loop.add_writer(watch_fd, self._wake, _WRITE)
        self._watched = watch_fd
        try:
            await self._wait(seconds, _WRITE)
        except TimeoutError:
            raise ClientGone("client stopped reading") from None
        finally:
            self._unwatch()

    def _unwatch(self) -> None:
        if self._watched >= 0:
            self._loop.remove_writer(self._watched)
            self._watched = -1

    def finish_sending(self) -> None:
        """Send FIN after what is queued (the response is complete); nothing where the
        transport has no half-close (TLS)."""
        transport = self._transport()
        if not self.lost and transport.can_write_eof():
            transport.write_eof()

    def close(self) -> None:
        self._cancel_timer()
        self._close_side_socket()
        self._release_budget()
        if self.transport is not None:
            self.transport.close()

    async def close_when_sent(self) -> None:
        """Close, and wait until what is queued has gone to the kernel and, under TLS, the
        TLS shutdown has ended: a server that stops right after must not lose the end of a
        response still in the transport's buffers. A client that takes nothing for
        `timeout` seconds is dropped; one that reads slowly is not."""
        if self.lost:
            self.close()
            return
        transport = self._transport()
        tls = transport.get_extra_info("sslcontext") is not None
        if tls:
            # The loop's TLS shutdown bounds its whole flush by ssl_shutdown_timeout, however
            # steadily the client reads: it gets only what is left once the rest is taken.
            try:
                await self._drain()
            except (ClientGone, ConnectionError):
                self.abort()
                return
        pending = tls or transport.get_write_buffer_size() > 0  # close_notify, at least
        self.close()
        if not pending:
            return
        try:
            while not self.lost:  # connection_lost wakes any wait
                taken = self._taken()
                try:
                    await self._wait(self.timeout, _CLOSED)
                except TimeoutError:
                    if self._taken() <= taken:
                        self.abort()
                        return
        finally:
            self._cancel_timer()

    def abort(self) -> None:
        self._cancel_timer()
        self._close_side_socket()
        self._release_budget()
        if self.transport is not None:
            self.transport.abort()

    def _release_budget(self) -> None:
        """What is still unread will never be read: it no longer counts."""
        self._budget.leave(self)
        self._budget.give(self._buffered)
        self._buffered = 0
        self._chunks.clear()

    async def _wait(self, seconds: float, kind: str) -> None:
        """Sleep until a `kind` event (or the loss of the connection) wakes this channel,
        or `seconds` pass (TimeoutError). Only the awaited kind wakes it: bytes arriving
        from a client that does not read must not restart a send's stall timer."""
        self._waiting_for = kind
        waiter = self._waiter = self._loop.create_future()
        self._deadline = deadline = self._loop.time() + seconds
        # The timer is re-armed lazily: one left from an earlier wait fires first and
        # moves itself to this deadline, so a busy connection makes no timer per wait.
        if self._timer_at > deadline:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._loop.time() >= self._deadline:
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)
            self._timer_at = self._deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = math.inf

    def _wake(self, kind: str | None) -> None:
        waiter = self._waiter
        if kind is not None and kind != self._waiting_for:
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport
