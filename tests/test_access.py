"""Who may read and write (SPEC §5.4): bearer tokens from files or the application,
read-only mode, and the loopback default; over real sockets, against a real root, with
every refusal in the audit log and no token anywhere but in the requests."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from asrv import Config, Tokens
from asrv.access import Access, TokenError, read_token_file
from asrv.http import parse_head
from tests.conftest import HOST, Process, ServerFactory, Site, exchange, response, wait_until
from tests.http_client import Connection, request

WRITER = "w-7f3a9c1e-writer-token"
READER = "r-51bd0e77-reader-token"
UNAUTHORIZED = (
    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\nWWW-Authenticate: Bearer\r\n\r\n"
    b"Unauthorized\n"
)


def token_file(path: Path, *tokens: str, mode: int = 0o600) -> Path:
    path.write_text("# who may write\n\n" + "".join(f"{token}\n" for token in tokens))
    path.chmod(mode)
    return path


def bearer(token: str) -> str:
    return f"Bearer {token}"


# The policy on its own.


def test_token_files_hold_tokens_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# comment\n\n  {WRITER}  \nabc.DEF_ghi~+/=\n".replace("_", "-"))
    assert len(read_token_file(path)) == 2


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (f"{WRITER}\nnot a token\n", "line 2: not a bearer token"),
        ("caf\u00e9\n", "not ASCII text"),
        # Lines end at LF only: a form feed does not make one line two tokens.
        (f"{WRITER}\r\n{READER}\f{WRITER}\n", "line 2: not a bearer token"),
    ],
)
def test_a_bad_token_file_is_named_without_its_tokens(
    tmp_path: Path, content: str, why: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TokenError, match=why) as refused:
        read_token_file(path)
    assert (
        WRITER not in str(refused.value) and "not a token" not in str(refused.value).split(":")[0]
    )


def test_a_missing_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match="cannot read token file"):
        Access(tmp_path / "missing")


@pytest.mark.parametrize(
    ("writes", "authorization", "allowed"),
    [
        (True, f"Bearer {WRITER}", True),
        (True, f"bearer  {WRITER}", True),  # the scheme is case-insensitive
        (True, f"Bearer {READER}", False),  # a read token does not write
        (True, "Bearer nope", False),
        (True, f"Basic {WRITER}", False),
        (True, WRITER, False),
        (True, None, False),
        (False, f"Bearer {READER}", True),
        (False, f"Bearer {WRITER}", True),  # a write token reads too
        (False, "Bearer nope", False),
        (False, None, False),
    ],
)
def test_tokens_decide(writes: bool, authorization: str | None, allowed: bool) -> None:
    access = Access(Tokens([WRITER]), Tokens([READER]))
    assert access.allows(writes, authorization) is allowed


def test_without_tokens_anyone_may_read_and_write() -> None:
    access = Access()
    assert access.allows(True, None) and access.allows(False, None)
    reads_open = Access(Tokens([WRITER]))
    assert reads_open.allows(False, None) and not reads_open.allows(True, None)


def test_warnings_about_open_files_and_open_writes(tmp_path: Path) -> None:
    private = token_file(tmp_path / "private", WRITER)
    shared = token_file(tmp_path / "shared", READER, mode=0o644)
    assert Access(private).warnings() == []
    warnings = Access(None, shared).warnings()
    assert any("open to other users" in line and "chmod 600" in line for line in warnings)
    assert any("anyone may write" in line for line in warnings)
    assert all(READER not in line for line in warnings)


def test_reload_takes_new_tokens_and_keeps_old_ones_it_cannot_read(tmp_path: Path) -> None:
    path = token_file(tmp_path / "writers", WRITER)
    access = Access(path)
    token_file(path, "second-token")
    assert access.reload() == []
    assert access.allows(True, "Bearer second-token") and not access.allows(
        True, f"Bearer {WRITER}"
    )
    path.unlink()
    problems = access.reload()
    assert len(problems) == 1 and "kept the old write tokens" in problems[0]
    assert access.allows(True, "Bearer second-token")


def test_tokens_passed_by_the_application_are_checked() -> None:
    with pytest.raises(ValueError, match="b64token"):
        Tokens(["has space"])
    with pytest.raises(TypeError, match="not one string"):
        Tokens(WRITER)  # would otherwise be a token per character
    with pytest.raises(ValueError, match=r"pathlib\.Path or asrv\.Tokens") as refused:
        Config(write_tokens=WRITER)  # type: ignore[arg-type]
    assert WRITER not in str(refused.value)
    with pytest.raises(ValueError, match="course"):
        Config(course=True, write_tokens=Tokens([WRITER]))
    assert Config(read_tokens=Path("r.tokens")).read_tokens == Path("r.tokens")


def test_tokens_do_not_show_in_a_printed_config_or_request() -> None:
    config = Config(write_tokens=Tokens([WRITER, READER]))
    assert WRITER not in repr(config) and "Tokens(<2 tokens>)" in repr(config)
    head = f"PUT /a HTTP/1.1\r\nAuthorization: Bearer {WRITER}\r\nContent-Length: 0\r\n\r\n"
    parsed = parse_head(head.encode())
    assert parsed.authorization == f"Bearer {WRITER}" and WRITER not in repr(parsed)


def test_a_token_file_that_is_no_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(TokenError, match="not a regular file"):
        read_token_file(fifo)  # without waiting for a writer that never comes


def test_an_empty_token_file_draws_a_warning(tmp_path: Path) -> None:
    warnings = Access(token_file(tmp_path / "writers")).warnings()
    assert warnings == ["asrv: warning: no write tokens: nobody may write"]


def test_the_default_host_is_loopback() -> None:
    assert Config().host == "127.0.0.1"


# Over sockets.


@pytest.mark.asyncio
async def test_writes_need_a_write_token(site: Site, running_server: ServerFactory) -> None:
    (site.root / "a").write_bytes(b"old")
    async with running_server(write_tokens=Tokens([WRITER]), read_tokens=Tokens([READER])) as s:
        async with Connection(s.port) as conn:
            missing = await conn.request("PUT", "/a", b"x", request_id="1")
        async with Connection(s.port) as conn:
            wrong = await conn.request(
                "PUT", "/a", b"x", request_id="2", authorization=bearer("nope")
            )
        async with Connection(s.port) as conn:
            reader = await conn.request(
                "DELETE", "/a", request_id="3", authorization=bearer(READER)
            )
            anonymous = await conn.request("GET", "/a", request_id="4")
            read = await conn.request("GET", "/a", request_id="5", authorization=bearer(READER))
            head = await conn.request("HEAD", "/a", request_id="6", authorization=bearer(WRITER))
            written = await conn.request(
                "PUT", "/a", b"new", request_id="7", authorization=bearer(WRITER)
            )
            deleted = await conn.request(
                "DELETE", "/a", request_id="8", authorization=bearer(WRITER)
            )
    for refused in (missing, wrong, reader, anonymous):
        assert refused.head + b"\r\n\r\n" + refused.body == UNAUTHORIZED
    assert (read.status, read.body) == (200, b"old")
    assert read.head + b"\r\n\r\n" + read.body == response(200, "OK", b"old")
    assert (head.status, written.status, deleted.status) == (200, 200, 200)
    assert not (site.root / "a").exists()
    assert site.log_lines() == [
        "PUT,/a,401,1",
        "PUT,/a,401,2",
        "DELETE,/a,401,3",
        "GET,/a,401,4",
        "GET,/a,200,5",
        "HEAD,/a,200,6",
        "PUT,/a,200,7",
        "DELETE,/a,200,8",
    ]


@pytest.mark.asyncio
async def test_a_refused_head_has_no_body_and_keeps_the_connection(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"A")
    async with (
        running_server(read_tokens=Tokens([READER])) as server,
        Connection(server.port) as conn,
    ):
        refused = await conn.request("HEAD", "/a")
        allowed = await conn.request("GET", "/a", authorization=bearer(READER))
    assert refused.head + b"\r\n\r\n" == UNAUTHORIZED.removesuffix(b"Unauthorized\n")
    assert (allowed.status, allowed.body) == (200, b"A")


@pytest.mark.asyncio
async def test_a_refused_put_never_reads_its_body(
    site: Site, running_server: ServerFactory
) -> None:
    async with running_server(write_tokens=Tokens([WRITER])) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(
            b"PUT /big HTTP/1.1\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
        )
        # At once, without a 100 Continue, and the connection ends: its body was not read.
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer == UNAUTHORIZED
    assert list(site.root.iterdir()) == []
    assert site.log_lines() == ["PUT,/big,401,0"]


@pytest.mark.asyncio
async def test_read_only_refuses_writes_and_serves_reads(
    site: Site, running_server: ServerFactory
) -> None:
    (site.root / "a").write_bytes(b"kept")
    async with running_server(read_only=True) as server:
        async with Connection(server.port) as conn:
            delete = await conn.request("DELETE", "/a", request_id="1")
            get = await conn.request("GET", "/a", request_id="2")
        put = await exchange(
            server.port,
            b"PUT /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n"
            b"Request-Id: 3\r\n\r\n",
            shutdown=False,
        )
    assert delete.head + b"\r\n\r\n" + delete.body == response(403, "Forbidden")
    assert (get.status, get.body) == (200, b"kept")
    assert put == response(403, "Forbidden")  # no 100 Continue: the body is never read
    assert (site.root / "a").read_bytes() == b"kept"
    assert site.log_lines() == ["DELETE,/a,403,1", "GET,/a,200,2", "PUT,/a,403,3"]


def test_no_token_ever_reaches_the_log_or_the_diagnostics(
    site: Site, spawn_server: Callable[..., Process], tmp_path: Path
) -> None:
    secret = "zq9-distinctive-secret-0xC0FFEE"
    writers = token_file(tmp_path / "writers", secret, mode=0o644)  # draws a warning
    server = spawn_server("--write-tokens", str(writers))
    port = server.port

    async def attempts() -> None:
        for token in (secret, secret + "x", secret[:-1], "Bearer", ""):
            await request(port, "PUT", "/f", b"body", authorization=bearer(token))
        head = f"PUT /g HTTP/1.1\r\nAuthorization: {secret}\r\nContent-Length: 0\r\n\r\n"
        await exchange(port, head.encode())
        await exchange(
            port, f"DELETE /f HTTP/1.1\r\nAuthorization: Bearer {secret}\r\n\r\n".encode()
        )

    asyncio.run(attempts())
    token_file(writers, "other-token", "not a token")  # a reload that fails names a line
    os.kill(server.pid, signal.SIGHUP)
    assert server.stop() == 0
    diagnostics = "".join(server.earlier_lines) + server.first_line + server.stderr.text()
    diagnostics += server.stdout.text()
    assert "open to other users" in diagnostics and "line 4: not a bearer token" in diagnostics
    log = site.log.read_text()
    assert log.splitlines() == [
        "PUT,/f,201,0",
        *["PUT,/f,401,0"] * 4,
        "PUT,/g,401,0",
        "DELETE,/f,200,0",
    ]
    for text in (log, diagnostics):
        assert secret[:12] not in text and "other-token" not in text


def test_a_missing_token_file_stops_the_start(site: Site, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "asrv", "--root", str(site.root), "--log", str(site.log),
         "--write-tokens", str(tmp_path / "missing"), "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert (
        done.stderr.strip()
        == f"asrv: cannot read token file {tmp_path / 'missing'}: No such file or directory"
    )


def test_course_with_tokens_is_a_usage_error(site: Site, tmp_path: Path) -> None:
    writers = token_file(tmp_path / "writers", WRITER)
    done = subprocess.run(
        [sys.executable, "-m", "asrv", "--course", "--write-tokens", str(writers), "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "course" in done.stderr


def test_sighup_rereads_the_tokens_while_a_client_uploads(
    site: Site, spawn_server: Callable[..., Process], tmp_path: Path
) -> None:
    writers = token_file(tmp_path / "writers", "first-token")
    server = spawn_server("--write-tokens", str(writers), "--timeout", "30")
    # An upload authorized by the old token, half sent when the tokens change.
    body = b"u" * 100_000
    sock = socket.create_connection((HOST, server.port))
    sock.sendall(
        b"PUT /up HTTP/1.1\r\nAuthorization: Bearer first-token\r\nContent-Length: %d\r\n\r\n"
        % len(body)
        + body[:50_000]
    )
    token_file(writers, "second-token")
    os.kill(server.pid, signal.SIGHUP)

    async def status_with(token: str) -> int:
        return (
            await request(server.port, "DELETE", "/nothing", authorization=bearer(token))
        ).status

    # The signal is handled soon, not at once: wait until the old token stops working.
    assert wait_until(lambda: asyncio.run(status_with("first-token")) == 401, 10)
    assert asyncio.run(status_with("second-token")) == 404
    sock.sendall(body[50_000:])
    sock.shutdown(socket.SHUT_WR)
    answer = b""
    sock.settimeout(30)
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer == response(201, "Created")  # judged by the tokens of its arrival
    assert (site.root / "up").read_bytes() == body
    assert server.stop() == 0
    assert "PUT,/up,201,0" in site.log_lines()


def test_secrets_kept_in_the_root_are_never_served_replaced_or_deleted(
    site: Site, spawn_server: Callable[..., Process], certificate: tuple[Path, Path]
) -> None:
    """Token files, the TLS key and certificate, kept in the served root: 403 for every
    method and token, by name and by identity (another hard link), also after a token file
    was replaced by a new one and reloaded on SIGHUP."""
    writers = token_file(site.root / "writers.txt", WRITER)
    readers = token_file(site.root / "readers.txt", READER)
    cert, key = (site.root / "cert.pem", site.root / "key.pem")
    cert.write_bytes(certificate[0].read_bytes())
    key.write_bytes(certificate[1].read_bytes())
    os.link(key, site.root / "key-copy.pem")
    (site.root / "open.txt").write_text("anyone with a read token\n")
    server = spawn_server(
        "--write-tokens", str(writers), "--read-tokens", str(readers),
        "--tls-cert", str(cert), "--tls-key", str(key),
    )  # fmt: skip
    context = ssl.create_default_context(cafile=str(certificate[0]))

    def status(method: str, name: str, token: str, body: bytes | None = None) -> int:
        conn = http.client.HTTPSConnection(HOST, server.port, context=context, timeout=30)
        try:
            conn.request(method, f"/{name}", body=body, headers={"Authorization": bearer(token)})
            answer = conn.getresponse()
            answer.read()
            return answer.status
        finally:
            conn.close()

    secrets = ["writers.txt", "readers.txt", "cert.pem", "key.pem", "key-copy.pem"]
    assert [status("GET", name, WRITER) for name in secrets] == [403] * 5
    assert [status("HEAD", name, READER) for name in secrets] == [403] * 5
    assert [status("PUT", name, WRITER, b"planted\n") for name in secrets] == [403] * 5
    assert [status("DELETE", name, WRITER) for name in secrets] == [403] * 5
    assert status("GET", "open.txt", READER) == 200
    # A secret the server no longer needs, removed: its name is still refused.
    cert.unlink()
    assert [status(method, "cert.pem", WRITER) for method in ("GET", "HEAD", "PUT")] == [403] * 3
    # An editor's save: a new file under the old name, holding a new token.
    readers.unlink()
    token_file(readers, "r-new-reader-token")
    os.kill(server.pid, signal.SIGHUP)
    assert wait_until(lambda: status("GET", "open.txt", READER) == 401, 10)
    assert status("GET", "open.txt", "r-new-reader-token") == 200
    assert status("GET", "readers.txt", WRITER) == 403
    assert status("PUT", "readers.txt", WRITER, b"planted\n") == 403
    for _ in range(3):
        os.kill(server.pid, signal.SIGHUP)

    def files_held_in_the_root() -> list[str]:
        held = []
        for fd in os.listdir(f"/proc/{server.pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed meanwhile
                held.append(os.readlink(f"/proc/{server.pid}/fd/{fd}"))
        return sorted(link for link in held if link.startswith(f"{site.root.resolve()}/"))

    # Each secret held open once (its inode number cannot go to another file), the removed
    # certificate too (a hard link to it elsewhere would stay refused), and no pin of an
    # older set left behind: the replaced read-token file's is gone.
    root = site.root.resolve()
    live = ("key.pem", "readers.txt", "writers.txt")
    held = [f"{root}/cert.pem (deleted)", *(f"{root}/{name}" for name in live)]
    assert wait_until(lambda: files_held_in_the_root() == held, 10), files_held_in_the_root()
    assert server.stop() == 0
    assert readers.read_text().endswith("\nr-new-reader-token\n")
    assert key.read_bytes() == certificate[1].read_bytes()
    assert [line.rsplit(",", 2)[1] for line in site.log_lines()].count("403") == 25


def test_the_start_up_line_names_the_loopback_address(site: Site) -> None:
    # Not through spawn_server, which names its --host: the default is under test.
    process = subprocess.Popen(
        [sys.executable, "-m", "asrv", "--root", str(site.root), "--log", str(site.log), "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        line = process.stderr.readline().decode()
        assert "listening on http://127.0.0.1:" in line, line
    finally:
        process.terminate()
        assert process.wait(30) == 0
        if process.stderr is not None:
            process.stderr.close()
