"""HEAD, DELETE, byte ranges, ETags and conditional requests over real sockets (SPEC §4.1,
§5.1-§5.3, §6): exact responses, exactly one audit line each, and files on disk that agree."""

from __future__ import annotations

import asyncio
import errno
import os

import pytest

from asrv.store import SMALL_FILE
from tests.conftest import HOST, ServerFactory, Site, exchange, response
from tests.http_client import Connection, request

pytestmark = pytest.mark.asyncio

CONTENT = b"0123456789abcdef"


@pytest.fixture
def site_a(site: Site) -> Site:
    (site.root / "a").write_bytes(CONTENT)
    return site


async def test_head_is_get_without_the_body(site_a: Site, running_server: ServerFactory) -> None:
    async with running_server() as server, Connection(server.port) as conn:
        head = await conn.request("HEAD", "/a", request_id="h1")
        get = await conn.request("GET", "/a", request_id="g1", if_match="*")
        missing = await conn.request("HEAD", "/missing", request_id="h2")
        after = await conn.request("GET", "/a", request_id="g2")  # the framing held
    etag = get.etag
    assert etag is not None and etag.startswith('"') and etag.endswith('"')
    assert head.head + b"\r\n\r\n" == (
        b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\nETag: %s\r\n\r\n" % etag.encode()
    )
    assert (get.status, get.body) == (200, CONTENT)
    assert missing.head + b"\r\n\r\n" == b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\n"
    assert after.head + b"\r\n\r\n" + after.body == response(200, "OK", CONTENT)
    assert site_a.log_lines() == [
        "HEAD,/a,200,h1",
        "GET,/a,200,g1",
        "HEAD,/missing,404,h2",
        "GET,/a,200,g2",
    ]


async def test_head_of_a_large_file_sends_no_body(
    site: Site, running_server: ServerFactory
) -> None:
    size = SMALL_FILE * 5 + 3
    (site.root / "big").write_bytes(b"x" * size)
    async with running_server() as server, Connection(server.port) as conn:
        head = await conn.request("HEAD", "/big")
        again = await conn.request("HEAD", "/big")
    assert head.header("Content-Length") == again.header("Content-Length") == str(size)
    assert head.etag == again.etag


async def test_delete_removes_the_file_and_is_logged(
    site_a: Site, running_server: ServerFactory
) -> None:
    async with running_server() as server, Connection(server.port) as conn:
        first = await conn.request("DELETE", "/a", request_id="d1")
        second = await conn.request("DELETE", "/a", request_id="d2")
        get = await conn.request("GET", "/a", request_id="g")
        body = await conn.request("DELETE", "/gone", b"ignored body", request_id="d3")
    assert first.head + b"\r\n\r\n" + first.body == response(200, "OK")
    assert second.head + b"\r\n\r\n" + second.body == response(404, "Not Found")
    assert get.status == 404
    assert body.status == 404
    assert not (site_a.root / "a").exists()
    assert list(site_a.root.iterdir()) == []
    assert site_a.log_lines() == [
        "DELETE,/a,200,d1",
        "DELETE,/a,404,d2",
        "GET,/a,404,g",
        "DELETE,/gone,404,d3",
    ]


async def test_delete_works_where_the_filesystem_has_no_hard_links(
    site_a: Site, running_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    async with running_server() as server:
        deleted = await request(server.port, "DELETE", "/a")
        again = await request(server.port, "DELETE", "/a")
    assert (deleted.status, again.status) == (200, 404)
    assert list(site_a.root.iterdir()) == []


async def test_delete_refuses_what_is_not_a_served_file(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "dir").mkdir()
    (site.root / "target").write_bytes(b"t")
    os.symlink("target", site.root / "link")
    async with running_server(log=str(site.root / "audit.log")) as server:
        answers = [
            await exchange(server.port, f"DELETE /{name} HTTP/1.1\r\n\r\n".encode())
            for name in ("dir", "link", "audit.log", "..")
        ]
    assert answers == [response(403, "Forbidden")] * 4
    assert (site.root / "dir").is_dir() and (site.root / "link").is_symlink()
    assert (site.root / "target").read_bytes() == b"t"


async def test_a_get_begun_before_a_delete_gets_the_whole_old_content(
    site: Site, running_server: ServerFactory
) -> None:
    size = 16 << 20
    content = bytes(range(256)) * (size // 256)
    (site.root / "big").write_bytes(content)
    async with running_server() as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /big HTTP/1.1\r\nConnection: close\r\n\r\n")
        # The GET is under way, and cannot end before the client reads more: 16 MiB is far
        # more than the socket buffers of a loopback connection hold.
        start = await reader.readexactly(64 * 1024)
        deleted = await request(server.port, "DELETE", "/big")
        rest = await asyncio.wait_for(reader.read(), 60)
        writer.close()
    assert deleted.status == 200
    assert not (site.root / "big").exists()
    received = start + rest
    assert received.endswith(content)
    assert received.startswith(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % size)
    assert site.log_lines() == ["GET,/big,200,0", "DELETE,/big,200,0"]


RANGES = [
    ("bytes=0-3", 206, "bytes 0-3/16", CONTENT[0:4]),
    ("bytes=10-", 206, "bytes 10-15/16", CONTENT[10:]),
    ("bytes=-5", 206, "bytes 11-15/16", CONTENT[11:]),
    ("bytes=15-99", 206, "bytes 15-15/16", CONTENT[15:]),
    ("bytes=-99", 206, "bytes 0-15/16", CONTENT),
    ("bytes=16-", 416, "bytes */16", b"Range Not Satisfiable\n"),
    ("bytes=-0", 416, "bytes */16", b"Range Not Satisfiable\n"),
    ("bytes=0-1,4-5", 200, None, CONTENT),
    ("bytes=5-1", 200, None, CONTENT),
    ("lines=1-2", 200, None, CONTENT),
    ("bytes=x-", 200, None, CONTENT),
]


@pytest.mark.parametrize(("value", "status", "content_range", "body"), RANGES)
async def test_ranges(
    site_a: Site,
    running_server: ServerFactory,
    value: str,
    status: int,
    content_range: str | None,
    body: bytes,
) -> None:
    async with running_server() as server, Connection(server.port) as conn:
        etag = (await conn.request("HEAD", "/a")).etag
        reply = await conn.request("GET", "/a", range=value, request_id="r")
    assert etag is not None
    phrase = {200: "OK", 206: "Partial Content", 416: "Range Not Satisfiable"}[status]
    fields = b"" if content_range is None else b"Content-Range: %s\r\n" % content_range.encode()
    assert reply.head + b"\r\n\r\n" + reply.body == (
        b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n%sETag: %s\r\n\r\n%s"
        % (status, phrase.encode(), len(body), fields, etag.encode(), body)
    )
    assert site_a.log_lines()[-1] == f"GET,/a,{status},r"


async def test_range_of_an_empty_file_is_unsatisfiable(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "empty").write_bytes(b"")
    async with running_server() as server:
        reply = await request(server.port, "GET", "/empty", range="bytes=0-")
        whole = await request(server.port, "GET", "/empty", range="bytes=0-0,1-1")
        suffix = await request(server.port, "GET", "/empty", range="bytes=-5")
    assert (reply.status, reply.header("Content-Range")) == (416, "bytes */0")
    assert (whole.status, whole.body) == (200, b"")
    # RFC 9110 §14.1.1: an empty file's one satisfiable range, with no byte a 206 could send.
    assert (suffix.status, suffix.body, suffix.header("Content-Range")) == (200, b"", None)


async def test_ranges_of_a_large_file_are_streamed_from_their_offset(
    site: Site, running_server: ServerFactory
) -> None:
    size = 5 * (1 << 20) + 12345
    content = os.urandom(size)
    (site.root / "big").write_bytes(content)
    spans = [
        (0, SMALL_FILE),
        (1, size - 2),
        ((1 << 20) - 7, 3 * (1 << 20) + 11),
        (size - 70000, size - 1),
    ]
    async with running_server() as server, Connection(server.port) as conn:
        for first, last in spans:
            reply = await conn.request("GET", "/big", range=f"bytes={first}-{last}")
            assert reply.status == 206
            assert reply.header("Content-Range") == f"bytes {first}-{last}/{size}"
            assert reply.body == content[first : last + 1]
        suffix = await conn.request("GET", "/big", range="bytes=-200000")
    assert suffix.body == content[-200000:]


async def test_if_range_serves_the_range_only_for_the_current_version(
    site_a: Site, running_server: ServerFactory
) -> None:
    async with running_server() as server, Connection(server.port) as conn:
        old = (await conn.request("HEAD", "/a")).etag
        assert old is not None
        matching = await conn.request("GET", "/a", range="bytes=0-1", if_range=old)
        await conn.request("PUT", "/a", b"new content")
        stale = await conn.request("GET", "/a", range="bytes=0-1", if_range=old)
        dated = await conn.request(
            "GET", "/a", range="bytes=0-1", if_range="Sun, 29 Nov 2026 12:00:00 GMT"
        )
    assert (matching.status, matching.body) == (206, b"01")
    assert (stale.status, stale.body) == (200, b"new content")
    assert stale.etag not in (None, old)
    assert (dated.status, dated.body) == (200, b"new content")


async def test_every_put_makes_a_new_etag_even_of_equal_size_in_one_tick(
    site: Site, running_server: ServerFactory
) -> None:
    # Same size, same name, as fast as one connection goes: inode numbers and timestamps
    # repeat, the log position of each PUT does not.
    etags = []
    async with running_server(threads=2) as server, Connection(server.port) as conn:
        for n in range(300):
            condition = {"if_match": "*"} if n else {"if_none_match": "*"}
            reply = await conn.request("PUT", "/same", b"%08d" % (n % 2), **condition)
            seen = (await conn.request("HEAD", "/same")).etag
            assert reply.etag == seen is not None
            etags.append(seen)
        other = await conn.request("PUT", "/other", b"00000000", if_none_match="*")
    assert len(set(etags)) == len(etags)
    assert other.etag not in etags


async def test_etags_survive_a_restart(site: Site, running_server: ServerFactory) -> None:
    async with running_server() as server:
        written = await request(server.port, "PUT", "/a", b"version one", if_none_match="*")
    async with running_server() as server:
        head = await request(server.port, "HEAD", "/a")
        replaced = await request(server.port, "PUT", "/a", b"version two", if_match=head.etag or "")
    assert written.status == 201 and head.etag == written.etag is not None
    assert replaced.status == 200 and replaced.etag not in (None, written.etag)


async def test_a_file_changed_behind_the_servers_back_gets_a_new_etag(
    site_a: Site, running_server: ServerFactory
) -> None:
    async with running_server() as server:
        stamped = await request(server.port, "PUT", "/a", b"by asrv", if_match="*")
        path = site_a.root / "a"
        path.write_bytes(b"by hand")
        edited = await request(server.port, "HEAD", "/a")
        os.utime(path, ns=(1, 1))
        touched = await request(server.port, "HEAD", "/a")
    assert len({stamped.etag, edited.etag, touched.etag}) == 3


async def test_conditional_put_and_delete(site_a: Site, running_server: ServerFactory) -> None:
    async with running_server() as server, Connection(server.port) as conn:
        current = await conn.request("GET", "/a", if_match="*", request_id="1")
        assert current.etag is not None
        created = await conn.request("PUT", "/b", b"bee", if_none_match="*", request_id="2")
        exists = await conn.request("PUT", "/b", b"bee", if_none_match="*", request_id="3")
        no_file = await conn.request("PUT", "/c", b"sea", if_match="*", request_id="4")
        stale = await conn.request("PUT", "/a", b"x", if_match='"w-0-0-0"', request_id="5")
        updated = await conn.request("PUT", "/a", b"y", if_match=current.etag, request_id="6")
        again = await conn.request("PUT", "/a", b"z", if_match=current.etag, request_id="7")
        listed = await conn.request(
            "PUT", "/a", b"w", if_match=f'"nope", {updated.etag}', request_id="8"
        )
        kept = await conn.request("DELETE", "/a", if_match=current.etag, request_id="9")
        deleted = await conn.request("DELETE", "/a", if_match=listed.etag or "", request_id="10")
        missing = await conn.request("DELETE", "/a", if_match="*", request_id="11")
    assert (created.status, exists.status, no_file.status) == (201, 412, 412)
    assert created.etag is not None and exists.etag == created.etag
    assert no_file.head + b"\r\n\r\n" + no_file.body == response(412, "Precondition Failed")
    assert stale.status == 412 and stale.etag == current.etag
    assert updated.status == 200 and updated.etag not in (None, current.etag)
    assert again.status == 412 and again.etag == updated.etag
    assert listed.status == 200
    assert kept.status == 412 and kept.etag == listed.etag
    assert deleted.head + b"\r\n\r\n" + deleted.body == response(200, "OK")
    assert missing.status == 404
    assert not (site_a.root / "a").exists() and (site_a.root / "b").read_bytes() == b"bee"
    assert not (site_a.root / "c").exists()
    assert [line.split(",")[2] for line in site_a.log_lines()] == [
        *("200", "201", "412", "412", "412", "200", "412", "200", "412", "200", "404")
    ]


async def test_conditional_reads(site_a: Site, running_server: ServerFactory) -> None:
    async with running_server() as server, Connection(server.port) as conn:
        etag = (await conn.request("HEAD", "/a")).etag
        assert etag is not None
        not_modified = await conn.request("GET", "/a", if_none_match=etag, request_id="1")
        head_304 = await conn.request("HEAD", "/a", if_none_match=f'"x", W/{etag}')
        modified = await conn.request("GET", "/a", if_none_match='"other"')
        wrong = await conn.request("GET", "/a", if_match='"other"')
        missing = await conn.request("GET", "/missing", if_match="*", if_none_match="*")
        after = await conn.request("GET", "/a")
    assert not_modified.head + b"\r\n\r\n" == (
        b"HTTP/1.1 304 Not Modified\r\nETag: %s\r\n\r\n" % etag.encode()
    )
    assert head_304.status == 304
    assert (modified.status, modified.body, modified.etag) == (200, CONTENT, etag)
    assert (wrong.status, wrong.body, wrong.etag) == (412, b"Precondition Failed\n", etag)
    assert missing.head + b"\r\n\r\n" + missing.body == response(404, "Not Found")
    assert after.head + b"\r\n\r\n" + after.body == response(200, "OK", CONTENT)
    assert [line.split(",")[2] for line in site_a.log_lines()] == [
        *("200", "304", "304", "200", "412", "404", "200")
    ]


async def test_range_and_if_range_on_a_write_change_nothing(
    site_a: Site, running_server: ServerFactory
) -> None:
    # RFC 9110 §14.2: Range means nothing to a PUT or DELETE; they are answered as plain
    # requests, byte for byte.
    async with running_server() as server:
        put = await exchange(
            server.port,
            b'PUT /b HTTP/1.1\r\nRange: bytes=0-1\r\nIf-Range: "x"\r\nContent-Length: 1\r\n\r\nb',
        )
        delete = await exchange(server.port, b"DELETE /a HTTP/1.1\r\nRange: bytes=0-1\r\n\r\n")
    assert put == response(201, "Created")
    assert delete == response(200, "OK")


async def test_course_mode_keeps_the_course_behaviour(
    site_a: Site, running_server: ServerFactory
) -> None:
    async with running_server(course=True) as server:
        head = await exchange(server.port, b"HEAD /a HTTP/1.1\r\n\r\n")
        delete = await exchange(server.port, b"DELETE /a HTTP/1.1\r\n\r\n")
        ranged = await exchange(
            server.port,
            b'GET /a HTTP/1.1\r\nRange: bytes=0-1\r\nIf-None-Match: *\r\nIf-Match: "x"\r\n\r\n',
        )
        put = await exchange(
            server.port, b"PUT /a HTTP/1.1\r\nIf-None-Match: *\r\nContent-Length: 1\r\n\r\nz"
        )
    assert head == delete == response(501, "Not Implemented")
    assert ranged == response(200, "OK", CONTENT)
    assert put == response(200, "OK")
    assert (site_a.root / "a").read_bytes() == b"z"
    assert site_a.log_lines() == [
        "HEAD,/a,501,0",
        "DELETE,/a,501,0",
        "GET,/a,200,0",
        "PUT,/a,200,0",
    ]
