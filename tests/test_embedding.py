"""asrv as a library: `Config`, `Server` and `serve` inside an application's own event loop.

Every async test runs once per event loop (see `pytest_asyncio_loop_factories` in conftest).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import asrv
from asrv import cli
from tests.conftest import HOST, Site, get, put, response

WORKER_PREFIX = "asrv-worker"


def worker_threads() -> list[str]:
    """Names of asrv's worker threads alive in this process."""
    return [t.name for t in threading.enumerate() if t.name.startswith(WORKER_PREFIX)]


def os_threads() -> int:
    """Every OS thread of this process, whoever started it."""
    return len(os.listdir("/proc/self/task"))


async def eventually(predicate: Callable[[], bool], within: float = 10) -> bool:
    """Poll `predicate` without blocking the loop (an exited thread leaves /proc a bit later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(HOST, port)
    except OSError:
        return True
    writer.close()
    return False


def config(site: Site, **options: Any) -> asrv.Config:
    options.setdefault("root", site.root)
    options.setdefault("log", str(site.log))
    options.setdefault("host", HOST)
    options.setdefault("port", 0)
    return asrv.Config(**options)


def make_site(base: Path, name: str) -> Site:
    root = base / name
    root.mkdir()
    return Site(root, base / f"{name}.log")


# Config: validation and defaults.


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": -1}, "^Invalid Port$"),
        ({"port": 65536}, "^Invalid Port$"),
        ({"port": "8080"}, "^Invalid Port$"),
        ({"port": True}, "^Invalid Port$"),
        ({"threads": 0}, "^threads must be from 1 to 1024$"),
        ({"threads": -4}, "^threads must be from 1 to 1024$"),
        ({"threads": 2.5}, "^threads must be an integer$"),
        ({"timeout": 0}, "^timeout must be"),
        ({"timeout": -1.5}, "^timeout must be"),
        ({"timeout": math.nan}, "^timeout must be"),
        ({"timeout": math.inf}, "^timeout must be"),
        ({"timeout": "5"}, "^timeout must be"),
        ({"host": "localhost"}, "^host must be a numeric address"),
        ({"host": "127.0.0.256"}, "^host must be a numeric address"),
        ({"host": ""}, "^host must be a numeric address"),
        ({"log": ""}, "^log must be a path or '-'$"),
    ],
)
def test_config_rejects_invalid_values(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        asrv.Config(**options)


@pytest.mark.parametrize(
    "options",
    [{"port": 0}, {"port": 65535}, {"threads": 1}, {"timeout": 0.25}, {"host": "::1"}],
)
def test_config_accepts_edge_values(options: dict[str, Any]) -> None:
    assert dataclasses.asdict(asrv.Config(**options)).items() >= options.items()


def test_config_normalizes_root_and_loop() -> None:
    config = asrv.Config(root="files", loop="asyncio")  # type: ignore[arg-type]
    assert config.root == Path("files")
    assert config.loop is asrv.LoopChoice.ASYNCIO


def test_config_has_the_command_lines_defaults() -> None:
    parsed = vars(cli.build_parser().parse_args([]))
    defaults = asrv.Config()
    fields = {field.name for field in dataclasses.fields(asrv.Config)}
    # Every option of the server is a command-line option and vice versa (-q is the CLI's own;
    # --keep-alive is accepted for compatibility and changes nothing; an SSL context is for
    # embedding, where --tls-cert and --tls-key do not reach).
    assert set(parsed) - {"quiet", "keep_alive"} == fields - {"ssl_context"}
    converters: dict[str, Callable[[Any], Any]] = {"port": int, "loop": asrv.LoopChoice}
    for name in sorted(fields - {"ssl_context"}):
        cli_default = converters.get(name, lambda value: value)(parsed[name])
        assert cli_default == getattr(defaults, name), name
    assert cli.parse_config([]) == (defaults, False)


# Server: serving, several at once, threads, the default executor, closing.


@pytest.mark.asyncio
async def test_server_on_port_zero_serves_real_requests(site: Site) -> None:
    async with asrv.Server(config(site, threads=2)) as server:
        assert server.port != 0
        assert await put(server.port, "a.txt", b"embedded\n", 1) == response(201, "Created")
        assert await get(server.port, "a.txt", 2) == response(200, "OK", b"embedded\n")
        assert await get(server.port, "b.txt", 3) == response(404, "Not Found")
    assert site.log_lines() == ["PUT,/a.txt,201,1", "GET,/a.txt,200,2", "GET,/b.txt,404,3"]
    assert (site.root / "a.txt").read_bytes() == b"embedded\n"


@pytest.mark.asyncio
async def test_two_servers_in_one_loop_keep_apart(tmp_path: Path) -> None:
    left, right = make_site(tmp_path, "left"), make_site(tmp_path, "right")
    (left.root / "only-left").write_bytes(b"L")
    threads_before, os_threads_before = worker_threads(), os_threads()
    assert threads_before == [], "a previous test left asrv threads behind"

    async with (
        asrv.Server(config(left, threads=2)) as one,
        asrv.Server(config(right, threads=3)) as two,
    ):
        assert one.port != two.port
        # Exactly N workers per server, all started before the first connection, and no
        # other thread: the process has its previous threads plus 2 + 3.
        assert len(worker_threads()) == 5
        assert os_threads() == os_threads_before + 5
        answers = await asyncio.gather(
            put(one.port, "x", b"one", "l1"),
            put(two.port, "x", b"two", "r1"),
            get(one.port, "only-left", "l2"),
            get(two.port, "only-left", "r2"),
        )
        assert list(answers) == [
            response(201, "Created"),
            response(201, "Created"),
            response(200, "OK", b"L"),
            response(404, "Not Found"),
        ]
        assert await get(one.port, "x", "l3") == response(200, "OK", b"one")
        assert await get(two.port, "x", "r3") == response(200, "OK", b"two")
        # Serving requests started no thread either.
        assert len(worker_threads()) == 5
        assert os_threads() == os_threads_before + 5

    assert worker_threads() == []
    assert await eventually(lambda: os_threads() == os_threads_before), os_threads()
    # Each log holds exactly its own server's requests (the first two of each ran concurrently).
    left_lines, right_lines = left.log_lines(), right.log_lines()
    assert sorted(left_lines[:2]) == ["GET,/only-left,200,l2", "PUT,/x,201,l1"]
    assert left_lines[2:] == ["GET,/x,200,l3"]
    assert sorted(right_lines[:2]) == ["GET,/only-left,404,r2", "PUT,/x,201,r1"]
    assert right_lines[2:] == ["GET,/x,200,r3"]


class TripwireExecutor(ThreadPoolExecutor):
    """A default executor that records every use (uvloop keeps its own out of reach)."""

    def __init__(self) -> None:
        super().__init__(max_workers=1)
        self.used: list[object] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        self.used.append(fn)
        return super().submit(fn, *args, **kwargs)


@pytest.mark.asyncio
async def test_the_loops_default_executor_is_untouched(site: Site) -> None:
    loop = asyncio.get_running_loop()
    tripwire: TripwireExecutor | None = None
    if not hasattr(loop, "_default_executor"):  # uvloop
        tripwire = TripwireExecutor()
        loop.set_default_executor(tripwire)
    server = asrv.Server(config(site, threads=2))
    async with server:
        assert await put(server.port, "f", b"data", 1) == response(201, "Created")
        assert await get(server.port, "f", 2) == response(200, "OK", b"data")
        assert await get(server.port, "missing", 3) == response(404, "Not Found")
    await server.close()
    if tripwire is None:
        assert loop._default_executor is None  # type: ignore[attr-defined]
    else:
        assert tripwire.used == []
        tripwire.shutdown()


@pytest.mark.asyncio
async def test_close_is_idempotent_and_ends_serve_forever(site: Site) -> None:
    server = asrv.Server(config(site, threads=1))
    await server.start()
    forever = asyncio.create_task(server.serve_forever())
    assert await get(server.port, "none", 1) == response(404, "Not Found")
    await asyncio.sleep(0)
    assert not forever.done()

    await asyncio.gather(server.close(), server.close())
    await server.close()
    await asyncio.wait_for(forever, timeout=10)  # returned, raised nothing
    # After close, serve_forever returns at once.
    await asyncio.wait_for(server.serve_forever(), timeout=10)
    assert worker_threads() == []
    assert await refuses_connections(server.port)
    assert site.log_lines() == ["GET,/none,404,1"]


@pytest.mark.asyncio
async def test_close_of_a_server_never_started(site: Site) -> None:
    server = asrv.Server(config(site))
    await server.close()
    await server.close()
    await asyncio.wait_for(server.serve_forever(), timeout=10)
    assert worker_threads() == []


# serve(): until a trigger, then a graceful close.


def listening_ports() -> set[int]:
    """TCP ports this process listens on (how a test finds what `serve` bound on port 0)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.asyncio
async def test_serve_until_trigger_then_finish_requests_in_flight(site: Site) -> None:
    ports_before = listening_ports()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def shutdown_trigger() -> None:
        # Called once the server listens.
        (port,) = listening_ports() - ports_before
        listening.set_result(port)
        await stop.wait()

    serving = asyncio.create_task(
        asrv.serve(config(site, threads=2), shutdown_trigger=shutdown_trigger)
    )
    port = await asyncio.wait_for(listening, timeout=10)
    assert await put(port, "a", b"first", 1) == response(201, "Created")

    # A PUT in flight: its head is read (100 Continue proves it), its body not yet sent.
    reader, writer = await asyncio.open_connection(HOST, port)
    body = b"second"
    writer.write(
        b"PUT /a HTTP/1.1\r\nContent-Length: %d\r\nExpect: 100-continue\r\nRequest-Id: 2\r\n\r\n"
        % len(body)
    )
    continued = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    assert continued == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert not serving.done()

    stop.set()
    # Closing has begun: no new connection is accepted ...
    for _ in range(1000):
        if await refuses_connections(port):
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the server still accepts connections after its trigger fired")
    assert not serving.done()
    # ... yet the request in flight completes.
    writer.write(body)
    assert await asyncio.wait_for(reader.read(), timeout=10) == response(200, "OK")
    writer.close()
    await asyncio.wait_for(serving, timeout=30)  # returned, raised nothing

    assert site.log_lines() == ["PUT,/a,201,1", "PUT,/a,200,2"]
    assert (site.root / "a").read_bytes() == b"second"
    assert worker_threads() == []


@pytest.mark.asyncio
async def test_serve_raises_startup_error_without_calling_the_trigger(tmp_path: Path) -> None:
    called = []

    async def shutdown_trigger() -> None:
        called.append(True)

    with pytest.raises(asrv.StartupError) as raised:
        await asrv.serve(
            asrv.Config(root=tmp_path / "missing", log=str(tmp_path / "log"), host=HOST, port=0),
            shutdown_trigger=shutdown_trigger,
        )
    assert raised.value.status == asrv.ExitStatus.CANNOT_START
    assert called == []


# StartupError: what cannot start says why, with the command line's exit status.


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.create_server((HOST, 0)) as taken:
        yield taken.getsockname()[1]


@pytest.mark.asyncio
@pytest.mark.parametrize("problem", ["missing", "a-file"])
async def test_unusable_root_is_a_startup_error(tmp_path: Path, problem: str) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    server = asrv.Server(
        asrv.Config(root=tmp_path / problem, log=str(tmp_path / "log"), host=HOST, port=0)
    )
    with pytest.raises(asrv.StartupError) as raised:
        await server.start()
    assert raised.value.status == asrv.ExitStatus.CANNOT_START
    assert int(raised.value.status) == 1
    assert str(raised.value).startswith("asrv: cannot serve root ")
    assert problem in str(raised.value)
    assert worker_threads() == []


@pytest.mark.asyncio
async def test_unopenable_log_is_a_startup_error(tmp_path: Path) -> None:
    log = tmp_path / "no-such-dir" / "audit.log"
    with pytest.raises(asrv.StartupError) as raised:
        async with asrv.Server(asrv.Config(root=tmp_path, log=str(log), host=HOST, port=0)):
            pytest.fail("started with a log it cannot open")
    assert raised.value.status == asrv.ExitStatus.LOG_UNUSABLE
    assert int(raised.value.status) == 4
    assert str(raised.value).startswith(f"asrv: cannot open log {log}")
    assert worker_threads() == []


@pytest.mark.asyncio
async def test_busy_port_is_invalid_port(site: Site, busy_port: int) -> None:
    with pytest.raises(asrv.StartupError) as raised:
        async with asrv.Server(config(site, port=busy_port)):
            pytest.fail("started on a port in use")
    assert str(raised.value) == "Invalid Port"
    assert raised.value.status == asrv.ExitStatus.CANNOT_START
    # Nothing is left behind: no asrv thread remains.
    assert worker_threads() == []


# Known defects: each test shows the behaviour a user needs and fails until it is fixed.


STARTS_ONCE = """
import asyncio, sys, threading, asrv

async def main():
    config = asrv.Config(root=sys.argv[1], log=sys.argv[2], host="127.0.0.1", port=0, threads=1)
    server = asrv.Server(config)
    async with server:
        try:
            await server.start()
        except RuntimeError:
            print("second start refused")
    try:
        await server.start()
    except RuntimeError:
        print("restart refused")
    print(sum(t.name.startswith("asrv-worker") for t in threading.enumerate()), "workers left")

asyncio.run(main())
"""


def test_a_server_starts_once(site: Site) -> None:
    # In a process of its own: a second start leaks a worker pool and a listener.
    done = subprocess.run(
        [sys.executable, "-c", STARTS_ONCE, str(site.root), str(site.log)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "second start refused\nrestart refused\n0 workers left\n"


@pytest.mark.asyncio
async def test_serve_raises_what_its_trigger_raised(site: Site) -> None:
    async def shutdown_trigger() -> None:
        raise RuntimeError("trigger failed")

    with pytest.raises(RuntimeError, match="trigger failed"):
        await asrv.serve(config(site), shutdown_trigger=shutdown_trigger)
    assert worker_threads() == []


@pytest.mark.asyncio
async def test_a_start_that_fails_leaves_a_running_servers_root_alone(site: Site) -> None:
    async with asrv.Server(config(site, threads=1)) as running:
        # A large PUT in flight on the running server: its temporary file is in the root.
        reader, writer = await asyncio.open_connection(HOST, running.port)
        size = 4 * 1024 * 1024
        writer.write(b"PUT /big HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * (size // 2))

        def uploading() -> bool:
            return any("_" in name or "~" in name for name in os.listdir(site.root))

        assert await eventually(uploading)
        # Started again by mistake on the same port: it must fail without touching the root.
        with pytest.raises(asrv.StartupError, match=r"^Invalid Port$"):
            await asrv.Server(config(site, port=running.port)).start()
        writer.write(b"x" * (size // 2))
        answer = await asyncio.wait_for(reader.read(), timeout=30)
        writer.close()
    assert answer == response(201, "Created")
    assert (site.root / "big").stat().st_size == size


@pytest.mark.asyncio
async def test_a_root_is_served_by_one_server_at_a_time(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    first = asrv.Config(root=root, log=str(tmp_path / "one.log"), host="127.0.0.1", port=0)
    second = asrv.Config(root=root, log=str(tmp_path / "two.log"), host="127.0.0.1", port=0)
    async with asrv.Server(first):
        with pytest.raises(asrv.StartupError, match="served by another asrv") as refused:
            await asrv.Server(second).start()
        assert refused.value.status == asrv.ExitStatus.CANNOT_START
    # Once the first has closed, the root is free again.
    async with asrv.Server(second) as server:
        assert server.port > 0
