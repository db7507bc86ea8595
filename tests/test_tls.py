"""HTTPS (`--tls-cert`, `--tls-key`): every guarantee over TLS, on both loops, against a
certificate the tests make with openssl: exact responses and log lines, persistent
connections, large files (copied, as sendfile cannot encrypt) in bounded memory, exactly
N + 1 threads, and clients that stall in the handshake or do not speak TLS at all."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import HOST, Process, Site

THREADS = 3


@pytest.fixture(params=["uvloop", "asyncio"])
def tls_server(
    request: pytest.FixtureRequest,
    certificate: tuple[Path, Path],
    spawn_server: Callable[..., Process],
) -> Process:
    cert, key = certificate
    server = spawn_server(
        "-t", str(THREADS), "--loop", request.param, "--timeout", "2",
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    assert f"listening on https://{HOST}:" in server.first_line
    return server


def client_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def test_requests_on_one_connection(
    site: Site, tls_server: Process, certificate: tuple[Path, Path]
) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)  # past sendfile's size: copied, in pieces
    (site.root / "big").write_bytes(big)
    conn = http.client.HTTPSConnection(
        HOST, tls_server.port, context=client_context(certificate), timeout=30
    )
    try:
        conn.request("PUT", "/a", b"over tls", {"Request-Id": "1"})
        put = conn.getresponse()
        assert (put.status, put.read(), put.getheaders()) == (
            201,
            b"Created\n",
            [("Content-Length", "8")],
        )
        conn.request("GET", "/a", headers={"Request-Id": "2"})
        get = conn.getresponse()
        assert (get.status, get.read()) == (200, b"over tls")
        conn.request("GET", "/big", headers={"Request-Id": "3"})
        whole = conn.getresponse()
        assert whole.read() == big
        conn.request("GET", "/big", headers={"Request-Id": "4", "Range": "bytes=1000000-"})
        part = conn.getresponse()
        assert (part.status, part.read()) == (206, big[1000000:])
        conn.request("HEAD", "/big", headers={"Request-Id": "5"})
        head = conn.getresponse()
        assert (head.status, head.read(), head.getheader("Content-Length")) == (
            200,
            b"",
            str(len(big)),
        )
        conn.request("DELETE", "/a", headers={"Request-Id": "6"})
        assert conn.getresponse().read() == b"OK\n"
    finally:
        conn.close()
    assert tls_server.threads() == THREADS + 1
    assert tls_server.stop() == 0
    assert site.log_lines() == [
        "PUT,/a,201,1",
        "GET,/a,200,2",
        "GET,/big,200,3",
        "GET,/big,206,4",
        "HEAD,/big,200,5",
        "DELETE,/a,200,6",
    ]


def test_curl_with_the_certificate(
    site: Site, tls_server: Process, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed (the CI script installs it)")
    (tmp_path / "up").write_bytes(b"uploaded over tls\n")
    base = f"https://{HOST}:{tls_server.port}"
    put = subprocess.run(
        [curl, "-q", "-sS", "--cacert", str(certificate[0]), "-T", str(tmp_path / "up"),
         f"{base}/up", f"{base}/up"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert (put.returncode, put.stdout) == (0, "Created\nuploaded over tls\n"), put.stderr
    untrusted = subprocess.run(
        [curl, "-q", "-sS", f"{base}/up"], capture_output=True, text=True, timeout=60, check=False
    )
    assert untrusted.returncode == 60  # the certificate is not trusted without --cacert
    assert tls_server.stop() == 0
    assert site.log_lines() == ["PUT,/up,201,0", "GET,/up,200,0"]


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_closing_response_ends_the_connection_at_once(
    loop: str,
    site: Site,
    certificate: tuple[Path, Path],
    spawn_server: Callable[..., Process],
    tmp_path: Path,
) -> None:
    """TLS has no half-close: after a response that ends the connection, with every byte
    of the request read, the server sends close_notify at once (a client reading to the end
    is not kept for --timeout); a client still sending a body the server will not read gets
    the whole response, not a reset."""
    (site.root / "a").write_bytes(b"A\n")
    tokens = tmp_path / "writers"
    tokens.write_text("tls-writer-token\n")
    tokens.chmod(0o600)
    cert, key = certificate
    server = spawn_server(
        "--loop", loop, "--timeout", "60", "--write-tokens", str(tokens),
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip

    def connect() -> ssl.SSLSocket:
        raw = socket.create_connection((HOST, server.port), timeout=30)
        return client_context(certificate).wrap_socket(raw, server_hostname=HOST)

    def to_the_end(sock: ssl.SSLSocket) -> bytes:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)

    started = time.monotonic()
    for request in (b"GET /a HTTP/1.0\r\n\r\n", b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n"):
        with connect() as sock:
            sock.sendall(request)
            assert to_the_end(sock).endswith(b"\r\n\r\nA\n")
    assert time.monotonic() - started < 20  # not the 60 s of --timeout

    async def refused_while_sending() -> bytes:
        # One thread, as an SSL connection cannot be read and written from two at once.
        reader, writer = await asyncio.open_connection(
            HOST, server.port, ssl=client_context(certificate), server_hostname=HOST
        )
        writer.write(b"PUT /b HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")

        async def pump() -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"x" * 65536)
                    await writer.drain()

        pumping = asyncio.create_task(pump())
        answer = b""
        try:
            # As a client does: it reads the response while it sends, then stops.
            while not answer.endswith(b"\r\n\r\nUnauthorized\n"):
                chunk = await asyncio.wait_for(reader.read(65536), 30)
                assert chunk, f"the connection ended after {answer!r}"
                answer += chunk
        finally:
            pumping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pumping
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 10)
        return answer

    for _ in range(5):
        answer = asyncio.run(refused_while_sending())
        assert answer.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert time.monotonic() - started < 40
    assert server.stop() == 0
    assert site.log_lines() == ["GET,/a,200,0"] * 2 + ["PUT,/b,401,0"] * 5
    assert not (site.root / "b").exists()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_stop_delivers_the_whole_of_a_closing_response_to_a_slow_reader(
    tls: bool,
    loop: str,
    site: Site,
    certificate: tuple[Path, Path],
    spawn_server: Callable[..., Process],
) -> None:
    """SIGTERM while a client slowly reads the last response of its connection: the server
    stops only once the end of it (and, under TLS, close_notify) has left its buffers."""
    body = os.urandom(8 << 20)
    (site.root / "big").write_bytes(body)
    cert, key = certificate
    options = ["--tls-cert", str(cert), "--tls-key", str(key)] if tls else []
    server = spawn_server("--loop", loop, "--timeout", "60", *options)
    raw = socket.create_connection((HOST, server.port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock = client_context(certificate).wrap_socket(raw, server_hostname=HOST) if tls else raw
    with sock:
        sock.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        received = bytearray()
        while len(received) < 1 << 20:
            received += sock.recv(65536)
        server.popen.send_signal(signal.SIGTERM)
        while chunk := sock.recv(65536):
            received += chunk
            time.sleep(0.001)  # slower than the server writes
    head, _, got = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(got) == len(body) and got == body
    assert server.popen.wait(30) == 0  # stopped by the one SIGTERM, once it was all sent
    assert site.log_lines() == ["GET,/big,200,0"]


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_a_slow_but_steady_reader_is_not_taken_for_a_stalled_one(
    tls: bool,
    site: Site,
    certificate: tuple[Path, Path],
    spawn_server: Callable[..., Process],
) -> None:
    """--timeout 1 and a client that takes 100 KiB every 0.1 s of a 6 MB response: the
    kernel reports the socket writable only once a third of its (megabytes of) buffer is
    free, which takes longer than the timeout, but the client takes bytes all along."""
    body = os.urandom(6_000_000)
    (site.root / "big").write_bytes(body)
    cert, key = certificate
    options = ["--tls-cert", str(cert), "--tls-key", str(key)] if tls else []
    server = spawn_server("--timeout", "1", *options)
    raw = socket.create_connection((HOST, server.port), timeout=30)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock = client_context(certificate).wrap_socket(raw, server_hostname=HOST) if tls else raw
    received = bytearray()
    with sock:
        sock.sendall(b"GET /big HTTP/1.1\r\n\r\n")
        while not received.endswith(body[-100:]):
            tick = len(received) + 100 * 1024  # about 1 MB/s: 100 KiB, then a pause
            while len(received) < tick and not received.endswith(body[-100:]):
                chunk = sock.recv(100 * 1024)
                assert chunk, f"the connection ended after {len(received)} bytes"
                received += chunk
            time.sleep(0.1)
    got = bytes(received).partition(b"\r\n\r\n")[2]
    assert len(got) == len(body) and got == body, f"{len(got)} of {len(body)} bytes"
    assert server.stop() == 0
    assert site.log_lines() == ["GET,/big,200,0"]


def test_a_stalled_handshake_and_plain_http_are_dropped(site: Site, tls_server: Process) -> None:
    stalled = socket.create_connection((HOST, tls_server.port))
    plain = socket.create_connection((HOST, tls_server.port))
    plain.sendall(b"GET /a HTTP/1.1\r\n\r\n")
    started = time.monotonic()
    for sock in (stalled, plain):
        sock.settimeout(20)
        try:
            while sock.recv(4096):  # a TLS alert, maybe, then the end
                pass
        except ConnectionResetError:
            pass
        sock.close()
    assert time.monotonic() - started < 15  # the handshake timeout is --timeout (2 s)
    assert tls_server.threads() == THREADS + 1
    assert tls_server.stop() == 0
    assert site.log_lines() == []  # no request line ever arrived


def test_a_1_gib_put_and_get_over_tls_in_bounded_memory(
    site: Site, tls_server: Process, certificate: tuple[Path, Path]
) -> None:
    """Neither direction can use sendfile or splice under TLS: both go through the workers in
    bounded pieces, so a 1 GiB file costs no more memory than a small one."""
    piece = os.urandom(1 << 20)
    pieces = 1024
    conn = http.client.HTTPSConnection(
        HOST, tls_server.port, context=client_context(certificate), timeout=120, blocksize=1 << 20
    )
    try:
        conn.request(
            "PUT", "/huge", body=(piece for _ in range(pieces)),
            headers={"Content-Length": str(len(piece) * pieces), "Request-Id": "up"},
        )  # fmt: skip
        stored = conn.getresponse()
        assert (stored.status, stored.read()) == (201, b"Created\n")
        conn.request("GET", "/huge", headers={"Request-Id": "down"})
        answer = conn.getresponse()
        assert answer.status == 200
        received = 0
        while chunk := answer.read(len(piece)):
            assert chunk == piece, f"bytes {received}..{received + len(chunk)} differ"
            received += len(chunk)
    finally:
        conn.close()
    assert received == len(piece) * pieces
    peak = tls_server.peak_rss_kib()
    assert tls_server.threads() == THREADS + 1
    assert tls_server.stop() == 0
    assert peak < 100 * 1024, f"peak RSS {peak} KiB for a 1 GiB PUT and GET"
    assert site.log_lines() == ["PUT,/huge,201,up", "GET,/huge,200,down"]


def test_unusable_tls_options_stop_the_start(
    site: Site, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate

    def start(*options: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "asrv", "--root", str(site.root), "--log", str(site.log)]
        return subprocess.run(
            [*argv, *options, "0"], capture_output=True, text=True, timeout=30, check=False
        )

    alone = start("--tls-cert", str(cert))
    assert alone.returncode == 2 and "go together" in alone.stderr
    swapped = start("--tls-cert", str(key), "--tls-key", str(cert))
    missing = start("--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(key))
    fifo = tmp_path / "key-fifo"
    os.mkfifo(fifo)  # reading it would wait for a writer forever
    not_a_file = start("--tls-cert", str(cert), "--tls-key", str(fifo))
    encrypted_key = tmp_path / "encrypted.pem"
    subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-aes256", "-passout", "pass:secret",
         "-out", str(encrypted_key)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    encrypted = start("--tls-cert", str(cert), "--tls-key", str(encrypted_key))
    for refused in (swapped, missing, not_a_file, encrypted):
        assert refused.returncode == 1
        assert refused.stderr.startswith("asrv: cannot use TLS certificate ")
        assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "not a regular file" in not_a_file.stderr
    assert "the key is encrypted" in encrypted.stderr


def test_a_tls_key_open_to_other_users_draws_a_warning(
    site: Site, certificate: tuple[Path, Path], spawn_server: Callable[..., Process], tmp_path: Path
) -> None:
    cert, key = certificate
    shared_key = tmp_path / "shared-key.pem"
    shared_key.write_bytes(key.read_bytes())
    shared_key.chmod(0o644)
    server = spawn_server("--tls-cert", str(cert), "--tls-key", str(shared_key))
    assert server.stop() == 0
    (warning,) = server.earlier_lines
    assert warning.startswith(f"asrv: warning: TLS key {shared_key} is open to other users")
