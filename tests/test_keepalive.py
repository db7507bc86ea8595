"""--keep-alive: several requests per connection, served in order (RFC 9112)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import HOST, ServerFactory, Site, response

pytestmark = pytest.mark.asyncio


async def test_pipelined_requests_are_answered_in_order(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(keep_alive=True) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(
            b"GET /a HTTP/1.1\r\nRequest-Id: 1\r\n\r\n"
            b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nRequest-Id: 2\r\n\r\nnew"
            b"GET /missing HTTP/1.1\r\nRequest-Id: 3\r\n\r\n"
            b"GET /a HTTP/1.1\r\nRequest-Id: 4\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer == (
        response(200, "OK", b"A")
        + response(200, "OK")
        + response(404, "Not Found")
        + response(200, "OK", b"new", close=True)
    )
    assert site.log_lines() == [
        "GET,/a,200,1",
        "PUT,/a,200,2",
        "GET,/missing,404,3",
        "GET,/a,200,4",
    ]


async def test_idle_connection_is_closed_after_timeout(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(keep_alive=True, timeout=0.5) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /a HTTP/1.1\r\n\r\n")
        await writer.drain()
        first = await asyncio.wait_for(reader.readexactly(len(response(200, "OK", b"A"))), 10)
        assert first == response(200, "OK", b"A")
        # Idle past the timeout: the server closes without sending anything more.
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert site.log_lines() == ["GET,/a,200,0"]


async def test_malformed_request_ends_the_connection_with_close(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(keep_alive=True) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(
            b"GET /a HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\nbad header\r\n\r\nGET /a HTTP/1.1\r\n\r\n"
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer == response(200, "OK", b"A") + response(400, "Bad Request", close=True)
    assert site.log_lines() == ["GET,/a,200,0", "GET,/a,400,0"]


async def test_default_mode_serves_one_request_per_connection(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server() as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /a HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer == response(200, "OK", b"A")
    assert site.log_lines() == ["GET,/a,200,0"]


async def test_shutdown_closes_busy_keep_alive_connections_after_their_request(
    site: Site, running_server: ServerFactory
) -> None:
    async with running_server(keep_alive=True, timeout=10) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"PUT /f HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.2)
        closing = asyncio.ensure_future(server.close())
        await asyncio.sleep(0.2)
        writer.write(b"def")
        await writer.drain()
        # The request in flight is finished, announced as the last one, and the
        # connection ends instead of waiting for more.
        assert await asyncio.wait_for(reader.read(), 10) == response(201, "Created", close=True)
        writer.close()
        await asyncio.wait_for(closing, 5)
    assert (site.root / "f").read_bytes() == b"abcdef"
