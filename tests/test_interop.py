"""Interoperability: the HTTP clients people use, unchanged, against `python -m asrv`.

Every test runs a real server process over real sockets and drives it with one client:
requests, httpx, aiohttp, urllib3, curl, wget, a raw socket, the course's own client shape and
a headless Chromium. Each checks what the client saw (statuses, bodies, headers), how many
connections it used (persistent connections, RFC 9112 §9.3), that the server kept exactly
N + 1 threads, and that the audit log holds exactly one line per request, in the order the
client's sequence implies (SPEC §4, §6).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest
import requests
import urllib3

from tests.conftest import HOST, Process, Site, response, wait_until

THREADS = 4
TIMEOUT = 30.0
"""Seconds any single client operation may take: wide, the tests take seconds in all."""

CHROMIUM = Path("/usr/bin/chromium")

Spawn = Callable[..., Process]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients honour proxy variables; these tests talk to 127.0.0.1 directly."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def start(spawn_server: Spawn, *extra: str) -> Process:
    """A server with THREADS workers; its idle timeout is wide, so that no connection a
    client keeps in its pool is closed under it during a test on a slow machine."""
    server = spawn_server("-t", str(THREADS), "--timeout", str(TIMEOUT), *extra)
    assert server.threads() == THREADS + 1
    return server


def stop(server: Process, site: Site) -> list[str]:
    """Check the thread count, stop the server (SIGTERM) and return the complete audit log."""
    assert server.threads() == THREADS + 1
    assert server.stop() == 0
    return site.log_lines()


def server_connections(port: int) -> set[int]:
    """The client ports of the connections the server holds open on `port` right now.

    Read from /proc/net/tcp: a server-side socket has the server's port as its local port;
    a socket with inode 0 has no descriptor any more (closed, in TIME_WAIT or not yet
    accepted) and a listening socket has no peer, so neither counts.
    """
    ports = set()
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        if int(local.split(":")[1], 16) == port and state != "0A" and inode != "0":
            ports.add(int(remote.split(":")[1], 16))
    return ports


def plain(code: int, phrase: str, body: bytes | None = None) -> tuple[int, bytes]:
    """What a client sees of a plain response: its status and body."""
    return code, f"{phrase}\n".encode() if body is None else body


def body_of(i: int) -> bytes:
    """The i-th upload: mostly small, now and then large enough to be sent in many chunks."""
    if i % 50 == 7:
        return bytes(range(256)) * 1024  # 256 KiB, every byte value
    return f"upload {i}\n".encode() * (i % 5 + 1)


# -- Python clients ---------------------------------------------------------------------------


def test_requests_session_one_connection(site: Site, spawn_server: Spawn) -> None:
    """600 requests on one requests.Session use one connection; `Connection: close` ends it."""
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    expected_log = []
    seen_connections: set[int] = set()
    with requests.Session() as session:
        for i in range(200):
            name, rid = f"f{i % 10}.txt", 3 * i + 1
            body = body_of(i)
            put = session.put(f"{base}/{name}", data=body, headers={"Request-Id": str(rid)})
            created = i < 10
            code, phrase = (201, "Created") if created else (200, "OK")
            assert (put.status_code, put.reason, put.content) == (
                code,
                phrase,
                f"{phrase}\n".encode(),
            )
            assert dict(put.headers) == {"Content-Length": str(len(phrase) + 1)}
            got = session.get(f"{base}/{name}", headers={"Request-Id": str(rid + 1)})
            assert (got.status_code, got.content) == (200, body)
            assert dict(got.headers) == {"Content-Length": str(len(body))}
            missing = session.get(f"{base}/missing-{i}.txt", headers={"Request-Id": str(rid + 2)})
            assert (missing.status_code, missing.content) == plain(404, "Not Found")
            expected_log += [
                f"PUT,/{name},{code},{rid}",
                f"GET,/{name},200,{rid + 1}",
                f"GET,/missing-{i}.txt,404,{rid + 2}",
            ]
            if i % 20 == 19:  # now and then: the file lists every socket of the machine
                now = server_connections(server.port)
                assert len(now) == 1, now
                seen_connections |= now
        assert len(seen_connections) == 1, seen_connections
        manager = session.get_adapter(base).poolmanager
        pools = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118
        assert [(pool.num_connections, pool.num_requests) for pool in pools] == [(1, 600)]
        # The client ends the connection: the response says so, and the next request
        # opens a new one.
        closing = session.get(f"{base}/f0.txt", headers={"Connection": "close"})
        assert (closing.status_code, closing.content) == (200, body_of(190))
        assert dict(closing.headers) == {
            "Content-Length": str(len(body_of(190))),
            "Connection": "close",
        }
        assert wait_until(lambda: not server_connections(server.port), TIMEOUT)
        after = session.get(f"{base}/f1.txt")
        assert (after.status_code, after.content) == (200, body_of(191))
        assert server_connections(server.port).isdisjoint(seen_connections)
        manager = session.get_adapter(base).poolmanager
        pools = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118
        assert [pool.num_requests for pool in pools] == [602]
    assert stop(server, site) == [*expected_log, "GET,/f0.txt,200,0", "GET,/f1.txt,200,0"]
    assert (site.root / "f9.txt").read_bytes() == body_of(199)


def test_httpx_client_one_connection(site: Site, spawn_server: Spawn) -> None:
    """600 requests on one httpx.Client use one connection; `Connection: close` ends it."""
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    expected_log = []
    client_ports: set[int] = set()
    seen_connections: set[int] = set()
    with httpx.Client(timeout=TIMEOUT) as client:
        for i in range(200):
            name, rid = f"f{i % 10}.txt", 3 * i + 1
            body = body_of(i)
            put = client.put(f"{base}/{name}", content=body, headers={"Request-Id": str(rid)})
            code, phrase = (201, "Created") if i < 10 else (200, "OK")
            assert (put.status_code, put.reason_phrase, put.content) == (
                code,
                phrase,
                f"{phrase}\n".encode(),
            )
            assert put.http_version == "HTTP/1.1"
            assert put.headers.multi_items() == [("content-length", str(len(phrase) + 1))]
            got = client.get(f"{base}/{name}", headers={"Request-Id": str(rid + 1)})
            assert (got.status_code, got.content) == (200, body)
            assert got.headers.multi_items() == [("content-length", str(len(body)))]
            missing = client.get(f"{base}/missing-{i}.txt", headers={"Request-Id": str(rid + 2)})
            assert (missing.status_code, missing.content) == plain(404, "Not Found")
            for answer in (put, got, missing):
                stream = answer.extensions["network_stream"]
                client_ports.add(stream.get_extra_info("client_addr")[1])
            expected_log += [
                f"PUT,/{name},{code},{rid}",
                f"GET,/{name},200,{rid + 1}",
                f"GET,/missing-{i}.txt,404,{rid + 2}",
            ]
            if i % 20 == 19:  # now and then: the file lists every socket of the machine
                now = server_connections(server.port)
                assert len(now) == 1, now
                seen_connections |= now
        assert len(client_ports) == 1, client_ports
        assert seen_connections == client_ports
        closing = client.get(f"{base}/f0.txt", headers={"Connection": "close"})
        assert (closing.status_code, closing.content) == (200, body_of(190))
        assert closing.headers.multi_items() == [
            ("content-length", str(len(body_of(190)))),
            ("connection", "close"),
        ]
        assert wait_until(lambda: not server_connections(server.port), TIMEOUT)
        after = client.get(f"{base}/f1.txt")
        assert (after.status_code, after.content) == (200, body_of(191))
        new_port = after.extensions["network_stream"].get_extra_info("client_addr")[1]
        assert new_port not in client_ports
        assert server_connections(server.port) == {new_port}
    assert stop(server, site) == [*expected_log, "GET,/f0.txt,200,0", "GET,/f1.txt,200,0"]


def test_urllib3_pool_manager(site: Site, spawn_server: Spawn) -> None:
    """A PoolManager without retries sends all its requests on one connection."""
    (site.root / "static.txt").write_bytes(b"static\n")
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    expected_log = []
    with urllib3.PoolManager(timeout=TIMEOUT, retries=False) as http:
        for i in range(50):
            name = f"u{i % 4}.txt"
            body = body_of(i)
            put = http.request("PUT", f"{base}/{name}", body=body, headers={"Request-Id": f"p{i}"})
            code, phrase = (201, "Created") if i < 4 else (200, "OK")
            assert (put.status, put.reason, put.data) == (code, phrase, f"{phrase}\n".encode())
            assert list(put.headers.items()) == [("Content-Length", str(len(phrase) + 1))]
            got = http.request("GET", f"{base}/{name}", headers={"Request-Id": f"g{i}"})
            assert (got.status, got.data) == (200, body)
            static = http.request("GET", f"{base}/static.txt")
            assert (static.status, static.data) == (200, b"static\n")
            expected_log += [
                f"PUT,/{name},{code},p{i}",
                f"GET,/{name},200,g{i}",
                "GET,/static.txt,200,0",
            ]
        pool = http.connection_from_url(base)
        assert (pool.num_connections, pool.num_requests) == (1, 150)
        assert len(server_connections(server.port)) == 1
    assert stop(server, site) == expected_log


@pytest.mark.asyncio
async def test_aiohttp_session_concurrent_tasks(site: Site, spawn_server: Spawn) -> None:
    """Eight tasks on one ClientSession: at most eight connections, each reused, and each
    task's requests logged in its order."""
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    created: list[object] = []
    reused: list[object] = []

    async def on_create(*args: object) -> None:
        created.append(args)

    async def on_reuse(*args: object) -> None:
        reused.append(args)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    trace.on_connection_reuseconn.append(on_reuse)
    tasks, rounds = 8, 25

    async def task(session: aiohttp.ClientSession, k: int) -> None:
        name = f"t{k}.txt"
        for j in range(rounds):
            body = body_of(k * rounds + j)
            async with session.put(
                f"{base}/{name}", data=body, headers={"Request-Id": f"{k}-{2 * j}"}
            ) as put:
                code, phrase = (201, "Created") if j == 0 else (200, "OK")
                assert (put.status, put.reason) == (code, phrase)
                assert await put.read() == f"{phrase}\n".encode()
                assert list(put.raw_headers) == [(b"Content-Length", str(len(phrase) + 1).encode())]
            async with session.get(
                f"{base}/{name}", headers={"Request-Id": f"{k}-{2 * j + 1}"}
            ) as got:
                assert (got.status, await got.read()) == (200, body)

    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout, trace_configs=[trace]) as session:
        async with asyncio.timeout(2 * TIMEOUT):
            await asyncio.gather(*(task(session, k) for k in range(tasks)))
        # Every connection the client made is still open on both sides, and was reused.
        assert 1 <= len(created) <= tasks
        assert len(created) + len(reused) == tasks * rounds * 2
        assert len(server_connections(server.port)) == len(created)
    log = stop(server, site)
    assert len(log) == tasks * rounds * 2
    for k in range(tasks):
        # One client task is sequential: its requests are logged in its order.
        assert [line for line in log if line.startswith((f"PUT,/t{k}.", f"GET,/t{k}."))] == [
            f"{method},/t{k}.txt,{code},{k}-{2 * j + (method == 'GET')}"
            for j in range(rounds)
            for method, code in (("PUT", 201 if j == 0 else 200), ("GET", 200))
        ]
        assert (site.root / f"t{k}.txt").read_bytes() == body_of(k * rounds + rounds - 1)


# -- Command-line clients ---------------------------------------------------------------------


def run_tool(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command-line client; its output decoded as is (CRLF stays CRLF)."""
    env = {**os.environ, "LC_ALL": "C"}  # English messages, whatever the machine's locale
    done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, env=env, check=False)
    return subprocess.CompletedProcess(
        argv, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


@pytest.fixture
def curl() -> str:
    path = shutil.which("curl")
    if path is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    return path


@pytest.fixture
def wget() -> str:
    path = shutil.which("wget")
    if path is None:
        pytest.skip("wget is not installed (.ci/run installs it)")
    return path


def test_curl_several_urls_reuse_one_connection(
    site: Site, spawn_server: Spawn, curl: str, tmp_path: Path
) -> None:
    """curl with several URLs connects once and reuses the connection for the others."""
    for name in ("a.txt", "b.txt", "c.txt"):
        (site.root / name).write_text(f"content of {name}\n")
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    names = ["a.txt", "b.txt", "missing.txt", "c.txt", "a.txt"]
    outputs = [str(tmp_path / f"out{i}") for i in range(len(names))]
    result = run_tool(
        curl,
        "-q",
        "-sS",
        "-w",
        "%{http_code} %{num_connects}\\n",
        *(arg for pair in zip(["-o"] * len(names), outputs, strict=True) for arg in pair),
        *(f"{base}/{name}" for name in names),
    )
    assert result.returncode == 0, result.stderr
    # One connection made for the first URL, reused for all the others.
    assert result.stdout.splitlines() == ["200 1", "200 0", "404 0", "200 0", "200 0"]
    assert [Path(out).read_text() for out in outputs] == [
        "content of a.txt\n",
        "content of b.txt\n",
        "Not Found\n",
        "content of c.txt\n",
        "content of a.txt\n",
    ]
    # -v shows the reuse too, and the exact bytes of each response.
    verbose = run_tool(curl, "-q", "-sS", "-v", "-i", f"{base}/a.txt", f"{base}/b.txt")
    assert verbose.returncode == 0, verbose.stderr
    assert verbose.stderr.count("Re-using existing connection") == 1
    assert verbose.stdout == (
        "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\ncontent of a.txt\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\ncontent of b.txt\n"
    )
    assert stop(server, site) == [
        f"GET,/{name},{404 if 'missing' in name else 200},0" for name in names
    ] + [
        "GET,/a.txt,200,0",
        "GET,/b.txt,200,0",
    ]


def test_curl_http10(site: Site, spawn_server: Spawn, curl: str) -> None:
    """`curl --http1.0`: one request per connection, unless it asks to keep the connection."""
    (site.root / "a.txt").write_text("hello\n")
    (site.root / "b.txt").write_text("world\n")
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    # HTTP/1.0: answered in HTTP/1.1 form, one request per connection, which the response
    # says (an HTTP/1.1 response alone would tell the client the connection persists).
    single = run_tool(curl, "-q", "-sS", "--http1.0", "-i", f"{base}/a.txt")
    assert single.returncode == 0, single.stderr
    assert single.stdout == (
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello\n"
    )
    two = run_tool(
        curl, "-q", "-sS", "--http1.0", "-w", "%{http_code} %{num_connects}\\n", "-o", "/dev/null",
        "-o", "/dev/null", f"{base}/a.txt", f"{base}/b.txt",
    )  # fmt: skip
    assert two.returncode == 0, two.stderr
    assert two.stdout.splitlines() == ["200 1", "200 1"]
    # HTTP/1.0 asking to keep the connection: kept, and the response says so.
    kept = run_tool(
        curl, "-q", "-sS", "--http1.0", "-H", "Connection: keep-alive", "-i",
        "-w", "%{num_connects}\\n", f"{base}/a.txt", f"{base}/b.txt",
    )  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout == (
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n1\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nworld\n0\n"
    )
    assert stop(server, site) == [
        "GET,/a.txt,200,0",
        "GET,/a.txt,200,0",
        "GET,/b.txt,200,0",
        "GET,/a.txt,200,0",
        "GET,/b.txt,200,0",
    ]


def test_curl_upload(site: Site, spawn_server: Spawn, curl: str, tmp_path: Path) -> None:
    """`curl -T` PUTs, a large one through `Expect: 100-continue`, on one connection."""
    small = tmp_path / "small.txt"
    small.write_bytes(b"uploaded by curl\n")
    large = tmp_path / "large.bin"
    large.write_bytes(os.urandom(3 * 1024 * 1024))  # large enough for Expect: 100-continue
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    first = run_tool(
        curl, "-q", "-sS", "-v", "-H", "Request-Id: 1", "-w", "%{http_code} %{num_connects}\\n",
        "-T", str(small), f"{base}/small.txt", "-T", str(large), f"{base}/large.bin",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == ["Created", "201 1", "Created", "201 0"]
    assert "> Expect: 100-continue" in first.stderr
    assert "< HTTP/1.1 100 Continue" in first.stderr
    # Replacing answers 200; the files hold exactly what was uploaded.
    again = run_tool(curl, "-q", "-sS", "-T", str(small), f"{base}/large.bin")
    assert (again.returncode, again.stdout) == (0, "OK\n"), again.stderr
    back = run_tool(curl, "-q", "-sS", f"{base}/small.txt")
    assert (back.returncode, back.stdout) == (0, "uploaded by curl\n"), back.stderr
    assert stop(server, site) == [
        "PUT,/small.txt,201,1",
        "PUT,/large.bin,201,1",
        "PUT,/large.bin,200,0",
        "GET,/small.txt,200,0",
    ]
    assert (site.root / "large.bin").read_bytes() == small.read_bytes()


def test_wget(site: Site, spawn_server: Spawn, wget: str, tmp_path: Path) -> None:
    """wget fetches one file, then several on one connection (a 404 among them), and PUTs."""
    (site.root / "a.txt").write_text("hello\n")
    (site.root / "b.bin").write_bytes(os.urandom(300_000))
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    options = ["--no-config", "--no-hsts"]
    one = run_tool(wget, *options, "-q", "-O", "-", f"{base}/a.txt")
    assert (one.returncode, one.stdout) == (0, "hello\n"), one.stderr
    into = tmp_path / "downloads"
    several = run_tool(
        wget, *options, "-P", str(into), f"{base}/a.txt", f"{base}/missing.txt", f"{base}/b.bin"
    )
    assert several.returncode == 8, several.stderr  # 8: the server answered an error (the 404)
    assert several.stderr.count("Connecting to ") == 1
    assert several.stderr.count(f"Reusing existing connection to {HOST}:{server.port}.") == 2
    assert "ERROR 404: Not Found." in several.stderr
    assert sorted(path.name for path in into.iterdir()) == ["a.txt", "b.bin"]
    assert (into / "a.txt").read_text() == "hello\n"
    assert (into / "b.bin").read_bytes() == (site.root / "b.bin").read_bytes()
    put = run_tool(
        wget, *options, "-q", "-O", "-", "--method=PUT", "--body-data=from wget\n",
        f"{base}/w.txt",
    )  # fmt: skip
    assert (put.returncode, put.stdout) == (0, "Created\n"), put.stderr
    assert stop(server, site) == [
        "GET,/a.txt,200,0",
        "GET,/a.txt,200,0",
        "GET,/missing.txt,404,0",
        "GET,/b.bin,200,0",
        "PUT,/w.txt,201,0",
    ]
    assert (site.root / "w.txt").read_text() == "from wget\n"


# -- HEAD, DELETE, ranges and conditions ---------------------------------------------------------


def test_requests_head_ranges_and_conditions_on_one_connection(
    site: Site, spawn_server: Spawn
) -> None:
    """requests frames HEAD and 304 responses without a body, and keeps the connection."""
    content = os.urandom(200_000)
    (site.root / "f.bin").write_bytes(content)
    server = start(spawn_server)
    url = f"http://{HOST}:{server.port}/f.bin"
    with requests.Session() as session:
        head = session.head(url)
        etag = head.headers["ETag"]
        assert (head.status_code, head.content) == (200, b"")
        assert dict(head.headers) == {"Content-Length": "200000", "ETag": etag}
        part = session.get(url, headers={"Range": "bytes=1000-"})
        assert (part.status_code, part.content) == (206, content[1000:])
        assert part.headers["Content-Range"] == "bytes 1000-199999/200000"
        cached = session.get(url, headers={"If-None-Match": etag})
        assert (cached.status_code, cached.content) == (304, b"")
        assert dict(cached.headers) == {"ETag": etag}
        written = session.put(url, data=b"new", headers={"If-Match": etag})
        assert (written.status_code, written.content) == (200, b"OK\n")
        lost = session.put(url, data=b"lost", headers={"If-Match": etag})
        assert (lost.status_code, lost.headers["ETag"]) == (412, written.headers["ETag"])
        gone = session.delete(url, headers={"If-Match": written.headers["ETag"]})
        assert (gone.status_code, gone.content) == (200, b"OK\n")
        assert session.get(url).status_code == 404
        manager = session.get_adapter(url).poolmanager
        pools = [manager.pools[key] for key in manager.pools.keys()]  # noqa: SIM118
        assert [(pool.num_connections, pool.num_requests) for pool in pools] == [(1, 7)]
    assert stop(server, site) == [
        "HEAD,/f.bin,200,0",
        "GET,/f.bin,206,0",
        "GET,/f.bin,304,0",
        "PUT,/f.bin,200,0",
        "PUT,/f.bin,412,0",
        "DELETE,/f.bin,200,0",
        "GET,/f.bin,404,0",
    ]


@pytest.mark.asyncio
async def test_aiohttp_head_and_not_modified_keep_the_connection(
    site: Site, spawn_server: Spawn
) -> None:
    (site.root / "a.txt").write_bytes(b"aiohttp\n")
    server = start(spawn_server)
    url = f"http://{HOST}:{server.port}/a.txt"
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.head(url) as head:
            etag = head.headers["ETag"]
            assert (head.status, head.content_length) == (200, 8)
        async with session.get(url, headers={"If-None-Match": etag}) as cached:
            assert (cached.status, await cached.read()) == (304, b"")
        async with session.get(url, headers={"Range": "bytes=-4"}) as tail:
            assert (tail.status, await tail.read()) == (206, b"ttp\n")
        async with session.delete(url) as deleted:
            assert (deleted.status, await deleted.read()) == (200, b"OK\n")
        assert len(server_connections(server.port)) == 1
    assert stop(server, site) == [
        "HEAD,/a.txt,200,0",
        "GET,/a.txt,304,0",
        "GET,/a.txt,206,0",
        "DELETE,/a.txt,200,0",
    ]


def test_curl_head_range_resume_delete_and_conditional_update(
    site: Site, spawn_server: Spawn, curl: str, tmp_path: Path
) -> None:
    """The README's curl examples, as written there."""
    content = os.urandom(300_000)
    (site.root / "a.bin").write_bytes(content)
    server = start(spawn_server)
    base = f"http://{HOST}:{server.port}"
    head = run_tool(curl, "-q", "-sS", "-I", f"{base}/a.bin")
    assert head.returncode == 0, head.stderr
    etag = head.stdout.split("ETag: ")[1].split("\r\n")[0]
    assert head.stdout == f"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\nETag: {etag}\r\n\r\n"
    first = run_tool(
        curl, "-q", "-sS", "-r", "0-99", "-o", str(tmp_path / "first"), f"{base}/a.bin"
    )
    assert first.returncode == 0 and (tmp_path / "first").read_bytes() == content[:100]
    partial = tmp_path / "a.bin"
    partial.write_bytes(content[:123_456])  # an interrupted download
    resumed = run_tool(curl, "-q", "-sS", "-C", "-", "-o", str(partial), f"{base}/a.bin")
    assert resumed.returncode == 0, resumed.stderr
    assert partial.read_bytes() == content
    again = run_tool(curl, "-q", "-sS", "-C", "-", "-o", str(partial), f"{base}/a.bin")
    assert again.returncode == 0, again.stderr  # already complete: curl accepts the 416
    # The README's read-modify-write of a counter, as written there: it creates the file,
    # then updates it over the version it read.
    counter = readme_counter_example().replace("127.0.0.1:8080", f"{HOST}:{server.port}")
    for _ in range(2):
        ran = subprocess.run(
            ["bash", "-e", "-c", counter],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
    stale = run_tool(
        curl, "-q", "-sS", "-X", "PUT", "-H", 'If-Match: "w-0-0-0"', "-d", "0", f"{base}/n.txt"
    )
    assert stale.stdout == "Precondition Failed\n"
    deleted = run_tool(curl, "-q", "-sS", "-X", "DELETE", f"{base}/a.bin")
    assert deleted.stdout == "OK\n"
    assert stop(server, site) == [
        "HEAD,/a.bin,200,0",
        "GET,/a.bin,206,0",
        "GET,/a.bin,206,0",
        "GET,/a.bin,416,0",
        "GET,/n.txt,404,0",
        "PUT,/n.txt,201,0",
        "GET,/n.txt,200,0",
        "PUT,/n.txt,200,0",
        "PUT,/n.txt,412,0",
        "DELETE,/a.bin,200,0",
    ]
    assert (site.root / "n.txt").read_text() == "2\n"


def readme_counter_example() -> str:
    """The README's read-modify-write example: the lines of its code block from the one
    that introduces it to the end of the block."""
    text = (Path(__file__).parent.parent / "README.md").read_text()
    start = text.index("# A safe read-modify-write of a counter")
    return text[start : text.index("```", start)]


def test_wget_continues_an_interrupted_download(
    site: Site, spawn_server: Spawn, wget: str, tmp_path: Path
) -> None:
    content = os.urandom(500_000)
    (site.root / "b.bin").write_bytes(content)
    server = start(spawn_server)
    partial = tmp_path / "b.bin"
    partial.write_bytes(content[:200_000])
    result = run_tool(
        wget, "--no-config", "--no-hsts", "-c", "-O", str(partial),
        f"http://{HOST}:{server.port}/b.bin",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "206 Partial Content" in result.stderr
    assert partial.read_bytes() == content
    assert stop(server, site) == ["GET,/b.bin,206,0"]


# -- Raw sockets ------------------------------------------------------------------------------


def read_to_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("ending", ["connection-close", "eof"])
def test_raw_socket_pipelines_ten_requests(site: Site, spawn_server: Spawn, ending: str) -> None:
    """Ten requests in one write; the connection ends with the last request's
    `Connection: close` (echoed), or with the client's EOF (nothing added)."""
    (site.root / "a.txt").write_bytes(b"A\n")
    big = os.urandom(100_000)
    server = start(spawn_server)

    def get(name: str, rid: int, extra: str = "") -> bytes:
        return f"GET /{name} HTTP/1.1\r\nHost: x\r\nRequest-Id: {rid}\r\n{extra}\r\n".encode()

    def put(name: str, rid: int, body: bytes) -> bytes:
        head = f"PUT /{name} HTTP/1.1\r\nContent-Length: {len(body)}\r\nRequest-Id: {rid}\r\n\r\n"
        return head.encode() + body

    requests_ = [
        get("a.txt", 1),
        put("b.txt", 2, b"first\n"),
        get("b.txt", 3),
        get("missing.txt", 4),
        put("b.txt", 5, big),
        get("b.txt", 6),
        put("c.txt", 7, b""),
        get("c.txt", 8),
        put("a.txt", 9, b"A2\n"),
        get("a.txt", 10, "Connection: close\r\n" if ending == "connection-close" else ""),
    ]
    with socket.create_connection((HOST, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(requests_))
        if ending == "eof":
            sock.shutdown(socket.SHUT_WR)
        answer = read_to_eof(sock)
    assert answer == b"".join(
        [
            response(200, "OK", b"A\n"),
            response(201, "Created"),
            response(200, "OK", b"first\n"),
            response(404, "Not Found"),
            response(200, "OK"),
            response(200, "OK", big),
            response(201, "Created"),
            response(200, "OK", b""),
            response(200, "OK"),
            response(200, "OK", b"A2\n", close=ending == "connection-close"),
        ]
    )
    assert stop(server, site) == [
        "GET,/a.txt,200,1",
        "PUT,/b.txt,201,2",
        "GET,/b.txt,200,3",
        "GET,/missing.txt,404,4",
        "PUT,/b.txt,200,5",
        "GET,/b.txt,200,6",
        "PUT,/c.txt,201,7",
        "GET,/c.txt,200,8",
        "PUT,/a.txt,200,9",
        "GET,/a.txt,200,10",
    ]


def course_client(port: int, data: bytes) -> bytes:
    """The course's test client: connect, send, shut down the sending side, read to EOF."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return read_to_eof(sock)


COURSE_EXCHANGES = [
    (b"GET /a.txt HTTP/1.1\r\nRequest-Id: 1\r\n\r\n", response(200, "OK", b"hello\n")),
    (
        b"PUT /b.txt HTTP/1.1\r\nContent-Length: 4\r\nRequest-Id: 2\r\n\r\nnew\n",
        response(201, "Created"),
    ),
    (b"GET /b.txt HTTP/1.1\r\nRequest-Id: 3\r\n\r\n", response(200, "OK", b"new\n")),
    (
        b"PUT /b.txt HTTP/1.1\r\nContent-Length: 0\r\nRequest-Id: 4\r\n\r\n",
        response(200, "OK"),
    ),
    (b"GET /missing.txt HTTP/1.1\r\nRequest-Id: 5\r\n\r\n", response(404, "Not Found")),
    (b"GET /a.txt HTTP/1.1\r\n\r\n", response(200, "OK", b"hello\n")),
]
COURSE_LOG = [
    "GET,/a.txt,200,1",
    "PUT,/b.txt,201,2",
    "GET,/b.txt,200,3",
    "PUT,/b.txt,200,4",
    "GET,/missing.txt,404,5",
    "GET,/a.txt,200,0",
]


def test_course_client_shape_default_mode(site: Site, spawn_server: Spawn) -> None:
    """The course's client gets exactly one response per connection, with nothing added."""
    (site.root / "a.txt").write_bytes(b"hello\n")
    server = start(spawn_server)
    for request, expected in COURSE_EXCHANGES:
        assert course_client(server.port, request) == expected
    assert stop(server, site) == COURSE_LOG


def test_course_client_shape_course_mode(site: Site, spawn_server: Spawn) -> None:
    """--course: the same exchanges, and bytes after the first request are ignored."""
    (site.root / "a.txt").write_bytes(b"hello\n")
    server = start(spawn_server, "--course")
    for request, expected in COURSE_EXCHANGES:
        assert course_client(server.port, request) == expected
    # One request per connection: what follows the first request is read and ignored.
    second = b"GET /a.txt HTTP/1.1\r\nRequest-Id: 7\r\n\r\n"
    assert course_client(server.port, COURSE_EXCHANGES[0][0] + second) == COURSE_EXCHANGES[0][1]
    put_then_get = COURSE_EXCHANGES[1][0].replace(b"/b.txt", b"/c.txt") + second
    assert course_client(server.port, put_then_get) == response(201, "Created")
    assert stop(server, site) == [*COURSE_LOG, "GET,/a.txt,200,1", "PUT,/c.txt,201,2"]


# -- A real browser ---------------------------------------------------------------------------

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>asrv interop</title></head>
<body>
<p id="status">running</p>
<script>
"use strict";
const steps = [];
async function call(method, name, id, body) {
  const init = {method, cache: "no-store", headers: {"Request-Id": String(id)}};
  if (body !== undefined) {
    init.body = body;
  }
  const answer = await fetch("/" + name, init);
  const text = await answer.text();
  return `${method} /${name} ${answer.status} ${JSON.stringify(text)}`;
}
(async () => {
  try {
    steps.push(await call("PUT", "b1.txt", 1, "from the browser\\n"));
    steps.push(await call("GET", "b1.txt", 2));
    steps.push(await call("GET", "missing.txt", 3));
    steps.push(await call("PUT", "b1.txt", 4, "replaced\\n"));
    steps.push(await call("GET", "b1.txt", 5));
    const together = await Promise.all([6, 7, 8, 9].map((id) => call("GET", "b1.txt", id)));
    steps.push(...together);
  } catch (error) {
    steps.push("error " + error);
  }
  await fetch("/result.txt", {method: "PUT", body: steps.join("\\n") + "\\n",
                              headers: {"Request-Id": "10"}});
  document.getElementById("status").textContent = "done";
})();
</script>
</body>
</html>
"""

BROWSER_RESULT = (
    'PUT /b1.txt 201 "Created\\n"\n'
    'GET /b1.txt 200 "from the browser\\n"\n'
    'GET /missing.txt 404 "Not Found\\n"\n'
    'PUT /b1.txt 200 "OK\\n"\n' + 'GET /b1.txt 200 "replaced\\n"\n' * 5
)


@pytest.fixture
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
    return CHROMIUM


@dataclass
class Browser:
    popen: subprocess.Popen[bytes]
    output: Path
    """Chromium's standard output and error."""

    def tail(self) -> str:
        return self.output.read_text(errors="replace")[-2000:]


@pytest.fixture
def browser(chromium_path: Path, tmp_path: Path) -> Iterator[Callable[[str], Browser]]:
    """Start headless Chromium on a URL; it is ended by its process group (its own PID)."""
    started: list[Browser] = []

    def open_page(url: str) -> Browser:
        argv = [
            str(chromium_path),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-proxy-server",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            url,
        ]
        output = tmp_path / f"chromium-{len(started)}.log"
        with output.open("wb") as sink:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, start_new_session=True
            )
        started.append(Browser(popen, output))
        return started[-1]

    yield open_page
    for browser in started:
        end_process_group(browser.popen)


def end_process_group(popen: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group the browser leads (its helper processes too), SIGKILL if any
    remain after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if popen.poll() is not None and not group_alive(popen.pid):
                return
            time.sleep(0.05)
    popen.wait(10)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_headless_chromium_fetch(
    site: Site, spawn_server: Spawn, browser: Callable[[str], Browser]
) -> None:
    """Chromium loads a page from asrv whose script PUTs and GETs with fetch(), then PUTs
    what it saw as result.txt."""
    (site.root / "index.html").write_text(PAGE)
    server = start(spawn_server)
    chromium = browser(f"http://{HOST}:{server.port}/index.html")

    def done() -> bool:
        text = site.log.read_text() if site.log.exists() else ""
        lines = text.split("\n")[:-1]  # whole lines only: the last may be being written
        page = [line for line in lines if line.startswith("GET,/index.html,")]
        assert page in ([], ["GET,/index.html,200,0"]), page
        return any(line.startswith("PUT,/result.txt,") for line in lines)

    deadline = time.monotonic() + 60
    while not done():
        assert chromium.popen.poll() is None, (chromium.popen.returncode, chromium.tail())
        assert time.monotonic() < deadline, ("no result within 60 s", chromium.tail())
        time.sleep(0.1)
    end_process_group(chromium.popen)
    log = [line for line in stop(server, site) if not line.startswith("GET,/favicon.ico,")]
    assert (site.root / "result.txt").read_text() == BROWSER_RESULT
    assert log[:6] == [
        "GET,/index.html,200,0",
        "PUT,/b1.txt,201,1",
        "GET,/b1.txt,200,2",
        "GET,/missing.txt,404,3",
        "PUT,/b1.txt,200,4",
        "GET,/b1.txt,200,5",
    ]
    assert sorted(log[6:10]) == [f"GET,/b1.txt,200,{rid}" for rid in (6, 7, 8, 9)]
    assert log[10:] == ["PUT,/result.txt,201,10"]
