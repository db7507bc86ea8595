"""Connections: persistent by default (RFC 9112), one request each with `--course`, and a
shutdown that drops nothing a client already sent (SPEC §4.2, §4.3)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import HOST, ServerFactory, Site, exchange, response

pytestmark = pytest.mark.asyncio


async def test_pipelined_requests_are_answered_in_order(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server() as server:
        answer = await exchange(
            server.port,
            b"GET /a HTTP/1.1\r\nRequest-Id: 1\r\n\r\n"
            b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\nRequest-Id: 2\r\n\r\nnew"
            b"GET /missing HTTP/1.1\r\nRequest-Id: 3\r\n\r\n"
            b"GET /a HTTP/1.1\r\nRequest-Id: 4\r\nConnection: close\r\n\r\n",
            shutdown=False,
        )
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


async def test_requests_one_after_another_on_one_connection(
    site: Site, running_server: ServerFactory
) -> None:
    async with running_server() as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        for n in range(20):
            body = b"v%d" % n
            writer.write(b"PUT /f HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            expected = response(201, "Created") if n == 0 else response(200, "OK")
            assert await reader.readexactly(len(expected)) == expected
            writer.write(b"GET /f HTTP/1.1\r\n\r\n")
            expected = response(200, "OK", body)
            assert await reader.readexactly(len(expected)) == expected
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert len(site.log_lines()) == 40


async def test_idle_connection_is_closed_after_timeout(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(timeout=0.5) as server:
        # No half-close: the server ends the connection once it has idled out, saying nothing.
        answer = await exchange(server.port, b"GET /a HTTP/1.1\r\n\r\n", shutdown=False)
    assert answer == response(200, "OK", b"A")
    assert site.log_lines() == ["GET,/a,200,0"]


@pytest.mark.parametrize(
    ("second", "answer", "line"),
    [
        (b"GET /a HTTP/1.1\r\nbad header\r\n\r\n", response(400, "Bad Request"), "GET,/a,400,0"),
        (b"GET /a HTTP/2.0\r\n\r\n", response(505, "Version Not Supported"), "GET,/a,505,0"),
        (b"PUT /a HTTP/1.1\r\n\r\n", response(400, "Bad Request"), "PUT,/a,400,0"),
        (
            b"PUT /a HTTP/1.1\r\nContent-Length: 99\r\n\r\n",
            response(413, "Payload Too Large"),
            "PUT,/a,413,0",
        ),
        (
            b"GET /a HTTP/1.1\r\nConnection: close\r\nbad\r\n\r\n",
            response(400, "Bad Request", close=True),
            "GET,/a,400,0",
        ),
    ],
)
async def test_an_error_that_loses_the_framing_ends_the_connection(
    site: Site, running_server: ServerFactory, second: bytes, answer: bytes, line: str
) -> None:
    # The course diffs these responses byte for byte: no `Connection: close` unless asked.
    (site.root / "a").write_bytes(b"A")
    async with running_server(max_body=10) as server:
        received = await exchange(
            server.port,
            b"GET /a HTTP/1.1\r\n\r\n" + second + b"GET /a HTTP/1.1\r\n\r\n",
            shutdown=False,
        )
    assert received == response(200, "OK", b"A") + answer
    assert site.log_lines() == ["GET,/a,200,0", line]


async def test_bodies_of_unimplemented_methods_and_gets_are_skipped(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server() as server:
        received = await exchange(
            server.port,
            b"POST /a HTTP/1.1\r\nContent-Length: 19\r\nRequest-Id: 1\r\n\r\n"
            b"GET /a HTTP/1.1\r\n\r\n"
            b"GET /a HTTP/1.1\r\nContent-Length: 4\r\nRequest-Id: 2\r\n\r\nbody"
            b"GET /a HTTP/1.1\r\nRequest-Id: 3\r\n\r\n",
            shutdown=True,
        )
    assert received == (
        response(501, "Not Implemented") + response(200, "OK", b"A") + response(200, "OK", b"A")
    )
    assert site.log_lines() == ["POST,/a,501,1", "GET,/a,200,2", "GET,/a,200,3"]


async def test_http_1_0(site: Site, running_server: ServerFactory) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server() as server:
        # One request per connection, and the response says the connection closes.
        one = await exchange(
            server.port, b"GET /a HTTP/1.0\r\n\r\nGET /a HTTP/1.0\r\n\r\n", shutdown=False
        )
        # Unless it asks to keep the connection.
        kept = await exchange(
            server.port,
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"PUT /b HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nb"
            b"GET /b HTTP/1.0\r\n\r\n",
            shutdown=False,
        )
    assert one == response(200, "OK", b"A", close=True)
    keep_alive = b"Content-Length: 1\r\nConnection: keep-alive\r\n"
    assert kept == (
        response(200, "OK", b"A").replace(b"Content-Length: 1\r\n", keep_alive)
        + b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\nConnection: keep-alive\r\n\r\nCreated\n"
        + response(200, "OK", b"b", close=True)
    )
    assert site.log_lines() == ["GET,/a,200,0", "GET,/a,200,0", "PUT,/b,201,0", "GET,/b,200,0"]


async def test_course_mode_serves_one_request_and_ignores_the_rest(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(course=True, timeout=1) as server:
        # Whatever follows the first request is read and ignored until the client closes.
        pipelined = await exchange(
            server.port,
            b"GET /a HTTP/1.1\r\n\r\nPUT /a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx",
            shutdown=False,
        )
        # Nor does the client need to close: the server does, after the timeout.
        kept = await exchange(server.port, b"GET /a HTTP/1.1\r\n\r\n", shutdown=False)
        version = await exchange(server.port, b"GET /a HTTP/1.0\r\n\r\n")
        head = await exchange(server.port, b"HEAD /a HTTP/1.1\r\n\r\n")
        long_value = await exchange(
            server.port, b"GET /a HTTP/1.1\r\nAccept: " + b"x" * 145 + b"\r\n\r\n"
        )
    assert pipelined == response(200, "OK", b"A")
    assert kept == response(200, "OK", b"A")
    assert version == response(505, "Version Not Supported")
    assert head == response(501, "Not Implemented")
    assert long_value == response(400, "Bad Request")
    assert (site.root / "a").read_bytes() == b"A"
    assert site.log_lines() == [
        "GET,/a,200,0",
        "GET,/a,200,0",
        "GET,/a,505,0",
        "HEAD,/a,501,0",
        "GET,/a,400,0",
    ]


@pytest.mark.parametrize("course", [False, True], ids=["default", "course"])
async def test_the_course_client_shape(
    site: Site, running_server: ServerFactory, course: bool
) -> None:
    # Send one request, half-close, read to EOF: exactly one response, in either mode.
    async with running_server(course=course) as server:
        put = await exchange(server.port, b"PUT /c HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
        got = await exchange(server.port, b"GET /c HTTP/1.1\r\nRequest-Id: 2\r\n\r\n")
        closed = await exchange(server.port, b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
        missing = await exchange(server.port, b"GET /d HTTP/1.1\r\n\r\n")
    assert put == response(201, "Created")
    assert got == response(200, "OK", b"hi")
    assert closed == response(200, "OK", b"hi", close=True)
    assert missing == response(404, "Not Found")
    assert site.log_lines() == ["PUT,/c,201,0", "GET,/c,200,2", "GET,/c,200,0", "GET,/d,404,0"]


async def test_browser_sized_heads_are_served_by_default(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    accept = b"text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,"
    accept += b"image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
    cookie = b"session=" + b"c" * 4000
    async with running_server() as server:
        answer = await exchange(
            server.port,
            b"GET /a HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: "
            + accept
            + b"\r\nCookie: "
            + cookie
            + b"\r\nUser-Agent:\tMozilla/5.0 (X11; Linux x86_64)  \r\n\r\n",
        )
    assert answer == response(200, "OK", b"A")


# --- shutdown ----------------------------------------------------------------------------


@pytest.mark.parametrize("same_turn", [False, True], ids=["read-first", "same-loop-turn"])
async def test_shutdown_finishes_the_request_in_flight(
    site: Site, running_server: ServerFactory, same_turn: bool
) -> None:
    # A PUT head and half its body are sent; then the server shuts down: after the loop
    # has read them, or in the same loop turn, before it has accepted or read anything.
    async with running_server(timeout=10) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"PUT /f HTTP/1.1\r\nContent-Length: 6\r\nRequest-Id: 1\r\n\r\nabc")
        if not same_turn:
            await writer.drain()
            await asyncio.sleep(0.2)
        closing = asyncio.ensure_future(server.close())
        await asyncio.sleep(0.2)
        writer.write(b"def")
        await writer.drain()
        # The request in flight is finished, then the connection ends: no next request.
        assert await asyncio.wait_for(reader.read(), 10) == response(201, "Created")
        writer.close()
        await asyncio.wait_for(closing, 10)
    assert (site.root / "f").read_bytes() == b"abcdef"
    assert site.log_lines() == ["PUT,/f,201,1"]


async def test_shutdown_serves_every_connection_waiting_in_the_backlog(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(timeout=10) as server:
        clients = [await asyncio.open_connection(HOST, server.port) for _ in range(30)]
        for n, (_, writer) in enumerate(clients):
            writer.write(b"GET /a HTTP/1.1\r\nRequest-Id: %d\r\n\r\n" % n)
        # The loop has run no step since the connections were made: all sit in the backlog
        # (or are accepted, unread), and shutdown begins now.
        closing = asyncio.ensure_future(server.close())
        answers = await asyncio.gather(
            *(asyncio.wait_for(reader.read(), 20) for reader, _ in clients)
        )
        for _, writer in clients:
            writer.close()
        await asyncio.wait_for(closing, 20)
    assert answers == [response(200, "OK", b"A")] * 30
    assert sorted(site.log_lines()) == sorted(f"GET,/a,200,{n}" for n in range(30))


async def test_shutdown_serves_pipelined_requests_already_received(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(timeout=10) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /a HTTP/1.1\r\nRequest-Id: 1\r\n\r\n" * 3)
        closing = asyncio.ensure_future(server.close())
        assert await asyncio.wait_for(reader.read(), 10) == response(200, "OK", b"A") * 3
        writer.close()
        await asyncio.wait_for(closing, 10)
    assert site.log_lines() == ["GET,/a,200,1"] * 3


async def test_shutdown_closes_idle_connections_at_once(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(timeout=60) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /a HTTP/1.1\r\n\r\n")
        expected = response(200, "OK", b"A")
        assert await reader.readexactly(len(expected)) == expected
        # Idle now: shutdown does not wait for its (60 s) timeout.
        await asyncio.wait_for(server.close(), 10)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert site.log_lines() == ["GET,/a,200,0"]


async def test_the_course_server_reads_what_follows_its_response_until_the_client_closes(
    site: Site, running_server: ServerFactory
) -> None:
    """SPEC: after the course's one request, bytes that follow are read and ignored until
    the client closes: sending more after the response meets no reset."""
    (site.root / "a").write_bytes(b"A\n")
    async with running_server(course=True, timeout=30) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /a HTTP/1.1\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 10) == response(200, "OK", b"A\n")
        for _ in range(3):
            await asyncio.sleep(0.3)  # time for a reset, had the server closed its end
            writer.write(b"ignored bytes\r\n")
            await writer.drain()
        writer.close()
        await writer.wait_closed()
    assert site.log_lines() == ["GET,/a,200,0"]
