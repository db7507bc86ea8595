"""`python -m asrv` as a process: exit codes, streams, signals and its exact thread count."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import HOST, Process, Site, exchange, get, put, response, split_response


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asrv", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "port",
    [
        "65536",
        "-1",
        "http",
        "80a",
        "99999999999999999999",
        "\u00b2",
        "\uff18\uff10\uff18\uff10",
        "\u0668\u0660",
        "8080\n",
        " 80",
    ],
)
def test_invalid_port(port: str, tmp_path: Path) -> None:
    done = run_cli("--root", str(tmp_path), "--", port)
    assert (done.returncode, done.stderr, done.stdout) == (1, "Invalid Port\n", "")


def test_port_in_use_is_invalid(tmp_path: Path) -> None:
    with socket.create_server((HOST, 0)) as taken:
        port = taken.getsockname()[1]
        done = run_cli("--root", str(tmp_path), "--host", HOST, str(port))
    # The contract's line, alone on its own line, then why.
    assert (done.returncode, done.stderr) == (1, f"Invalid Port\nasrv: port {port} is in use\n")


def test_unusable_root(tmp_path: Path) -> None:
    done = run_cli("--root", str(tmp_path / "missing"), "--host", HOST, "0")
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and "missing" in done.stderr


@pytest.mark.parametrize("threads", ["0", "-3", "1025", "99999999999999999999999"])
def test_invalid_thread_count(threads: str, tmp_path: Path) -> None:
    done = run_cli("--root", str(tmp_path), "-t", threads, "0")
    assert done.returncode == 2
    assert done.stderr == "asrv: threads must be from 1 to 1024\n"  # never a traceback


def test_unusable_log(tmp_path: Path) -> None:
    done = run_cli("--root", str(tmp_path), "--log", str(tmp_path / "no" / "log"), "0")
    assert done.returncode == 4
    assert done.stderr.startswith("asrv: cannot open log ") and len(done.stderr.splitlines()) == 1


def test_listens_within_one_second(site: Site, spawn_server: Callable[..., Process]) -> None:
    started = time.monotonic()
    server = spawn_server()
    assert time.monotonic() - started < 1.0
    with socket.create_connection((HOST, server.port), timeout=5):
        pass


@pytest.mark.parametrize("threads", [1, 2, 4, 8])
def test_exactly_n_plus_one_threads(
    threads: int, site: Site, spawn_server: Callable[..., Process]
) -> None:
    (site.root / "a").write_bytes(b"a" * 100_000)
    server = spawn_server("-t", str(threads))
    assert server.threads() == threads + 1

    async def load() -> list[int]:
        counts = []

        async def client(i: int) -> None:
            for j in range(5):
                if (i + j) % 3 == 0:
                    await put(server.port, f"p{i % 4}", b"x" * (i * 1000))
                else:
                    code, _ = split_response(await get(server.port, "a"))
                    assert code == 200
                counts.append(server.threads())

        await asyncio.gather(*(client(i) for i in range(32)))
        return counts

    counts = asyncio.run(load())
    assert set(counts) == {threads + 1}
    assert server.threads() == threads + 1
    assert server.stop() == 0


def test_sigterm_and_sigint_exit_cleanly(site: Site, spawn_server: Callable[..., Process]) -> None:
    expected = {signal.SIGTERM: response(201, "Created"), signal.SIGINT: response(200, "OK")}
    for sig, answer in expected.items():
        server = spawn_server()
        assert asyncio.run(put(server.port, "f", b"data", sig.name)) == answer
        assert server.stop(sig) == 0
    assert site.log_lines() == ["PUT,/f,201,SIGTERM", "PUT,/f,200,SIGINT"]


def test_sigterm_finishes_request_in_flight(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    server = spawn_server("--timeout", "10")

    async def upload_across_shutdown() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"PUT /f HTTP/1.1\r\nContent-Length: 6\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(0.3)
        server.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        writer.write(b"def")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    assert asyncio.run(upload_across_shutdown()) == response(201, "Created")
    assert server.popen.wait(30) == 0
    assert (site.root / "f").read_bytes() == b"abcdef"
    assert site.log_lines() == ["PUT,/f,201,0"]


def test_log_on_stderr_owns_it(site: Site, spawn_server: Callable[..., Process]) -> None:
    (site.root / "a").write_bytes(b"A")
    server = spawn_server("-l", "-", diagnostics="stdout")
    assert "listening on" in server.first_line
    assert asyncio.run(get(server.port, "a", 1)) == response(200, "OK", b"A")
    assert asyncio.run(exchange(server.port, b"nonsense\r\n\r\n")) == response(400, "Bad Request")
    assert asyncio.run(get(server.port, "zz", 2)) == response(404, "Not Found")
    assert server.stop() == 0
    assert server.stderr.text() == "GET,/a,200,1\nGET,/zz,404,2\n"


def test_sigterm_right_after_a_request_was_sent(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    (site.root / "a").write_bytes(b"A")
    for round_ in range(5):
        server = spawn_server("-t", "2")
        with socket.create_connection((HOST, server.port)) as client:
            client.sendall(b"GET /a HTTP/1.1\r\nRequest-Id: %d\r\n\r\n" % round_)
            server.popen.send_signal(signal.SIGTERM)
            client.settimeout(20)
            received = b""
            while chunk := client.recv(65536):
                received += chunk
        assert received == response(200, "OK", b"A")
        assert server.popen.wait(30) == 0
    assert site.log_lines() == [f"GET,/a,200,{n}" for n in range(5)]
