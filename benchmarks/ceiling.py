"""The ceiling: what a server of asrv's shape reaches when its own code costs nothing.

    python benchmarks/ceiling.py --root DIR --log FILE [--host 127.0.0.1] [--no-fsync] PORT

The same loop as asrv (uvloop), a listening socket bound the same way (bound here with
TCP_NODELAY and passed as `sock=`), and one `asyncio.Protocol` whose `data_received` parses
just enough: the end of the head, the method and target, `Content-Length` (a body is read
and dropped), `Connection: close` (the connection closes after the response). Every request
gets a fixed response built at start-up:

- `GET /file1m`: 200 with the root's `file1m`, sent with sendfile(2) from a descriptor
  opened at start-up (asrv sends large files the same way, from the page cache);
- any other GET: 200 with 4 KiB from memory;
- PUT: `201 Created`, once its body is read.

What it keeps of asrv's guarantees is the durable log: every request appends one line
(`METHOD,TARGET,STATUS,0`) and is answered only once that line is synced. The lines of all
requests that arrived in one loop iteration go to the log in one write and one fdatasync,
on a single thread of its own (one `ThreadPoolExecutor(max_workers=1)`, started before
listening), while the loop goes on serving; requests that arrive during a sync ride the next
one: one group-committed sync per batch, as asrv's log leader does. There is no file work:
no open, stat, lock or read per request, no data sync for a PUT.

`--no-fsync` writes the lines without the fdatasync. Port 0 picks a free port; the port is
reported as `ceiling: listening on http://HOST:PORT (...)` on standard error. SIGTERM or
SIGINT stops it with `ceiling: stopped after N requests logged in M log flushes`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import socket
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import uvloop

BACKLOG = 1024
LARGE_TARGET = b"/file1m"
SMALL_BODY = b"c" * 4096
MAX_HEAD = 8192


@dataclass(frozen=True)
class Response:
    """A fixed response: `head` (with the body when it is in memory), then `file_size`
    bytes of the start-up descriptor, then a close if `close`."""

    head: bytes
    file_size: int = 0
    close: bool = False


def _small(status: str, body: bytes, close: bool) -> Response:
    connection = "Connection: close\r\n" if close else ""
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{connection}\r\n"
    return Response(head.encode() + body, close=close)


def _large(size: int, close: bool) -> Response:
    connection = "Connection: close\r\n" if close else ""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n{connection}\r\n"
    return Response(head.encode(), size, close)


class GroupLog:
    """Log lines appended during one loop iteration go out in one write and one fdatasync on
    the sync thread; each request's connection is told once its line is durable."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, executor: ThreadPoolExecutor, fsync: bool
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._executor = executor
        self._fsync = fsync
        self._lines: list[bytes] = []
        self._waiting: list[tuple[Connection, Response]] = []
        self._syncing = False
        self._scheduled = False
        self.requests = 0
        self.flushes = 0
        self.failed: BaseException | None = None

    def append(self, line: bytes, connection: Connection, response: Response) -> None:
        self._lines.append(line)
        self._waiting.append((connection, response))
        if not self._syncing and not self._scheduled:
            # After every data_received of this iteration: they form the batch.
            self._scheduled = True
            self._loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._syncing or not self._lines or self.failed is not None:
            return
        data = b"".join(self._lines)
        waiting = self._waiting
        self._lines, self._waiting = [], []
        self._syncing = True
        future = self._executor.submit(self._write, data)
        future.add_done_callback(
            lambda done: self._loop.call_soon_threadsafe(self._done, waiting, done)
        )

    def _write(self, data: bytes) -> None:
        """On the sync thread."""
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if self._fsync:
            os.fdatasync(self._fd)

    def _done(self, waiting: list[tuple[Connection, Response]], future: Future[None]) -> None:
        self._syncing = False
        error = future.exception()
        if error is not None:  # acknowledge nothing more
            self.failed = error
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.flushes += 1
        self.requests += len(waiting)
        for connection, response in waiting:
            connection.durable(response)
        if self._lines:
            self._start()


class Connection(asyncio.Protocol):
    def __init__(self, log: GroupLog, file_fd: int, file_size: int) -> None:
        self._log = log
        self._file_fd = file_fd
        self._responses = {
            (b"GET", False): _small("200 OK", SMALL_BODY, False),
            (b"GET", True): _small("200 OK", SMALL_BODY, True),
            (b"PUT", False): _small("201 Created", b"Created\n", False),
            (b"PUT", True): _small("201 Created", b"Created\n", True),
            (b"LARGE", False): _large(file_size, False),
            (b"LARGE", True): _large(file_size, True),
        }
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._skip = 0  # body bytes still to drop before `_after_body` is logged
        self._after_body: tuple[bytes, Response] | None = None
        self._closing = False  # a Connection: close request was read: read no more
        self._lost = False
        self._queue: collections.deque[Response] = collections.deque()
        self._sending: Response | None = None  # a file response under way
        self._head_left = b""
        self._offset = 0
        self._side: socket.socket | None = None  # own descriptor of the socket, for sendfile

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._close_side()

    def data_received(self, data: bytes) -> None:
        if self._skip:
            if len(data) < self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip :]
            self._skip = 0
            assert self._after_body is not None
            self._log.append(self._after_body[0], self, self._after_body[1])
            self._after_body = None
        if self._closing:
            return
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while not self._closing:
            end = buffer.find(b"\r\n\r\n", start)
            if end < 0:
                break
            line, response, length = self._parse(buffer[start:end])
            start = end + 4
            if length > len(buffer) - start:
                self._skip = length - (len(buffer) - start)
                self._after_body = (line, response)
                start = len(buffer)
                break
            start += length
            self._log.append(line, self, response)
        self._buffer = buffer[start:]
        if len(self._buffer) > MAX_HEAD:
            self._abort()

    def _parse(self, head: bytes) -> tuple[bytes, Response, int]:
        """The log line, the response and the body length of a request's head."""
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        fields = b"" if line_end < 0 else head[line_end:].lower()
        method, _, rest = request_line.partition(b" ")
        target = rest.partition(b" ")[0]
        close = b"\r\nconnection: close" in fields
        length = 0
        at = fields.find(b"\r\ncontent-length:")
        if at >= 0:
            value_end = fields.find(b"\r\n", at + 17)
            length = int(fields[at + 17 : value_end if value_end >= 0 else None])
        if close:
            self._closing = True
        if method == b"PUT":
            key, status = b"PUT", b"201"
        elif target == LARGE_TARGET and self._file_fd >= 0:
            key, status = b"LARGE", b"200"
        else:
            key, status = b"GET", b"200"
        return b"%s,%s,%s,0\n" % (method, target, status), self._responses[key, close], length

    def durable(self, response: Response) -> None:
        """The request's log line is durable: answer it, after any response under way."""
        if self._lost:
            return
        if self._sending is not None or self._queue:
            self._queue.append(response)
            return
        self._answer(response)

    def _answer(self, response: Response) -> None:
        transport = self._transport
        assert transport is not None
        if not response.file_size:
            transport.write(response.head)
            if response.close:
                transport.close()
            return
        self._sending = response
        self._head_left = response.head
        self._offset = 0
        if transport.get_write_buffer_size():
            # sendfile bypasses the transport: wait until it has handed everything over.
            transport.set_write_buffer_limits(high=0)
            return
        self._pump()

    def resume_writing(self) -> None:
        if self._sending is not None and self._transport is not None:
            self._transport.set_write_buffer_limits()
            self._pump()

    def _pump(self) -> None:
        """Send the head, then the file, on our own descriptor; on EAGAIN wait until the
        socket is writable again."""
        response = self._sending
        if response is None or self._lost:
            return
        loop = asyncio.get_running_loop()
        try:
            side = self._side_socket()
        except OSError:
            self._abort()
            return
        try:
            while self._head_left:
                self._head_left = self._head_left[side.send(self._head_left, socket.MSG_MORE) :]
            while self._offset < response.file_size:
                sent = os.sendfile(
                    side.fileno(), self._file_fd, self._offset, response.file_size - self._offset
                )
                if not sent:
                    raise ConnectionError("file shrank")
                self._offset += sent
        except BlockingIOError:
            loop.add_writer(side.fileno(), self._pump)
            return
        except OSError:
            self._abort()
            return
        loop.remove_writer(side.fileno())
        self._sending = None
        if response.close:
            self._close_side()
            assert self._transport is not None
            self._transport.close()
            return
        while self._queue and self._sending is None and not self._lost:
            self._answer(self._queue.popleft())

    def _side_socket(self) -> socket.socket:
        if self._side is None:
            assert self._transport is not None
            own = self._transport.get_extra_info("socket")
            self._side = socket.socket(own.family, own.type, 0, os.dup(own.fileno()))
        return self._side

    def _close_side(self) -> None:
        if self._side is not None:
            asyncio.get_running_loop().remove_writer(self._side.fileno())
            self._side.close()
            self._side = None

    def _abort(self) -> None:
        self._close_side()
        if self._transport is not None:
            self._transport.abort()


def bind(host: str, port: int) -> socket.socket:
    """As asrv binds: numeric address, SO_REUSEADDR, TCP_NODELAY for accepted sockets."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    sock = bind(args.host, args.port)
    large = args.root / LARGE_TARGET.decode().lstrip("/")
    file_fd = os.open(large, os.O_RDONLY | os.O_CLOEXEC) if large.is_file() else -1
    file_size = os.fstat(file_fd).st_size if file_fd >= 0 else 0
    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceiling-sync")
    executor.submit(lambda: None).result()  # the sync thread runs before the first request
    log = GroupLog(loop, log_fd, executor, args.fsync)
    server = await loop.create_server(
        lambda: Connection(log, file_fd, file_size), sock=sock, backlog=BACKLOG
    )
    port = sock.getsockname()[1]
    fsync = "fsync on" if args.fsync else "fsync off"
    print(
        f"ceiling: listening on http://{args.host}:{port} (root {args.root}, {fsync}, uvloop)",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    executor.shutdown(wait=True)
    os.close(log_fd)
    if file_fd >= 0:
        os.close(file_fd)
    print(
        f"ceiling: stopped after {log.requests} requests logged in {log.flushes} log flushes",
        file=sys.stderr,
        flush=True,
    )
    if log.failed is not None:
        print(f"ceiling: log failed: {log.failed}", file=sys.stderr, flush=True)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--no-fsync", dest="fsync", action="store_false")
    parser.add_argument("port", type=int)
    return uvloop.run(serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
