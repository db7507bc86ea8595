"""asrv's peak RSS over a 1 GiB PUT followed by a 1 GiB GET, bodies streamed from Python."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench_servers import HOST, Running, peak_rss_kib, start_asrv, stop

GIB = 1 << 30
CHUNK = 1 << 20
IO_TIMEOUT = 120.0


@dataclass(frozen=True)
class MemoryResult:
    size: int
    idle_kib: int
    after_put_kib: int
    after_get_kib: int
    put_seconds: float
    get_seconds: float
    put_status: int
    get_status: int
    received: int
    server_output: str

    def describe(self) -> str:
        mib = self.size / (1 << 20)
        return (
            f"asrv peak RSS (VmHWM, default fsync mode): {self.idle_kib / 1024:.1f} MiB "
            f"after start, {self.after_put_kib / 1024:.1f} MiB after a {mib:.0f} MiB PUT "
            f"({self.put_status}, {self.put_seconds:.1f} s, {mib / self.put_seconds:.0f} MiB/s), "
            f"{self.after_get_kib / 1024:.1f} MiB after the {mib:.0f} MiB GET "
            f"({self.get_status}, {self.get_seconds:.1f} s, "
            f"{mib / self.get_seconds:.0f} MiB/s, {self.received} bytes received)"
        )

    @property
    def ok(self) -> bool:
        done = self.put_status in {200, 201} and self.get_status == 200
        return done and self.received == self.size


def measure(work: Path, size: int = GIB) -> MemoryResult:
    root = work / "root"
    root.mkdir()
    server = start_asrv(root, work, fsync=True)
    try:
        idle = peak_rss_kib(server.pid)
        started = time.monotonic()
        put_status = _put(server, "/big", size)
        put_seconds = time.monotonic() - started
        after_put = peak_rss_kib(server.pid)
        started = time.monotonic()
        get_status, received = _get(server, "/big")
        get_seconds = time.monotonic() - started
        after_get = peak_rss_kib(server.pid)
    finally:
        stop(server)
        (root / "big").unlink(missing_ok=True)
    return MemoryResult(
        size=size,
        idle_kib=idle,
        after_put_kib=after_put,
        after_get_kib=after_get,
        put_seconds=put_seconds,
        get_seconds=get_seconds,
        put_status=put_status,
        get_status=get_status,
        received=received,
        server_output=server.stopped_output,
    )


def _put(server: Running, path: str, size: int) -> int:
    chunk = memoryview(bytes(CHUNK))
    with socket.create_connection((HOST, server.port), timeout=IO_TIMEOUT) as connection:
        connection.sendall(f"PUT {path} HTTP/1.1\r\nContent-Length: {size}\r\n\r\n".encode())
        remaining = size
        while remaining:
            piece = chunk[: min(remaining, CHUNK)]
            connection.sendall(piece)
            remaining -= len(piece)
        status, _length, _rest = _read_head(connection)
        return status


def _get(server: Running, path: str) -> tuple[int, int]:
    """Status and number of body bytes received; the body is read and dropped."""
    buffer = bytearray(CHUNK)
    with socket.create_connection((HOST, server.port), timeout=IO_TIMEOUT) as connection:
        connection.sendall(f"GET {path} HTTP/1.1\r\n\r\n".encode())
        status, length, rest = _read_head(connection)
        received = len(rest)
        while received < length:
            count = connection.recv_into(buffer)
            if count == 0:
                break
            received += count
        return status, received


def _read_head(connection: socket.socket) -> tuple[int, int, bytes]:
    """Read a response head; return status, Content-Length and any body bytes read with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = connection.recv(4096)
        if not piece:
            raise ConnectionError(f"connection closed before a response head: {data!r}")
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    if status is None or length is None:
        raise ConnectionError(f"unexpected response head: {head!r}")
    return int(status[1]), int(length[1]), rest
