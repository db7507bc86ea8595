"""Shared fixtures: real servers on 127.0.0.1 over real temporary directories.

`running_server` runs `asrv.Server` inside the test's own event loop; `spawn_server` starts
`python -m asrv` as a separate process, for what only a process can show (its thread count,
exit status, signals, standard streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import pytest_asyncio
import uvloop

from asrv import Config, Server
from asrv.cli import build_parser

HOST = "127.0.0.1"


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every in-process test runs on both loops a user may choose."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@dataclass
class Site:
    """A root directory and the audit log beside it."""

    root: Path
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines()


@pytest.fixture
def site(tmp_path: Path) -> Site:
    root = tmp_path / "root"
    root.mkdir()
    return Site(root, tmp_path / "audit.log")


ServerFactory = Callable[..., AbstractAsyncContextManager[Server]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A module that sets `BOTH_MODES = True` runs each test that starts a server twice:
    in the default mode and with the course's (`Config.course`)."""
    if "course_mode" in metafunc.fixturenames and getattr(metafunc.module, "BOTH_MODES", False):
        metafunc.parametrize("course_mode", [False, True], ids=["default", "course"], indirect=True)


@pytest.fixture
def course_mode(request: pytest.FixtureRequest) -> bool:
    """Whether `running_server` starts servers in the course's mode (see BOTH_MODES)."""
    return bool(getattr(request, "param", False))


@pytest_asyncio.fixture
async def running_server(site: Site, course_mode: bool) -> AsyncIterator[ServerFactory]:
    """A factory: `async with running_server(threads=2) as server:` over `site`."""

    @contextlib.asynccontextmanager
    async def start(**options: Any) -> AsyncIterator[Server]:
        options.setdefault("course", course_mode)
        options.setdefault("root", site.root)
        options.setdefault("log", str(site.log))
        options.setdefault("host", HOST)
        options.setdefault("port", 0)
        async with Server(Config(**options)) as server:
            yield server

    yield start


async def exchange(port: int, data: bytes, *, shutdown: bool = True) -> bytes:
    """Send `data` on a new connection and return everything the server sends back.

    The course's client shape: send, half-close (unless `shutdown=False`), read to EOF.
    Connections persist by default, so without the half-close the server only closes once
    the connection has been idle for its timeout.
    """
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        if shutdown:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()


async def get(port: int, name: str, request_id: int | str | None = None) -> bytes:
    rid = f"Request-Id: {request_id}\r\n" if request_id is not None else ""
    return await exchange(port, f"GET /{name} HTTP/1.1\r\n{rid}\r\n".encode())


async def put(port: int, name: str, body: bytes, request_id: int | str | None = None) -> bytes:
    rid = f"Request-Id: {request_id}\r\n" if request_id is not None else ""
    head = f"PUT /{name} HTTP/1.1\r\nContent-Length: {len(body)}\r\n{rid}\r\n".encode()
    return await exchange(port, head + body)


def response(code: int, phrase: str, body: bytes | None = None, *, close: bool = False) -> bytes:
    """The exact bytes of a response (default body: the phrase and a newline)."""
    if body is None:
        body = f"{phrase}\n".encode()
    connection = "Connection: close\r\n" if close else ""
    head = f"HTTP/1.1 {code} {phrase}\r\nContent-Length: {len(body)}\r\n{connection}\r\n"
    return head.encode() + body


def split_response(data: bytes) -> tuple[int, bytes]:
    """(status code, body) of one whole response; fails if the framing is off."""
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.fullmatch(rb"HTTP/1\.1 (\d{3}) [A-Za-z ]+\r\nContent-Length: (\d+)", head)
    assert match is not None, data[:200]
    assert len(body) == int(match[2]), (len(body), head)
    return int(match[1]), body


class _Drain:
    """Reads a child's pipe to the end in a thread, so a chatty child never blocks on it
    (nothing to read when the stream is not a pipe of ours)."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        self._chunks: list[bytes] = []
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes] | None) -> None:
        while stream is not None and (chunk := stream.read1(65536)):
            self._chunks.append(chunk)

    def text(self, timeout: float = 30) -> str:
        """Everything the child wrote after its start-up lines (call once it has exited)."""
        self._thread.join(timeout)
        return b"".join(self._chunks).decode()


@dataclass
class Process:
    popen: subprocess.Popen[bytes]
    port: int
    first_line: str
    earlier_lines: list[str]
    stdout: _Drain
    stderr: _Drain

    @property
    def pid(self) -> int:
        return self.popen.pid

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        """Resident memory now, in KiB."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]

    def cpu_ticks(self) -> int:
        """User plus system CPU time used so far, in clock ticks (1/100 s)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    def peak_rss_kib(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status)[1])  # type: ignore[index]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
        return self.popen.wait(timeout)


@pytest.fixture
def spawn_server(site: Site) -> Iterator[Callable[..., Process]]:
    """Start `python -m asrv` on a free port; every process is ended by its PID."""
    started: list[subprocess.Popen[bytes]] = []

    def spawn(*args: str, diagnostics: str = "stderr", **popen: Any) -> Process:
        argv = [sys.executable, "-m", "asrv", "--host", HOST, "--root", str(site.root)]
        if "-l" not in args and "--log" not in args:
            argv += ["--log", str(site.log)]
        argv += [*args]
        # Port 0 unless the arguments name one (the 4 of "-t 4" is no port).
        parser = build_parser()
        parser.set_defaults(port=None)
        if parser.parse_args(list(args)).port is None:
            argv.append("0")
        # Standard streams are pipes unless the caller gives one (say, the log's file as
        # standard error, as in `python -m asrv -l - 2>>audit.log`).
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | popen
        process = subprocess.Popen(argv, **streams)
        started.append(process)
        stream = process.stderr if diagnostics == "stderr" else process.stdout
        assert stream is not None
        seen = []
        for _ in range(3):  # a recovery report may come before the listening line
            seen.append(stream.readline().decode())
            match = re.search(r"listening on https?://[^ ]+:(\d+) ", seen[-1])
            if match is not None:
                return Process(
                    process,
                    int(match[1]),
                    seen[-1],
                    seen[:-1],
                    _Drain(process.stdout),
                    _Drain(process.stderr),
                )
        raise AssertionError((seen, process.poll()))

    yield spawn
    for popen in started:
        if popen.poll() is None:
            popen.kill()
        popen.wait(30)
        for stream in (popen.stdout, popen.stderr):
            if stream is not None:
                stream.close()


def wait_until(predicate: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (the CI script installs it)")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key
