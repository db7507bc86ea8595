"""Sending files larger than one read: sendfile from the page cache, and the copying fallback."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Callable

import pytest

from tests.conftest import (
    HOST,
    Process,
    ServerFactory,
    Site,
    get,
    response,
    split_response,
    wait_until,
)

MiB = 1024 * 1024


def test_file_cut_short_in_place_ends_the_response_early(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    """A file truncated behind the server's back cannot fill the promised length: the
    connection ends short of it, and the server goes on serving."""
    size = 16 * MiB
    path = site.root / "big"
    path.write_bytes(b"b" * size)
    server = spawn_server()
    baseline = server.descriptors()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.connect((HOST, server.port))
    sock.settimeout(10)
    sock.sendall(b"GET /big HTTP/1.1\r\nRequest-Id: 1\r\n\r\n")
    received = len(sock.recv(4096))
    os.truncate(path, MiB)  # in place: the server's descriptor sees it too
    try:
        while chunk := sock.recv(MiB):
            received += len(chunk)
    except ConnectionResetError:
        pass
    sock.close()
    assert 0 < received < size
    assert split_response(asyncio.run(get(server.port, "big", 2))) == (200, b"b" * MiB)
    assert wait_until(lambda: server.descriptors() == baseline)
    assert server.stop() == 0
    assert site.log_lines() == ["GET,/big,200,1", "GET,/big,200,2"]


def test_files_not_in_the_page_cache_are_sent_whole(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    """Each slice of a file evicted from the page cache is read by a worker before the
    loop sends it; the bytes arrive intact and no descriptor is left behind."""
    sizes = [64 * 1024 + 1, MiB, MiB + 1, 3 * MiB + 12345]
    contents = {f"f{size}": os.urandom(size) for size in sizes}
    for name, content in contents.items():
        (site.root / name).write_bytes(content)
    server = spawn_server("-t", "2")
    baseline = server.descriptors()
    for name, content in contents.items():
        fd = os.open(site.root / name, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        assert split_response(asyncio.run(get(server.port, name))) == (200, content)
    assert wait_until(lambda: server.descriptors() == baseline)
    assert server.stop() == 0


@pytest.mark.asyncio
async def test_without_sendfile_files_are_copied(
    site: Site, running_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the kernel refuses sendfile for a socket or a file, the body is copied through
    the pool instead, with the same bytes and the same log."""

    def refuse(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "sendfile", refuse)
    content = os.urandom(2 * MiB + 7)
    (site.root / "f").write_bytes(content)
    async with running_server(threads=2) as server:
        assert await get(server.port, "f", 1) == response(200, "OK", content)
        assert await get(server.port, "f", 2) == response(200, "OK", content)
    assert site.log_lines() == ["GET,/f,200,1", "GET,/f,200,2"]


@pytest.mark.asyncio
async def test_a_reader_that_pauses_mid_file_gets_the_rest(
    site: Site, running_server: ServerFactory
) -> None:
    """A client that stops reading for a while (shorter than the timeout) makes sendfile
    wait for the socket, then resume where it stopped."""
    content = os.urandom(6 * MiB)
    (site.root / "f").write_bytes(content)
    async with running_server(timeout=10) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port, limit=4096)
        writer.write(b"GET /f HTTP/1.1\r\n\r\n")
        await writer.drain()
        received = await asyncio.wait_for(reader.read(4096), 10)
        started = time.monotonic()
        await asyncio.sleep(2)  # the server's socket buffer fills: its sendfile must wait
        # The connection persists after the response: read what it announced, not to EOF.
        head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(content)
        rest = len(head) + len(content) - len(received)
        received += await asyncio.wait_for(reader.readexactly(rest), 30)
        writer.close()
    assert time.monotonic() - started >= 2
    assert split_response(received) == (200, content)


@pytest.mark.asyncio
async def test_a_socket_that_never_takes_a_byte_times_out(
    site: Site, running_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket that keeps saying "writable" but takes nothing (sendfile keeps failing
    with EAGAIN) is a stalled client: dropped after the timeout, not retried forever."""
    real_sendfile = os.sendfile

    def never_takes(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        if os.path.samestat(os.fstat(out_fd), os.stat(os.devnull)):
            return real_sendfile(out_fd, in_fd, offset, count)
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(os, "sendfile", never_takes)
    (site.root / "f").write_bytes(os.urandom(2 * MiB))
    async with running_server(timeout=0.5) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /f HTTP/1.1\r\n\r\n")
        await writer.drain()
        started = time.monotonic()
        try:
            received = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            received = b""
        writer.close()
    assert time.monotonic() - started < 5
    assert received.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\n\r\n")
    assert len(received) < 2 * MiB
