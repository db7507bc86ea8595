"""Every error response over a real socket, byte for byte, with what the log says of it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat

import pytest

from tests.conftest import HOST, ServerFactory, Site, exchange, response

pytestmark = pytest.mark.asyncio

BAD = response(400, "Bad Request")
FORBIDDEN = response(403, "Forbidden")
NOT_FOUND = response(404, "Not Found")
NOT_IMPLEMENTED = response(501, "Not Implemented")
VERSION = response(505, "Version Not Supported")

# (request bytes, expected response, expected log line or None when nothing is logged), in
# the course's mode: its grammar, exactly.
COURSE_CASES: list[tuple[bytes, bytes, str | None]] = [
    # Request-line syntax: 400, nothing logged (there is no request line to log).
    (b"GET /a.txt\r\n\r\n", BAD, None),
    (b"GET a.txt HTTP/1.1\r\n\r\n", BAD, None),
    (b"GET /a_b HTTP/1.1\r\n\r\n", BAD, None),
    (b"GET /" + b"a" * 64 + b" HTTP/1.1\r\n\r\n", BAD, None),
    (b"GETTINGSS /a HTTP/1.1\r\n\r\n", BAD, None),
    (b"GET  /a HTTP/1.1\r\n\r\n", BAD, None),
    (b"GET /a HTTP/1.1 \r\n\r\n", BAD, None),
    (b"GET /a HTTP/11\r\n\r\n", BAD, None),
    (b"G3T /a HTTP/1.1\r\n\r\n", BAD, None),
    (b"\r\n\r\n", BAD, None),
    # A bad request line wins over everything else, even a bad version and bad headers.
    (b"GET /a_b HTTP/1.0\r\nbad header\r\n\r\n", BAD, None),
    # Version: 505, logged, and it wins over bad headers and a missing Content-Length.
    (b"GET /a HTTP/1.0\r\nRequest-Id: 7\r\n\r\n", VERSION, "GET,/a,505,7"),
    (b"PUT /a HTTP/2.0\r\nbad header\r\n\r\n", VERSION, "PUT,/a,505,0"),
    (b"FETCH /a HTTP/1.0\r\n\r\n", VERSION, "FETCH,/a,505,0"),
    # Header syntax: 400, logged.
    (b"GET /a HTTP/1.1\r\nHost:x\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nHo st: x\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nHost: \r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nHost: " + b"x" * 129 + b"\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\n" + b"k" * 129 + b": v\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nHost: \x7f\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nRequest-Id: 1,2\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"DELETE /a HTTP/1.1\r\nbad\r\n\r\n", BAD, "DELETE,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nRequest-Id: 4\r\nbad\r\n\r\n", BAD, "GET,/a,400,4"),
    # Content-Length: 400, logged, before the method's 501.
    (b"PUT /a HTTP/1.1\r\nRequest-Id: 3\r\n\r\n", BAD, "PUT,/a,400,3"),
    (b"PUT /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n", BAD, "PUT,/a,400,0"),
    (b"PUT /a HTTP/1.1\r\nContent-Length: 1 \r\n\r\n", BAD, "PUT,/a,400,0"),
    (b"PUT /a HTTP/1.1\r\nContent-Length: " + b"1" * 20 + b"\r\n\r\n", BAD, "PUT,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"POST /a HTTP/1.1\r\nContent-Length: 0x1\r\n\r\n", BAD, "POST,/a,400,0"),
    # Method: 501, logged verbatim (methods are case-sensitive).
    (b"DELETE /a HTTP/1.1\r\nRequest-Id: 5\r\n\r\n", NOT_IMPLEMENTED, "DELETE,/a,501,5"),
    (b"get /a HTTP/1.1\r\n\r\n", NOT_IMPLEMENTED, "get,/a,501,0"),
    (b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi", NOT_IMPLEMENTED, "POST,/a,501,0"),
    # Files.
    (b"GET /missing HTTP/1.1\r\nRequest-Id: x y\r\n\r\n", NOT_FOUND, "GET,/missing,404,x y"),
    (b"GET /. HTTP/1.1\r\n\r\n", FORBIDDEN, "GET,/.,403,0"),
    (b"GET /.. HTTP/1.1\r\n\r\n", FORBIDDEN, "GET,/..,403,0"),
    (b"GET /dir HTTP/1.1\r\n\r\n", FORBIDDEN, "GET,/dir,403,0"),
    (b"GET /link HTTP/1.1\r\n\r\n", FORBIDDEN, "GET,/link,403,0"),
    (b"GET /fifo HTTP/1.1\r\n\r\n", FORBIDDEN, "GET,/fifo,403,0"),
    (b"PUT /fifo HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", FORBIDDEN, "PUT,/fifo,403,0"),
    (b"GET /audit.log HTTP/1.1\r\n\r\n", FORBIDDEN, "GET,/audit.log,403,0"),
    (b"PUT /dir HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", FORBIDDEN, "PUT,/dir,403,0"),
    (b"PUT /link HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", FORBIDDEN, "PUT,/link,403,0"),
    (b"PUT /audit.log HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", FORBIDDEN, "PUT,/audit.log,403,0"),
    (b"PUT /.. HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", FORBIDDEN, "PUT,/..,403,0"),
]


# Where the default mode answers differently: RFC 9110 header fields, HTTP/1.0 served.
_DEFAULT_ANSWERS: dict[bytes, tuple[bytes, str | None]] = {
    b"\r\n\r\n": (b"", None),  # empty lines before a request are skipped; then EOF
    b"GET /a HTTP/1.0\r\nRequest-Id: 7\r\n\r\n": (
        response(404, "Not Found", close=True),
        "GET,/a,404,7",
    ),
    b"FETCH /a HTTP/1.0\r\n\r\n": (response(501, "Not Implemented", close=True), "FETCH,/a,501,0"),
    b"GET /a HTTP/1.1\r\nHost:x\r\n\r\n": (NOT_FOUND, "GET,/a,404,0"),
    b"GET /a HTTP/1.1\r\nHost: \r\n\r\n": (NOT_FOUND, "GET,/a,404,0"),
    b"GET /a HTTP/1.1\r\nHost: " + b"x" * 129 + b"\r\n\r\n": (NOT_FOUND, "GET,/a,404,0"),
    b"GET /a HTTP/1.1\r\n" + b"k" * 129 + b": v\r\n\r\n": (NOT_FOUND, "GET,/a,404,0"),
    b"DELETE /a HTTP/1.1\r\nRequest-Id: 5\r\n\r\n": (NOT_FOUND, "DELETE,/a,404,5"),
}
DEFAULT_CASES = [
    (request, *_DEFAULT_ANSWERS.get(request, (expected, line)))
    for request, expected, line in COURSE_CASES
] + [
    # Framing the server cannot follow: 400, and the connection ends.
    (
        b"PUT /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
        BAD,
        "PUT,/a,400,0",
    ),
    (b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi", BAD, "PUT,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nX : y\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nX: y\r\n z\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"GET /a HTTP/1.1\r\nX: \xc3\xa9\r\n\r\n", BAD, "GET,/a,400,0"),
    (b"PUT /a HTTP/3.0\r\n\r\n", VERSION, "PUT,/a,505,0"),
    # Valid in the default grammar only.
    (
        b"GET /a HTTP/1.1\r\nX_Y!:\t spaced out \t\r\nRequest-Id: q\r\n\r\n",
        NOT_FOUND,
        "GET,/a,404,q",
    ),
    (
        b"PUT /fifo HTTP/1.0\r\nContent-Length: 1\r\n\r\nx",
        response(403, "Forbidden", close=True),
        "PUT,/fifo,403,0",
    ),
]
CASES = [pytest.param(False, *case, id=f"default-{n}") for n, case in enumerate(DEFAULT_CASES)] + [
    pytest.param(True, *case, id=f"course-{n}") for n, case in enumerate(COURSE_CASES)
]


@pytest.fixture
def hostile_root(site: Site) -> Site:
    """A root holding a directory, a symlink, a FIFO, and the audit log itself."""
    (site.root / "dir").mkdir()
    (site.root / "target").write_bytes(b"secret")
    os.symlink("target", site.root / "link")
    os.mkfifo(site.root / "fifo")
    with contextlib.suppress(PermissionError):  # device nodes need privileges
        os.mknod(site.root / "device", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return Site(site.root, site.root / "audit.log")


@pytest.mark.parametrize(("course", "request_bytes", "expected", "line"), CASES)
async def test_error_responses(
    hostile_root: Site,
    running_server: ServerFactory,
    course: bool,
    request_bytes: bytes,
    expected: bytes,
    line: str | None,
) -> None:
    async with running_server(log=str(hostile_root.log), course=course) as server:
        assert await exchange(server.port, request_bytes) == expected
    assert hostile_root.log_lines() == ([line] if line else [])
    assert (hostile_root.root / "target").read_bytes() == b"secret"
    assert (hostile_root.root / "dir").is_dir()
    assert os.readlink(hostile_root.root / "link") == "target"


def head_of_size(size: int) -> bytes:
    """A valid GET head of exactly `size` bytes, padded with legal header fields."""
    head = b"GET /a HTTP/1.1\r\n"
    remaining = size - len(head) - len(b"\r\n")
    while remaining > 133:
        head += b"X: " + b"v" * 100 + b"\r\n"
        remaining -= 105
    head += b"X: " + b"v" * (remaining - 5) + b"\r\n\r\n"
    assert len(head) == size
    return head


@pytest.mark.parametrize("method", [b"GET", b"PUT"])
async def test_device_files_are_forbidden(
    hostile_root: Site, running_server: ServerFactory, method: bytes
) -> None:
    if not (hostile_root.root / "device").exists():
        pytest.skip("creating a device node is not permitted here")
    request = method + b" /device HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"
    async with running_server(log=str(hostile_root.log)) as server:
        assert await exchange(server.port, request) == FORBIDDEN
    assert hostile_root.log_lines() == [f"{method.decode()},/device,403,0"]
    assert (hostile_root.root / "device").is_char_device()


@pytest.mark.parametrize(
    ("options", "limit"),
    [
        ({"course": True}, 2048),
        ({}, 8192),
        ({"max_head": 300}, 300),
        ({"course": True, "max_head": 4000}, 4000),
    ],
)
async def test_head_limit(
    site: Site, running_server: ServerFactory, options: dict[str, object], limit: int
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server(**options) as server:
        assert await exchange(server.port, head_of_size(limit)) == response(200, "OK", b"A")
        assert await exchange(server.port, head_of_size(limit + 1)) == BAD
        assert await exchange(server.port, b"G" * (limit + 100)) == BAD
    assert site.log_lines() == ["GET,/a,200,0", "GET,/a,400,0"]


async def test_headers_are_case_insensitive_and_last_wins(
    site: Site, running_server: ServerFactory
) -> None:
    async with running_server(course=True) as server:
        answer = await exchange(
            server.port,
            b"PUT /h HTTP/1.1\r\ncontent-length: 99\r\nCONTENT-LENGTH: 2\r\n"
            b"request-id: a\r\nREQUEST-ID: b\r\n\r\nhi",
        )
    assert answer == response(201, "Created")
    assert (site.root / "h").read_bytes() == b"hi"
    assert site.log_lines() == ["PUT,/h,201,b"]


async def test_repeated_headers_in_the_default_mode(
    site: Site, running_server: ServerFactory
) -> None:
    async with running_server() as server:
        answer = await exchange(
            server.port,
            b"PUT /h HTTP/1.1\r\ncontent-length: 2\r\nCONTENT-LENGTH: 2\r\n"
            b"request-id: a\r\nREQUEST-ID: b\r\n\r\nhi",
        )
        # Two different lengths: which one frames the body is a guess the server won't make.
        conflicting = await exchange(
            server.port, b"PUT /h HTTP/1.1\r\nContent-Length: 99\r\nContent-Length: 2\r\n\r\nhi"
        )
    assert answer == response(201, "Created")
    assert conflicting == BAD
    assert (site.root / "h").read_bytes() == b"hi"
    assert site.log_lines() == ["PUT,/h,201,b", "PUT,/h,400,0"]


async def test_nothing_logged_for_a_silent_connection(
    site: Site, running_server: ServerFactory
) -> None:
    async with running_server() as server:
        assert await exchange(server.port, b"", shutdown=True) == b""
    assert site.log_lines() == []


async def test_head_split_across_segments(site: Site, running_server: ServerFactory) -> None:
    (site.root / "a").write_bytes(b"A")
    async with running_server() as server:
        for pieces in (
            [b"GET /a HTTP/1.1\r\n", b"Request-Id: 7\r\n\r\n"],
            [b"GE", b"T /a HTTP/1.1\r\n\r\n"],
            [b"GET /a HTTP/1.1\r\nReq", b"uest-Id: 8\r", b"\n", b"\r\n"],
        ):
            reader, writer = await asyncio.open_connection(HOST, server.port)
            for piece in pieces:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.05)
            assert await asyncio.wait_for(reader.read(), 10) == response(200, "OK", b"A")
            writer.close()
    assert site.log_lines() == ["GET,/a,200,7", "GET,/a,200,0", "GET,/a,200,8"]


async def test_rejected_requests_keep_their_request_id(
    site: Site, running_server: ServerFactory
) -> None:
    async with running_server(timeout=0.5) as server:
        bad_header = b"GET /a HTTP/1.1\r\nRequest-Id: 9\r\nbad\r\n\r\n"
        assert await exchange(server.port, bad_header) == BAD
        stalled = b"GET /b HTTP/1.1\r\nRequest-Id: 10\r\nHost: x"
        assert await exchange(server.port, stalled) == BAD
        oversized = b"GET /c HTTP/1.1\r\nRequest-Id: 11\r\n" + b"X: y\r\n" * 400
        assert await exchange(server.port, oversized) == BAD
    assert site.log_lines() == ["GET,/a,400,9", "GET,/b,400,10", "GET,/c,400,11"]


async def test_connection_close_is_echoed_on_incomplete_heads(
    site: Site, running_server: ServerFactory
) -> None:
    close_bad = response(400, "Bad Request", close=True)
    async with running_server(timeout=0.5) as server:
        oversized = b"GET /a HTTP/1.1\r\nConnection: close\r\nRequest-Id: 5\r\n" + b"X: y\r\n" * 400
        assert await exchange(server.port, oversized) == close_bad
        stalled = b"GET /a HTTP/1.1\r\nConnection: close\r\nRequest-Id: 6\r\nHost: x"
        assert await exchange(server.port, stalled) == close_bad
    assert site.log_lines() == ["GET,/a,400,5", "GET,/a,400,6"]
