"""asrv.load's connection modes: a new connection per request, or one kept per client.

The load runs against a real server in the test's own event loop, and the checker must
accept the history it writes together with the audit log; small scripted servers show what
the client does when a kept connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from asrv import load
from asrv.check import check
from asrv.load import (
    Client,
    LoadOptions,
    PlannedRequest,
    Stall,
    Summary,
    body_for,
    parse_response_head,
    request_head,
    run_load,
    uri_names,
)
from tests.conftest import HOST, ServerFactory, Site


class Ports:
    """Records the client port of every connection the load opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[int] = []
        connect = load._connect

        async def recording(
            host: str, port: int, small_receive_buffer: bool
        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await connect(host, port, small_receive_buffer)
            self.opened.append(writer.get_extra_info("sockname")[1])
            return reader, writer

        monkeypatch.setattr(load, "_connect", recording)


@pytest.fixture
def ports(monkeypatch: pytest.MonkeyPatch) -> Ports:
    return Ports(monkeypatch)


def read_history(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header, *records = (json.loads(line) for line in path.read_text().splitlines())
    return header, records


async def run_checked(
    site: Site, running_server: ServerFactory, server_options: dict[str, Any], **load_options: Any
) -> tuple[Summary, list[dict[str, Any]]]:
    """Run a load against a fresh server; the log and the files must pass `asrv.check`."""
    (site.root / "load-0").write_bytes(b"there before the run\n")
    history = site.log.with_name("history.jsonl")
    async with running_server(**server_options) as server:
        options = LoadOptions(
            port=server.port, root=site.root, history=history, request_timeout=20, **load_options
        )
        summary = await run_load(options)
    assert summary.failures == 0, summary.line()
    report = check(site.log, history, final_dir=site.root)
    assert report.ok, report.render()
    assert report.requests == summary.requests == options.requests
    header, records = read_history(history)
    assert header["options"]["keep_alive"] is options.keep_alive
    names = {path.name for path in site.root.iterdir()}
    assert names <= {uri.removeprefix("/") for uri in uri_names(options.uris)}, names
    return summary, records


# Against asrv.


@pytest.mark.asyncio
async def test_keep_alive_load_is_linearizable_on_one_connection_per_client(
    site: Site, running_server: ServerFactory, ports: Ports
) -> None:
    clients, requests = 4, 240
    summary, _records = await run_checked(
        site,
        running_server,
        {"threads": 2},
        keep_alive=True,
        clients=clients,
        requests=requests,
        uris=2,
        max_body=64 * 1024,
        seed=7,
    )
    # Every response was a success or a 404, so no client had reason to open a second
    # connection: 240 requests went over 4.
    assert set(summary.statuses) <= {200, 201, 404}, summary.line()
    assert len(ports.opened) == len(set(ports.opened)) == summary.connections == clients


@pytest.mark.asyncio
async def test_default_load_opens_a_connection_per_request(
    site: Site, running_server: ServerFactory, ports: Ports
) -> None:
    summary, _records = await run_checked(
        site, running_server, {}, clients=4, requests=40, uris=1, max_body=4096, seed=8
    )
    assert len(ports.opened) == summary.connections == 40


@pytest.mark.asyncio
async def test_keep_alive_client_reconnects_after_a_response_that_may_close(
    site: Site, running_server: ServerFactory, ports: Ports
) -> None:
    # Bodies over --max-body get 413, after which the server may close without saying so.
    summary, records = await run_checked(
        site,
        running_server,
        {"max_body": 2048},
        keep_alive=True,
        clients=3,
        requests=90,
        uris=2,
        get_ratio=0.3,
        min_body=1024,
        max_body=4096,
        seed=11,
    )
    too_large = sum(record["status"] == 413 for record in records)
    assert too_large > 3, summary.line()
    assert 3 < summary.connections <= 3 + too_large, summary.line()
    assert len(ports.opened) == summary.connections


@pytest.mark.asyncio
async def test_keep_alive_client_reconnects_after_giving_up_an_upload(
    site: Site, running_server: ServerFactory, ports: Ports
) -> None:
    summary, records = await run_checked(
        site,
        running_server,
        {},
        keep_alive=True,
        clients=4,
        requests=80,
        uris=2,
        get_ratio=0.2,
        min_body=1,
        max_body=16 * 1024,
        slow=frozenset({"stall-upload", "slow-read"}),
        seed=3,
    )
    gave_up = sum((record["error"] or "").startswith("gave-up") for record in records)
    errors = sum(status >= 400 and status != 404 for status in summary.statuses.elements())
    assert gave_up > 0, summary.line()
    assert 4 < summary.connections <= 4 + gave_up + errors, summary.line()
    assert len(ports.opened) == summary.connections


# Against scripted servers: what the client sends, and what it does when a connection ends.

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nOK\n"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[int, list[int]]]:
    """A server on 127.0.0.1 running `handler` per connection; yields its port and a list
    that gets one entry per accepted connection."""
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer.get_extra_info("peername")[1])
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, HOST, 0)
    async with server:
        yield server.sockets[0].getsockname()[1], accepted


def get(number: int) -> PlannedRequest:
    return PlannedRequest(f"t-{number}", "GET", "/a")


@pytest.mark.asyncio
async def test_request_heads_of_both_modes() -> None:
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            heads.append(head)
            writer.write(OK)
            await writer.drain()
            if b"Connection: close" in head:
                return

    async with scripted(answer) as (port, accepted):
        for keep_alive in (False, True):
            client = Client(HOST, port, keep_alive=keep_alive)
            try:
                for number in range(3):
                    record = await client.perform(get(number), timeout=5)
                    assert (record.status, record.response_length) == (200, 3), record
            finally:
                await client.close()
    assert heads[:3] == [request_head(get(n)) for n in range(3)]
    assert heads[3:] == [request_head(get(n), close=False) for n in range(3)]
    assert all(b"Connection" not in head for head in heads[3:])
    assert len(accepted) == 3 + 1


@pytest.mark.asyncio
async def test_a_request_on_a_kept_connection_the_server_drops_is_an_error_not_a_retry() -> None:
    requests = 0

    async def answer_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await reader.readuntil(b"\r\n\r\n")
        requests += 1
        writer.write(OK)
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request: dropped unanswered
        requests += 1

    async with scripted(answer_once) as (port, accepted):
        client = Client(HOST, port, keep_alive=True)
        try:
            first = await client.perform(get(1), timeout=5)
            second = await client.perform(get(2), timeout=5)
        finally:
            await client.close()
    assert first.status == 200
    assert second.status is None and second.complete is None
    assert second.error is not None and second.error.startswith("connection:"), second
    assert "reused connection" in second.error
    assert (len(accepted), requests, client.connections) == (1, 2, 1)


@pytest.mark.asyncio
async def test_kept_connection_the_server_closed_is_replaced_before_sending() -> None:
    closed = asyncio.Event()

    async def answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        closed.set()

    async with scripted(answer_then_close) as (port, accepted):
        client = Client(HOST, port, keep_alive=True)
        try:
            first = await client.perform(get(1), timeout=5)
            await asyncio.wait_for(closed.wait(), 5)
            await asyncio.sleep(0.1)  # the end of stream reaches the client's reader
            second = await client.perform(get(2), timeout=5)
        finally:
            await client.close()
    assert (first.status, second.status) == (200, 200), (first, second)
    assert (len(accepted), client.connections) == (2, 2)


@pytest.mark.asyncio
async def test_a_connection_close_response_is_not_reused() -> None:
    async def answer_with_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Says it closes, yet keeps the connection open: the client must not send on it.
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 3\r\n\r\nOK\n")
        await writer.drain()
        await reader.read()

    async with scripted(answer_with_close) as (port, accepted):
        client = Client(HOST, port, keep_alive=True)
        try:
            records = [await client.perform(get(n), timeout=5) for n in range(3)]
        finally:
            await client.close()
    assert [record.status for record in records] == [200] * 3
    assert (len(accepted), client.connections) == (3, 3)


@pytest.mark.asyncio
async def test_a_given_up_upload_closes_its_kept_connection() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:-2])
            await reader.readexactly(int(fields.get(b"Content-Length", b"0")))
            writer.write(OK)
            await writer.drain()

    abandoned = PlannedRequest("t-up", "PUT", "/a", 100, Stall(10, 0.01, "close"))
    async with scripted(answer) as (port, accepted):
        client = Client(HOST, port, keep_alive=True)
        try:
            before = await client.perform(get(1), timeout=5)
            gave_up = await client.perform(abandoned, timeout=5)
            after = await client.perform(get(2), timeout=5)
        finally:
            await client.close()
    assert (before.status, gave_up.status, after.status) == (200, None, 200)
    assert gave_up.error is not None and gave_up.error.startswith("gave-up:")
    assert (len(accepted), client.connections) == (2, 2)


def test_response_head_says_whether_the_server_closes() -> None:
    head = parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\n")
    assert (head.status, head.length, head.close) == (404, 10, False)
    head = parse_response_head(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive, CLOSE\r\n\r\n"
    )
    assert (head.status, head.length, head.close) == (200, 2, True)


def test_a_body_from_an_offset_is_the_tail_of_the_whole_body() -> None:
    for length in (0, 1, 31, 32, 33, 1000):
        for start in (0, 1, 31, 32, 33, 999, 1000, 5000):
            assert body_for("run-7", length, start) == body_for("run-7", length)[start:]
