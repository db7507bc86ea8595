"""asrv.load: its connection modes, its plan, and what its clients send and record.

The load runs against a real server in the test's own event loop, and the checker must
accept the history it writes together with the audit log; small scripted servers show what
the client does when a kept connection ends, how it reads HEAD, 304, 206, 412 and 416
responses, and how a read-modify-write retries. (The loads that need a server with HEAD,
DELETE, Range and conditions end to end are in test_stress.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from asrv import load
from asrv.check import check
from asrv.load import (
    CAS_ATTEMPTS,
    IGNORED_RANGES,
    NEVER_ISSUED_ETAG,
    Client,
    EtagBook,
    LoadError,
    LoadOptions,
    PlannedRequest,
    RequestRecord,
    Stall,
    Summary,
    body_for,
    build_parser,
    conditional_clients,
    parse_response_head,
    plan_requests,
    read_modify_write,
    request_head,
    resolve,
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


# The plan: the new kinds of request, drawn from the seed alone.


def kinds(planned: PlannedRequest) -> str:
    return "RANGE" if planned.method == "GET" and planned.headers else planned.method


def test_a_seed_names_the_plan_it_named_before_the_new_kinds() -> None:
    options = LoadOptions(
        port=1, requests=8, uris=3, seed=5, max_body=10_000, slow=frozenset(load.SLOW_MODES)
    )
    plan = [
        (p.method, p.uri, p.body_length, p.stall and p.stall.sent, p.slow_read)
        for p in plan_requests(options, "r")
    ]
    assert plan == [
        ("GET", "/load-2", 0, None, False),
        ("PUT", "/load-2", 4889, 2040, False),
        ("GET", "/load-0", 0, None, True),
        ("GET", "/load-0", 0, None, False),
        ("GET", "/load-0", 0, None, True),
        ("PUT", "/load-1", 35, None, True),
        ("PUT", "/load-0", 2, 0, True),
        ("GET", "/load-0", 0, None, False),
    ]


def test_the_plan_mixes_the_new_kinds_by_their_ratios_and_repeats_with_its_seed() -> None:
    options = LoadOptions(
        port=1,
        requests=4000,
        get_ratio=0.2,
        head_ratio=0.2,
        delete_ratio=0.1,
        range_ratio=0.3,
        max_body=4096,
        seed=9,
    )
    plan = list(plan_requests(options, "r"))
    assert plan == list(plan_requests(options, "r"))
    shares = {kind: n / len(plan) for kind, n in Counter(map(kinds, plan)).items()}
    expected = {"GET": 0.2, "HEAD": 0.2, "DELETE": 0.1, "RANGE": 0.3, "PUT": 0.2}
    assert shares.keys() == expected.keys()
    assert all(abs(shares[kind] - share) < 0.03 for kind, share in expected.items()), shares
    ranges = [dict(p.headers)["Range"] for p in plan if kinds(p) == "RANGE"]
    forms = Counter(range_form(value, options.max_body) for value in ranges)
    assert set(forms) == {"A-B", "A-", "-N", "past the end", "ignored"}, forms
    if_ranges = Counter(p.if_range for p in plan if kinds(p) == "RANGE")
    assert if_ranges["latest"] > 100 and if_ranges["stale"] > 100, if_ranges
    assert all(p.if_range is None for p in plan if kinds(p) != "RANGE")
    assert all(p.condition is None and p.body_length == 0 for p in plan if p.method != "PUT")


def range_form(value: str, max_body: int) -> str:
    if value in IGNORED_RANGES:
        return "ignored"
    first, _, last = value.removeprefix("bytes=").partition("-")
    if not first:
        return "-N"
    if int(first) > max_body:
        return "past the end"
    return "A-B" if last else "A-"


def test_a_cas_plan_says_what_a_conditional_client_makes_of_each_request() -> None:
    options = LoadOptions(
        port=1, requests=2000, head_ratio=0.2, delete_ratio=0.1, range_ratio=0.1, seed=4, cas=True
    )
    by_kind: dict[str, Counter[str | None]] = {}
    for planned in plan_requests(options, "r"):
        by_kind.setdefault(kinds(planned), Counter())[planned.condition] += 1
    assert set(by_kind["PUT"]) == {"read-modify-write", "create-only"}
    assert by_kind["PUT"]["read-modify-write"] > 2 * by_kind["PUT"]["create-only"]
    assert set(by_kind["DELETE"]) == {"if-match"}
    assert set(by_kind["RANGE"]) == {None}
    for kind in ("GET", "HEAD"):
        assert set(by_kind[kind]) == {"if-none-match", None}, by_kind


def test_ratios_must_leave_room_for_each_other() -> None:
    LoadOptions(port=1, get_ratio=0.5, head_ratio=0.25, delete_ratio=0.25).validate()
    with pytest.raises(LoadError, match="add up to at most 1"):
        LoadOptions(port=1, get_ratio=0.5, range_ratio=0.6).validate()
    with pytest.raises(LoadError, match="--delete-ratio"):
        LoadOptions(port=1, delete_ratio=-0.1).validate()


def test_half_the_clients_and_at_least_one_are_conditional_with_cas() -> None:
    assert [
        conditional_clients(LoadOptions(port=1, clients=n, cas=True)) for n in (1, 2, 5, 16)
    ] == [
        1,
        1,
        2,
        8,
    ]
    assert conditional_clients(LoadOptions(port=1, clients=16)) == 0


def test_the_command_line_and_the_history_header_carry_the_new_options() -> None:
    args = build_parser().parse_args(
        [
            "--port",
            "1",
            "--head-ratio",
            "0.1",
            "--delete-ratio",
            "0.2",
            "--range-ratio",
            "0.3",
            "--cas",
        ]
    )
    assert (args.head_ratio, args.delete_ratio, args.range_ratio, args.cas) == (0.1, 0.2, 0.3, True)
    described = LoadOptions(port=1, head_ratio=0.1, range_ratio=0.3, cas=True).describe()
    assert described["head_ratio"] == 0.1 and described["range_ratio"] == 0.3
    assert described["delete_ratio"] == 0.0 and described["cas"] is True


# What a request names once sent: ETags chosen from those the run has seen.


def seen(book: EtagBook, uri: str, *etags: str) -> None:
    for etag in etags:
        book.learn(RequestRecord("x", "HEAD", uri, None, 0, 0.0, 1.0, 200, response_etag=etag))


def test_the_etag_book_keeps_the_latest_last() -> None:
    book = EtagBook()
    assert (book.latest("/a"), book.stale("/a")) == (None, NEVER_ISSUED_ETAG)
    seen(book, "/a", '"1"')
    assert (book.latest("/a"), book.stale("/a")) == ('"1"', NEVER_ISSUED_ETAG)
    seen(book, "/a", '"2"', '"3"', '"2"')
    assert (book.latest("/a"), book.stale("/a")) == ('"2"', '"3"')
    assert book.latest("/b") is None
    seen(book, "/a", *(f'"{n}"' for n in range(100)))
    assert book.stale("/a") == '"98"'


def test_requests_carry_the_headers_their_plan_and_the_etags_seen_give() -> None:
    book = EtagBook()
    seen(book, "/a", '"old"', '"new"')
    ranged = PlannedRequest("t-1", "GET", "/a", headers=(("Range", "bytes=0-9"),))
    cases = [
        (replace(ranged, if_range="latest"), {"Range": "bytes=0-9", "If-Range": '"new"'}),
        (replace(ranged, if_range="stale"), {"Range": "bytes=0-9", "If-Range": '"old"'}),
        (PlannedRequest("t-2", "DELETE", "/a", condition="if-match"), {"If-Match": '"new"'}),
        (PlannedRequest("t-3", "DELETE", "/b", condition="if-match"), {"If-Match": "*"}),
        (
            PlannedRequest("t-4", "HEAD", "/a", condition="if-none-match"),
            {"If-None-Match": '"new"'},
        ),
        (PlannedRequest("t-5", "PUT", "/a", 3, condition="create-only"), {"If-None-Match": "*"}),
    ]
    for planned, headers in cases:
        sent = resolve(planned, book, conditional=True)
        assert dict(sent.headers) == headers, planned
        head = request_head(sent, close=False).decode()
        assert all(f"\r\n{name}: {value}\r\n" in head for name, value in headers.items()), head
        # A plain client sends the Range and If-Range alone.
        plain = dict(resolve(planned, book, conditional=False).headers)
        assert plain == {k: v for k, v in headers.items() if k in ("Range", "If-Range")}
    head = request_head(resolve(cases[4][0], book, conditional=True))
    assert head == (
        b'HEAD /a HTTP/1.1\r\nRequest-Id: t-4\r\nConnection: close\r\nIf-None-Match: "new"\r\n\r\n'
    )


# Against scripted HTTP servers: responses without bodies, and read-modify-writes.


class Exchange(NamedTuple):
    method: str
    uri: str
    request_id: str
    headers: dict[str, str]
    body: bytes


Responder = Callable[[Exchange], bytes]


@contextlib.asynccontextmanager
async def http_stub(respond: Responder) -> AsyncIterator[tuple[int, list[Exchange]]]:
    """A keep-alive HTTP server on 127.0.0.1 that answers each request with `respond`; yields
    its port and the requests it got, in order."""
    exchanges: list[Exchange] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                request_line, *lines = head.split("\r\n")[:-2]
                method, uri, _version = request_line.split(" ")
                headers = dict(line.split(": ", 1) for line in lines)
                body = await reader.readexactly(int(headers.get("Content-Length", "0")))
                exchange = Exchange(method, uri, headers.pop("Request-Id"), headers, body)
                exchanges.append(exchange)
                writer.write(respond(exchange))
                await writer.drain()

    async with scripted(answer) as (port, _accepted):
        yield port, exchanges


def reply(status: str, *headers: str, body: bytes = b"") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    ).encode() + body


@pytest.mark.asyncio
async def test_responses_without_bodies_and_partial_ones_are_read_and_recorded() -> None:
    # Each response is framed as asrv frames it; a client that read a body after a HEAD or a
    # 304 would hang or read the next response as one.
    responses = {
        "t-head": reply("200 OK", "Content-Length: 11", 'ETag: "e1"'),
        "t-304": reply("304 Not Modified", 'ETag: "e1"'),
        "t-206": reply(
            "206 Partial Content",
            "Content-Length: 5",
            "Content-Range: bytes 0-4/11",
            'ETag: "e1"',
            body=b"hello",
        ),
        "t-412": reply(
            "412 Precondition Failed",
            "Content-Length: 20",
            'ETag: "e1"',
            body=b"Precondition Failed\n",
        ),
        "t-416": reply(
            "416 Range Not Satisfiable",
            "Content-Length: 22",
            "Content-Range: bytes */11",
            'ETag: "e1"',
            body=b"Range Not Satisfiable\n",
        ),
        "t-head-404": reply("404 Not Found", "Content-Length: 10"),
        "t-plain": OK,
    }
    plans = [
        PlannedRequest("t-head", "HEAD", "/a"),
        PlannedRequest("t-304", "GET", "/a", headers=(("If-None-Match", '"e1"'),)),
        PlannedRequest("t-206", "GET", "/a", headers=(("Range", "bytes=0-4"),)),
        PlannedRequest("t-412", "PUT", "/a", 3, headers=(("If-Match", '"e0"'),)),
        PlannedRequest("t-416", "GET", "/a", headers=(("Range", "bytes=20-"),)),
        PlannedRequest("t-head-404", "HEAD", "/b"),
        PlannedRequest("t-plain", "GET", "/a"),
    ]
    async with http_stub(lambda exchange: responses[exchange.request_id]) as (port, exchanges):
        client = Client(HOST, port, keep_alive=True)
        try:
            records = [await client.perform(planned, timeout=5) for planned in plans]
        finally:
            await client.close()
    fields = [
        (r.status, r.response_length, r.content_length, r.response_etag, r.content_range)
        for r in records
    ]
    assert fields == [
        (200, 0, 11, '"e1"', None),
        (304, 0, None, '"e1"', None),
        (206, 5, 5, '"e1"', "bytes 0-4/11"),
        (412, 20, 20, '"e1"', None),
        (416, 22, 22, '"e1"', "bytes */11"),
        (404, 0, 10, None, None),
        (200, 3, 3, None, None),
    ]
    assert records[2].response_sha256 == hashlib.sha256(b"hello").hexdigest()
    assert [r.headers for r in records[:3]] == [
        {},
        {"If-None-Match": '"e1"'},
        {"Range": "bytes=0-4"},
    ]
    assert json.loads(records[2].to_json())["content_range"] == "bytes 0-4/11"
    assert [e.request_id for e in exchanges] == [p.request_id for p in plans]
    assert client.connections == 1  # kept after 304, 206, 412 and 416


def test_response_heads_with_etags_and_ranges() -> None:
    head = parse_response_head(b'HTTP/1.1 304 Not Modified\r\nETag: "a-1"\r\n\r\n')
    assert (head.status, head.length, head.etag, head.content_range) == (304, None, '"a-1"', None)
    for bad in (
        b'HTTP/1.1 200 OK\r\nContent-Length: 1\r\nETag: "a"\r\nETag: "b"\r\n\r\n',
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
    ):
        with pytest.raises(load.BadResponse):
            parse_response_head(bad)


@pytest.mark.asyncio
async def test_a_200_without_a_length_is_a_bad_response() -> None:
    async with http_stub(lambda _exchange: reply("200 OK", 'ETag: "e"')) as (port, _):
        client = Client(HOST, port)
        record = await client.perform(get(1), timeout=5)
    assert record.status is None and record.error == "bad-response: a 200 without Content-Length"


class VersionedFile:
    """A file on a scripted server that answers conditions as asrv does, and lets a test
    slip in other clients' writes between a client's read and its write."""

    def __init__(self, exists: bool = True, *, etags: bool = True) -> None:
        self.version = 1 if exists else 0
        self.etags = etags
        self.requests = 0
        self.written_by_others_before: set[int] = set()
        """Numbers (from 0) of the requests before which another client writes the file."""

    def etag(self) -> str:
        return f'"v{self.version}"'

    def respond(self, exchange: Exchange) -> bytes:
        if self.requests in self.written_by_others_before:
            self.version += 1
        self.requests += 1
        exists = self.version > 0
        tag = [f"ETag: {self.etag()}"] if self.etags and exists else []
        if exchange.method == "GET":
            if not exists:
                return reply("404 Not Found", "Content-Length: 10", body=b"Not Found\n")
            return reply("200 OK", "Content-Length: 2", *tag, body=b"v\n")
        if_match = exchange.headers.get("If-Match")
        create_only = exchange.headers.get("If-None-Match") == "*"
        if (if_match is not None and if_match != self.etag()) or (create_only and exists):
            failed = b"Precondition Failed\n"
            return reply("412 Precondition Failed", "Content-Length: 20", *tag, body=failed)
        self.version += 1
        if not exists:
            return reply(
                "201 Created", "Content-Length: 8", f"ETag: {self.etag()}", body=b"Created\n"
            )
        return reply("200 OK", "Content-Length: 3", f"ETag: {self.etag()}", body=b"OK\n")


async def cas(file: VersionedFile) -> tuple[list[RequestRecord], list[Exchange]]:
    """One read-modify-write against `file`: the records it reported, the requests it sent."""
    records: list[RequestRecord] = []
    planned = PlannedRequest("c-0", "PUT", "/a", 16, condition="read-modify-write")
    async with http_stub(file.respond) as (port, exchanges):
        client = Client(HOST, port, keep_alive=True)
        try:
            await read_modify_write(client, planned, records.append, timeout=5)
        finally:
            await client.close()
    return records, exchanges


def sent(exchanges: list[Exchange]) -> list[tuple[str, str, dict[str, str]]]:
    return [
        (e.method, e.request_id, {k: v for k, v in e.headers.items() if k.startswith("If-")})
        for e in exchanges
    ]


@pytest.mark.asyncio
async def test_a_read_modify_write_writes_over_the_version_it_read() -> None:
    records, exchanges = await cas(VersionedFile())
    assert sent(exchanges) == [
        ("GET", "c-0", {"If-Match": "*"}),
        ("PUT", "c-0.1", {"If-Match": '"v1"'}),
    ]
    assert [(r.request_id, r.status, r.response_etag) for r in records] == [
        ("c-0", 200, '"v1"'),
        ("c-0.1", 200, '"v2"'),
    ]
    assert exchanges[1].body == body_for("c-0.1", 16)
    assert records[1].headers == {"If-Match": '"v1"'}


@pytest.mark.asyncio
async def test_a_read_modify_write_reads_again_after_a_412() -> None:
    file = VersionedFile()
    file.written_by_others_before = {1}  # between the first read and its write
    records, exchanges = await cas(file)
    assert sent(exchanges) == [
        ("GET", "c-0", {"If-Match": "*"}),
        ("PUT", "c-0.1", {"If-Match": '"v1"'}),
        ("GET", "c-0.2", {"If-Match": "*"}),
        ("PUT", "c-0.3", {"If-Match": '"v2"'}),
    ]
    assert [r.status for r in records] == [200, 412, 200, 200]


@pytest.mark.asyncio
async def test_a_read_modify_write_gives_up_after_its_rounds() -> None:
    file = VersionedFile()
    file.written_by_others_before = {2 * n + 1 for n in range(CAS_ATTEMPTS + 1)}
    records, exchanges = await cas(file)
    assert len(exchanges) == len(records) == 2 * CAS_ATTEMPTS
    assert [r.status for r in records] == [200, 412] * CAS_ATTEMPTS
    assert records[-1].request_id == f"c-0.{2 * CAS_ATTEMPTS - 1}"


@pytest.mark.asyncio
async def test_a_read_modify_write_of_a_missing_file_creates_it_only_if_still_missing() -> None:
    records, exchanges = await cas(VersionedFile(exists=False))
    assert sent(exchanges) == [
        ("GET", "c-0", {"If-Match": "*"}),
        ("PUT", "c-0.1", {"If-None-Match": "*"}),
    ]
    assert [r.status for r in records] == [404, 201]


@pytest.mark.asyncio
async def test_a_read_modify_write_stops_when_the_read_names_no_etag() -> None:
    records, exchanges = await cas(VersionedFile(etags=False))
    assert sent(exchanges) == [("GET", "c-0", {"If-Match": "*"})]
    assert [r.status for r in records] == [200]
