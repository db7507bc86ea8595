"""Faults the server must survive, or stop on without breaking its promises.

- A log that cannot be written or synced, injected with strace: the server stops by itself
  (exit 3, one line saying why), and every request it answered is in the log. A restart
  then recovers a state the log explains.
- A full disk under the root (a real, small tmpfs): the PUT that does not fit gets 500,
  logged, and nothing changes; the server keeps serving.
- A syscall trace of a short load: each response's first byte goes out only after an
  fdatasync of the log that began after the write holding that request's line.
- A second SIGTERM during a graceful shutdown exits at once; a restart recovers.
- Also: a real ENOSPC on the log (a tiny tmpfs, which tears a line), EIO writing an upload,
  a failed fsync of the log at shutdown, and the order of syscalls in start-up recovery.

strace counts `when=` per syscall *and per thread*, and with `-P` only calls on the given
path count and are tampered with: an fd-based call such as fdatasync matches by the path
its descriptor is open on. Injection happens only for syscalls that are traced, so these
runs trace the tampered syscall (to /dev/null) rather than `-e trace=none`, which would
silently inject nothing.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import errno
import functools
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from asrv import ExitStatus
from asrv.filesystem import journals_metadata_in_order
from tests.conftest import (
    HOST,
    Process,
    Site,
    exchange,
    get,
    put,
    response,
    split_response,
)

STOPPED = "asrv: stopped: audit log: "
TEMP_PREFIXES = (".asrv_upload_", ".asrv~")
BIG = 300 * 1024
"""Larger than the server's 256 KiB chunk: such a body is streamed into its upload file."""


def body_for(request_id: str) -> bytes:
    """A PUT body that its request id alone determines; every 8th one is streamed."""
    seed = hashlib.sha256(request_id.encode()).digest()
    return seed * (BIG // 32 if seed[0] % 8 == 0 else 1 + seed[1] % 16)


def temp_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(TEMP_PREFIXES))


# Processes run under strace, and small disks.


@dataclass
class Traced:
    """`python -m asrv` under strace; `server_pid` is the server itself, strace's child."""

    strace: subprocess.Popen[bytes]
    server_pid: int
    port: int
    stderr: Path
    """Where the server's standard error goes (a file: nothing can block on it)."""

    def signal(self, sig: int) -> None:
        if self.strace.poll() is None:
            os.kill(self.server_pid, sig)

    def wait(self, timeout: float) -> int:
        """The server's exit status (strace exits with it)."""
        return self.strace.wait(timeout)

    def stderr_after_start(self) -> list[str]:
        """What the server wrote to standard error after its listening line."""
        lines = self.stderr.read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if "listening on" in line)
        return lines[start + 1 :]


@functools.cache
def strace_problem() -> str | None:
    """Why strace cannot inject faults here, or None if it can."""
    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed (the CI script installs it)"
    probe = [strace, "-f", "-qq", "--seccomp-bpf", "-o", os.devnull, "-e", "trace=getppid"]
    probe += ["-e", "inject=getppid:retval=4242", sys.executable, "-c"]
    probe += ["import os; print(os.getppid())"]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=30, check=False)
    if done.stdout.strip() != "4242":
        return f"strace cannot trace and inject here: {done.stderr.strip()[:200]}"
    return None


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


@pytest.fixture
def traced_server(site: Site, tmp_path: Path) -> Iterator[Callable[..., Traced]]:
    """Start `strace [OPTIONS] python -m asrv ...` over `site` (the trace goes to /dev/null
    unless OPTIONS say `-o`); every process is ended by its PID afterwards."""
    problem = strace_problem()
    if problem is not None:
        pytest.skip(problem)
    started: list[tuple[subprocess.Popen[bytes], list[int]]] = []

    def spawn(
        strace_options: list[str], *args: str, on: Site = site, seccomp: bool = True
    ) -> Traced:
        # --seccomp-bpf stops the server only at the traced syscalls (much faster), but with
        # it this strace never delivered a signal injected at `when=N` for N > 1.
        argv = ["strace", "-f", "-qq", *(["--seccomp-bpf"] if seccomp else []), *strace_options]
        if "-o" not in strace_options:
            argv += ["-o", os.devnull]
        argv += [sys.executable, "-m", "asrv", "--host", HOST, "--root", str(on.root)]
        argv += ["--log", str(on.log), *args, "0"]
        stderr = tmp_path / f"stderr-{len(started)}"
        with stderr.open("wb") as stream:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stream
            )
        servers: list[int] = []
        started.append((popen, servers))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and popen.poll() is None:
            match = re.search(r"listening on https?://[^ ]+:(\d+) ", stderr.read_text())
            if match is not None:
                servers += _children(popen.pid)
                assert len(servers) == 1, servers
                return Traced(popen, servers[0], int(match[1]), stderr)
            time.sleep(0.01)
        raise AssertionError((stderr.read_text(), popen.poll()))

    yield spawn
    for popen, servers in started:
        if popen.poll() is None:
            for pid in servers:
                # Only while it is still strace's child: the PID cannot have been reused.
                if pid in _children(popen.pid):
                    os.kill(pid, signal.SIGKILL)
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)


@contextlib.contextmanager
def log_elsewhere(site: Site) -> Iterator[Site]:
    """The site's root with its log on a tmpfs: another filesystem, whose syncs do not
    commit the root's journal, so the server syncs the root's changes itself."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no tmpfs at /dev/shm")
    directory = Path(tempfile.mkdtemp(prefix="asrv-log-", dir="/dev/shm"))
    try:
        yield Site(site.root, directory / "audit.log")
    finally:
        shutil.rmtree(directory)


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str) -> Iterator[None]:
    """A tmpfs of `size` mounted on `directory`, or a skip where mounting is not allowed."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["mount failed"])[0]
        pytest.skip(f"cannot mount a tmpfs here (needs root): {reason}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=True)
            raise AssertionError(f"{directory} was busy: detached it lazily")


@contextlib.contextmanager
def ended_before_unmount() -> Iterator[Callable[[Process], Process]]:
    """Register servers whose files lie on a mount: each is killed, if it still runs, before
    the mount is taken away (the fixture would end them only after the unmount)."""
    processes: list[Process] = []

    def started(process: Process) -> Process:
        processes.append(process)
        return process

    try:
        yield started
    finally:
        for process in processes:
            if process.popen.poll() is None:
                process.popen.kill()
            process.popen.wait(10)


def free_bytes(directory: Path) -> int:
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


# Fault injection on the log.


@dataclass
class Outcome:
    """What clients heard: status (and, if whole, body) per request id, in no order."""

    answered: dict[str, tuple[int, bytes | None]] = field(default_factory=dict)
    sent: set[str] = field(default_factory=set)


async def load_until_stopped(port: int, clients: int, *, seconds: float) -> Outcome:
    """Clients send GETs and PUTs of a few files, each until the server stops answering."""
    outcome = Outcome()

    async def client(i: int) -> None:
        for j in range(100_000):
            rid = f"{i}.{j}"
            name = f"f{(i + j) % 3}"
            outcome.sent.add(rid)
            try:
                if j % 2:
                    answer = await put(port, name, body_for(rid), rid)
                else:
                    answer = await get(port, name, rid)
            except OSError:  # refused or reset: the server has stopped
                return
            if not answer:
                return
            assert answer.startswith(b"HTTP/1.1 "), answer[:100]
            try:
                outcome.answered[rid] = split_response(answer)
            except AssertionError:
                # Cut off mid-body by the stop: its head still acknowledged it.
                outcome.answered[rid] = (int(answer[9:12]), None)

    await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))), seconds)
    return outcome


def replay(lines: list[str]) -> dict[str, bytes]:
    """The files the log says exist, given each PUT's body from its request id."""
    files: dict[str, bytes] = {}
    for line in lines:
        method, uri, status, rid = line.split(",")
        if method == "PUT" and status in ("200", "201"):
            assert status == ("200" if uri[1:] in files else "201"), line
            files[uri[1:]] = body_for(rid)
    return files


def check_against_log(root: Path, log_path: Path, outcome: Outcome) -> None:
    """Every answered request is logged with the status it got, GETs saw what the log
    order says, and the files are the replay of the log."""
    log = log_path.read_bytes()
    assert log.endswith(b"\n"), log[-100:]
    lines = log.decode().splitlines()
    logged = {line.rsplit(",", 1)[1]: line for line in lines}
    assert len(logged) == len(lines), "a request id logged twice"
    assert set(logged) <= outcome.sent
    for rid, (code, _) in outcome.answered.items():
        assert rid in logged, f"request {rid} was answered {code} but is not in the log"
        assert logged[rid].split(",")[2] == str(code), (logged[rid], code)
    files: dict[str, bytes] = {}
    for line in lines:
        method, uri, status, rid = line.split(",")
        if method == "PUT" and status in ("200", "201"):
            files[uri[1:]] = body_for(rid)
        elif method == "GET" and rid in outcome.answered and outcome.answered[rid][1] is not None:
            expected = (200, files[uri[1:]]) if uri[1:] in files else (404, b"Not Found\n")
            assert outcome.answered[rid] == expected, line
    expected_files = replay(lines)
    assert sorted(p.name for p in root.iterdir()) == sorted(expected_files)
    for name, content in expected_files.items():
        assert (root / name).read_bytes() == content, name


@dataclass(frozen=True)
class Injection:
    """`strace -e inject=SYSCALL:error=ERROR:when=WHEN -P PATH`, PATH the log or the root."""

    syscall: str
    error: str
    when: str
    path: str
    log_elsewhere: bool = False
    """The log on another filesystem than the root: only then is the root fsync'd."""

    def strace_options(self, site: Site) -> list[str]:
        inject = f"inject={self.syscall}:error={self.error}:when={self.when}"
        path = site.log if self.path == "log" else site.root
        return ["-e", f"trace={self.syscall}", "-e", inject, "-P", str(path)]


INJECTIONS = [
    # The log's fdatasync fails after five good ones on each worker. The uploads' own
    # fdatasyncs go on succeeding: no PUT is answered 500.
    pytest.param(Injection("fdatasync", "EIO", "6+", "log"), id="log-fdatasync-EIO"),
    # The log's write fails, and nothing else's: under uvloop the responses go out with
    # write too.
    pytest.param(Injection("write", "ENOSPC", "6+", "log"), id="log-write-ENOSPC"),
    # The fsync of the root directory that makes the renamed temps of a batch's PUTs durable
    # before their lines fails: nothing of that batch may be written, let alone answered.
    pytest.param(Injection("fsync", "EIO", "4+", "root", True), id="root-fsync-EIO"),
]


@pytest.mark.parametrize("injection", INJECTIONS)
def test_log_failure_stops_the_server(
    injection: Injection,
    site: Site,
    traced_server: Callable[..., Traced],
    spawn_server: Callable[..., Process],
) -> None:
    """Under GET and PUT load the log fails: the server stops by itself with status 3 and
    one line of reason; every request that got any response is logged with its status,
    and after a restart the files are the replay of the log, with no temp file left."""
    with contextlib.ExitStack() as stack:
        if injection.log_elsewhere:
            site = stack.enter_context(log_elsewhere(site))
        check_log_failure_stops_the_server(injection, site, traced_server, spawn_server)


def check_log_failure_stops_the_server(
    injection: Injection,
    site: Site,
    traced_server: Callable[..., Traced],
    spawn_server: Callable[..., Process],
) -> None:
    (site.root / "f0").write_bytes(body_for("seed"))
    site.log.write_bytes(b"PUT,/f0,201,seed\n")
    server = traced_server(injection.strace_options(site), "-t", "2", "--timeout", "5", on=site)

    outcome = asyncio.run(load_until_stopped(server.port, 12, seconds=20))

    status = server.wait(10)
    stderr = server.stderr_after_start()
    assert status == ExitStatus.FATAL, stderr
    assert stderr == [STOPPED + os.strerror(getattr(errno, injection.error))]
    assert len(outcome.answered) >= 5, "the fault hit before any request was answered"
    assert all(code != 500 for code, _ in outcome.answered.values()), "injection leaked"

    # A restart recovers (a logged PUT's rename may have been cut short); then the log
    # must explain everything clients were told and every file in the root.
    restarted = spawn_server("--log", str(site.log))
    assert restarted.stop() == 0
    assert temp_files(site.root) == []
    outcome.sent.add("seed")
    check_against_log(site.root, site.log, outcome)


def test_log_on_a_full_disk_stops_the_server(
    site: Site, spawn_server: Callable[..., Process], tmp_path: Path
) -> None:
    """A real ENOSPC on the log (a 16 KiB tmpfs), which can cut a batch mid-line: the
    server stops, and the restart cuts the torn line off."""
    logfs = tmp_path / "logfs"
    logfs.mkdir()
    log = logfs / "audit.log"
    with small_tmpfs(logfs, "16k"), ended_before_unmount() as started:
        filler = [f"GET,/none,404,fill-{i}\n".encode() for i in range(1000)]
        count = 0
        while sum(map(len, filler[: count + 1])) < 16 * 1024 - 400:
            count += 1
        log.write_bytes(b"".join(filler[:count]))
        server = started(spawn_server("-l", str(log), "-t", "2", "0"))
        outcome = asyncio.run(load_until_stopped(server.port, 8, seconds=20))
        assert server.popen.wait(10) == ExitStatus.FATAL
        assert server.stderr.text().splitlines() == [STOPPED + "No space left on device"]
        assert len(outcome.answered) >= 5, "the disk was full before any answer"

        restarted = started(spawn_server("-l", str(log)))
        assert restarted.stop() == 0
        assert temp_files(site.root) == []
        outcome.sent.update(f"fill-{i}" for i in range(count))
        check_against_log(site.root, log, outcome)


def test_log_fsync_failure_at_shutdown_is_fatal(
    site: Site, traced_server: Callable[..., Traced]
) -> None:
    """The log's only fsync is the one at shutdown (flushes use fdatasync); if it fails,
    the shutdown is not clean."""
    options = ["-e", "trace=fsync", "-e", "inject=fsync:error=EIO", "-P", str(site.log)]
    server = traced_server(options)
    assert asyncio.run(put(server.port, "a", b"A", 1)) == response(201, "Created")
    assert asyncio.run(get(server.port, "a", 2)) == response(200, "OK", b"A")
    server.signal(signal.SIGTERM)
    assert server.wait(10) == ExitStatus.FATAL
    stderr = server.stderr_after_start()
    assert stderr[:1] == ["asrv: stopped: audit log: cannot make it durable: Input/output error"]
    assert site.log_lines() == ["PUT,/a,201,1", "GET,/a,200,2"]
    assert len(stderr) == 1, stderr


def test_log_failure_logging_a_request_cut_short_by_shutdown_is_fatal(
    site: Site, traced_server: Callable[..., Traced]
) -> None:
    """A client trickles a head past the shutdown's grace: its request is cut short and
    logged as a 400. If that line cannot be synced, the stop is not clean (exit 3), and
    nothing was acknowledged that the log lacks."""
    options = ["-e", "trace=fdatasync", "-e", "inject=fdatasync:error=EIO", "-P", str(site.log)]
    server = traced_server(options, "--timeout", "1", "--head-timeout", "60")
    with socket.create_connection((HOST, server.port)) as client:
        client.sendall(b"GET /a HTTP/1.1\r\nRequest-Id: 7\r\nX: ")
        time.sleep(0.3)
        server.signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while server.strace.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                client.sendall(b"x")  # a byte every 0.2 s: never idle for the 1 s timeout
            time.sleep(0.2)
        client.settimeout(10)
        with contextlib.suppress(OSError):
            assert client.recv(65536) == b""  # no response: its line never became durable
    assert server.wait(10) == ExitStatus.FATAL
    assert server.stderr_after_start() == [STOPPED + "Input/output error"]


def test_upload_write_error_fails_that_put_alone(
    site: Site, traced_server: Callable[..., Traced]
) -> None:
    """EIO writing a streamed upload (the only pwrite64 user; one worker, so the count is
    exact): that PUT gets 500, logged, nothing changes, and the server goes on."""
    options = ["-e", "trace=pwrite64", "-e", "inject=pwrite64:error=EIO:when=2"]
    server = traced_server(options, "-t", "1")
    failed = response(500, "Internal Server Error")

    async def scenario() -> None:
        assert await put(server.port, "a", b"A1", 1) == response(201, "Created")
        assert await put(server.port, "a", b"s" * BIG, 2) == failed
        assert temp_files(site.root) == []
        assert await get(server.port, "a", 3) == response(200, "OK", b"A1")
        assert await put(server.port, "a", b"A2" * BIG, 4) == response(200, "OK")
        assert await get(server.port, "a", 5) == response(200, "OK", b"A2" * BIG)

    asyncio.run(scenario())
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    assert site.log_lines() == [
        "PUT,/a,201,1",
        "PUT,/a,500,2",
        "GET,/a,200,3",
        "PUT,/a,200,4",
        "GET,/a,200,5",
    ]
    assert sorted(p.name for p in site.root.iterdir()) == ["a"]


@pytest.mark.parametrize("layout", ["one-journal", "log-elsewhere"])
def test_an_upload_that_cannot_be_settled_fails_that_put_alone(
    layout: str, site: Site, traced_server: Callable[..., Traced]
) -> None:
    """EIO making the second PUT's data durable (sync_file_range where the log's commit
    covers the root, fdatasync of the upload elsewhere): that PUT gets 500, logged, and
    nothing changes."""
    with contextlib.ExitStack() as stack:
        if layout == "log-elsewhere":
            site = stack.enter_context(log_elsewhere(site))
        # One worker, as strace counts calls per thread. sync_file_range is the uploads'
        # alone; fdatasync is also the log's: the first PUT's upload, its line, then the
        # second PUT's upload.
        syscall, when = ("sync_file_range", 2) if layout == "one-journal" else ("fdatasync", 3)
        inject = f"inject={syscall}:error=EIO:when={when}"
        options = ["-e", f"trace={syscall}", "-e", inject]
        server = traced_server(options, "-t", "1", on=site)
        failed = response(500, "Internal Server Error")

        async def scenario() -> None:
            assert await put(server.port, "a", b"A1", 1) == response(201, "Created")
            assert await put(server.port, "a", b"A2", 2) == failed
            assert await get(server.port, "a", 3) == response(200, "OK", b"A1")

        asyncio.run(scenario())
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert site.log_lines() == ["PUT,/a,201,1", "PUT,/a,500,2", "GET,/a,200,3"]
        assert sorted(p.name for p in site.root.iterdir()) == ["a"]


# A real full disk under the root.


def test_full_disk_fails_the_put_alone(site: Site, spawn_server: Callable[..., Process]) -> None:
    """The root on a 2 MiB tmpfs (the log elsewhere): a PUT that does not fit, streamed or
    whole, onto an existing file or a new one, gets exactly a 500, logged; the target is
    unchanged, no temp file stays, and the server goes on serving."""
    failed = response(500, "Internal Server Error")
    assert failed == b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 22\r\n\r\n" + (
        b"Internal Server Error\n"
    )
    with small_tmpfs(site.root, "2m"), ended_before_unmount() as started:
        old = b"old content\n" * 1000
        (site.root / "keep").write_bytes(old)
        server = started(spawn_server("-t", "2", "0"))
        port = server.port
        too_big = b"x" * (3 * 1024 * 1024)

        async def scenario() -> None:
            # Streamed uploads that run out of space: an existing target, a new one.
            assert await put(port, "keep", too_big, "big-old") == failed
            assert await put(port, "fresh", too_big, "big-new") == failed
            assert temp_files(site.root) == []
            # A body that arrives whole and is written in one go, on a nearly full disk.
            filler = free_bytes(site.root) - 64 * 1024
            (site.root / "filler").write_bytes(b"f" * filler)
            assert await put(port, "keep", b"y" * (128 * 1024), "small-old") == failed
            assert await put(port, "fresh", b"y" * (128 * 1024), "small-new") == failed
            assert temp_files(site.root) == []
            (site.root / "filler").unlink()
            # The server goes on serving, and the space of the failed uploads is free.
            assert await get(port, "keep", "get-old") == response(200, "OK", old)
            assert await get(port, "fresh", "get-new") == response(404, "Not Found")
            assert await put(port, "keep", b"new", "put-old") == response(200, "OK")
            assert await put(port, "fresh", b"new", "put-new") == response(201, "Created")
            assert await get(port, "fresh", "get-fresh") == response(200, "OK", b"new")
            one_mib = b"z" * (1024 * 1024)
            assert await put(port, "again", one_mib, "put-1m") == response(201, "Created")

        asyncio.run(scenario())
        assert server.stop() == 0
        assert sorted(p.name for p in site.root.iterdir()) == ["again", "fresh", "keep"]
        assert (site.root / "keep").read_bytes() == b"new"
    assert site.log_lines() == [
        "PUT,/keep,500,big-old",
        "PUT,/fresh,500,big-new",
        "PUT,/keep,500,small-old",
        "PUT,/fresh,500,small-new",
        "GET,/keep,200,get-old",
        "GET,/fresh,404,get-new",
        "PUT,/keep,200,put-old",
        "PUT,/fresh,201,put-new",
        "GET,/fresh,200,get-fresh",
        "PUT,/again,201,put-1m",
    ]


# The order of syscalls: log line written, log fdatasync'd, then the response.


@dataclass
class Call:
    """One syscall of the trace: where it began and ended (line numbers: strace prints in
    the order it sees events, and a thread stays stopped until strace has seen its event,
    so the line order respects causality across threads)."""

    begin: int
    end: int
    name: str
    fd: str
    data: bytes
    """The first string argument (as far as strace showed it)."""
    truncated: bool
    result: str


_LINE = re.compile(r"(\d+)\s+(?:\d+\.\d+\s+)?(.*)")
_CALL = re.compile(r"(\w+)\((\d+)<(.*?)>(?:,\s*(.*))?\) += (.*?)(?: <[\d.]+>)?")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?')


def parse_trace(text: str) -> list[Call]:
    """The calls of an `strace -f -yy [-ttt] [-T]` trace, unfinished and resumed halves
    joined; lines that are no call on a descriptor (signals, exits) are left out."""
    calls: list[Call] = []
    pending: dict[str, tuple[int, str]] = {}
    for number, raw in enumerate(text.splitlines()):
        line = _LINE.fullmatch(raw)
        if line is None:
            continue
        pid, rest = line.groups()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = (number, rest.removesuffix("<unfinished ...>").rstrip())
            continue
        begin = number
        resumed = re.match(r"<\.\.\. \w+ resumed>", rest)
        if resumed is not None:
            begin, head = pending.pop(pid)
            rest = head + rest[resumed.end() :]
        call = _CALL.fullmatch(rest)
        if call is None:
            continue
        name, _, fd, args, result = call.groups()
        data, truncated = b"", False
        string = _STRING.search(args or "")
        if string is not None:
            data = codecs.decode(string[1], "unicode_escape").encode("latin-1")
            truncated = string[2] is not None
        calls.append(Call(begin, number, name, fd, data, truncated, result))
    return calls


READS = {"read", "readv", "recvfrom", "recvmsg"}
SENDS = {"write", "writev", "sendto", "sendmsg"}


def check_responses_wait_for_fdatasync(calls: list[Call], log_path: str) -> int:
    """For every response: its request's line was written to the log, then an fdatasync of
    the log began after that write and ended before the response's first byte. Returns
    how many responses were checked."""
    line_written: dict[str, int] = {}  # request id -> end of the log write holding its line
    syncs: list[Call] = []
    received: dict[str, bytes] = {}  # per connection: request bytes so far
    checked = 0
    for call in calls:
        if call.fd == log_path and call.name == "write":
            assert not call.truncated, "raise strace's -s: a log write was cut short"
            assert call.result == str(len(call.data)), call
            for line in call.data.decode().splitlines():
                line_written[line.rsplit(",", 1)[1]] = call.end
        elif call.fd == log_path and call.name == "fdatasync":
            assert call.result == "0", call
            syncs.append(call)
        elif call.fd.startswith("TCP:") and call.name in READS:
            received[call.fd] = received.get(call.fd, b"") + call.data
        elif call.fd.startswith("TCP:") and call.name in SENDS:
            if not call.data.startswith(b"HTTP/1.1 "):
                continue  # the rest of a streamed body
            request = received.pop(call.fd, b"")
            rid = re.search(rb"\r\nRequest-Id: ([^\r]*)\r\n", request)
            assert rid is not None, request[:200]
            request_id = rid[1].decode()
            assert request_id in line_written, f"response to {request_id} before its line"
            written = line_written[request_id]
            assert any(written < sync.begin and sync.end < call.begin for sync in syncs), (
                f"response to {request_id} (trace line {call.begin}) without an fdatasync "
                f"of the log after its line was written (trace line {written})"
            )
            checked += 1
    return checked


@pytest.mark.parametrize(
    ("loop", "fsync"), [("uvloop", True), ("asyncio", True), ("uvloop", False)]
)
def test_trace_shows_each_response_after_its_fdatasync(
    loop: str, fsync: bool, site: Site, traced_server: Callable[..., Traced], tmp_path: Path
) -> None:
    """Under load, with distinct request ids, the trace orders for each response: the write
    of its log line, then a whole fdatasync of the log, then the response's first byte.
    With --no-fsync the same check must fail (the checker sees real violations)."""
    trace = tmp_path / "trace"
    syscalls = "fdatasync,write,writev,sendto,sendmsg,read,readv,recvfrom,recvmsg"
    options = ["-ttt", "-T", "-yy", "-s", "8192", "-e", f"trace={syscalls}", "-o", str(trace)]
    (site.root / "big").write_bytes(b"b" * (200 * 1024))  # streamed from its fd
    server = traced_server(options, "-t", "3", "--loop", loop, *([] if fsync else ["--no-fsync"]))

    async def load() -> dict[str, int]:
        codes: dict[str, int] = {}

        async def client(i: int) -> None:
            for j in range(6):
                rid = f"{loop}-{i}-{j}"
                kind = (i + j) % 4
                if kind == 0:
                    answer = await put(server.port, f"f{i % 3}", body_for(rid), rid)
                elif kind == 1:
                    answer = await get(server.port, f"f{j % 4}", rid)
                elif kind == 2:
                    answer = await get(server.port, "big", rid)
                else:
                    head = f"BREW /f{i} HTTP/1.1\r\nRequest-Id: {rid}\r\n\r\n"
                    answer = await exchange(server.port, head.encode())
                codes[rid] = split_response(answer)[0]

        await asyncio.gather(*(client(i) for i in range(8)))
        return codes

    codes = asyncio.run(load())
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    assert {501, 200, 201} <= set(codes.values())
    calls = parse_trace(trace.read_text())
    log_path = str(site.log.resolve())
    if fsync:
        assert check_responses_wait_for_fdatasync(calls, log_path) == len(codes)
    else:
        with pytest.raises(AssertionError, match="without an fdatasync"):
            check_responses_wait_for_fdatasync(calls, log_path)


def test_trace_checker_catches_a_response_before_the_sync() -> None:
    """The checker itself: the same trace shapes, in a bad order, must fail it."""
    good = (
        '10 1.0 read(7<TCP:[1->2]>, "GET /a HTTP/1.1\\r\\nRequest-Id: 1\\r\\n\\r\\n", 9) = 9\n'
        '11 1.1 write(3</l>, "GET,/a,404,1\\n", 13) = 13 <0.1>\n'
        "11 1.2 fdatasync(3</l> <unfinished ...>\n"
        '10 1.3 write(9<TCP:[3->4]>, "x", 1) = 1\n'
        "11 1.4 <... fdatasync resumed>) = 0 <0.2>\n"
        '10 1.5 write(7<TCP:[1->2]>, "HTTP/1.1 404 Not Found\\r\\n", 24) = 24\n'
    )
    assert check_responses_wait_for_fdatasync(parse_trace(good), "/l") == 1
    lines = good.splitlines()
    early = "\n".join([*lines[:3], lines[5], *lines[3:5]])  # response before the sync ends
    with pytest.raises(AssertionError, match="without an fdatasync"):
        check_responses_wait_for_fdatasync(parse_trace(early), "/l")
    stale = "\n".join([lines[0], lines[2], lines[1], *lines[3:]])  # sync began before write
    with pytest.raises(AssertionError, match="without an fdatasync"):
        check_responses_wait_for_fdatasync(parse_trace(stale), "/l")


# The same order under TLS, where the trace shows only ciphertext.

APPLICATION_DATA = b"\x17"
"""The first byte of a TLS record of application data (RFC 5246 §6.2.1). Under TLS 1.2 the
handshake's records have other types, so these are requests and responses only."""
_CLIENT_PORT = re.compile(r"TCP:\[.*->.*:(\d+)\]")


def check_tls_responses_wait_for_fdatasync(
    calls: list[Call], log_path: str, connections: dict[int, list[str]]
) -> int:
    """Under TLS 1.2, with each client sending its next request only after the whole
    response: on each connection (keyed by the client's port, with its request ids in
    order), the k-th run of application-data reads is request k, and the application-data
    sends after it are response k. The first of them must come after an fdatasync of the log
    that began after the write of request k's line. Returns how many responses were checked."""
    line_written: dict[str, int] = {}
    syncs: list[Call] = []
    requests = dict.fromkeys(connections, 0)  # per connection: requests begun so far
    answered: set[tuple[int, int]] = set()
    checked = 0
    for call in calls:
        if call.fd == log_path and call.name == "write":
            assert not call.truncated and call.result == str(len(call.data)), call
            for line in call.data.decode().splitlines():
                line_written[line.rsplit(",", 1)[1]] = call.end
        elif call.fd == log_path and call.name == "fdatasync":
            syncs.append(call)
        elif (port := _CLIENT_PORT.fullmatch(call.fd)) is not None and not call.result.startswith(
            "-"
        ):
            client = int(port[1])
            if client not in connections or call.data[:1] != APPLICATION_DATA:
                continue  # another client's, or a handshake or alert record
            k = requests[client]
            if call.name in READS and (k == 0 or (client, k) in answered):
                requests[client] = k + 1  # the first record of the next request
            elif call.name in SENDS and (client, k) not in answered:
                assert k > 0, f"application data to port {client} before any request"
                request_id = connections[client][k - 1]
                assert request_id in line_written, f"response to {request_id} before its line"
                written = line_written[request_id]
                assert any(written < sync.begin and sync.end < call.begin for sync in syncs), (
                    f"response to {request_id} (trace line {call.begin}) without an fdatasync "
                    f"of the log after its line was written (trace line {written})"
                )
                answered.add((client, k))
                checked += 1
    return checked


def tls12_client(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certificate[0]))
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # record types in the clear
    return context


@pytest.mark.parametrize(
    ("loop", "fsync"), [("uvloop", True), ("asyncio", True), ("uvloop", False)]
)
def test_trace_under_tls_shows_each_response_after_its_fdatasync(
    loop: str,
    fsync: bool,
    site: Site,
    traced_server: Callable[..., Traced],
    certificate: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """The log-before-response trace over TLS, where the TLS layer encrypts on the loop:
    four clients, each on its own persistent connection, with PUTs, GETs of a small and of a
    large file (copied through the workers under TLS), 404s and HEADs. With --no-fsync the
    check must fail."""
    trace = tmp_path / "trace"
    syscalls = "fdatasync,write,writev,sendto,sendmsg,read,readv,recvfrom,recvmsg"
    options = ["-ttt", "-T", "-yy", "-s", "4096", "-e", f"trace={syscalls}", "-o", str(trace)]
    (site.root / "big").write_bytes(os.urandom(600 * 1024))
    cert, key = certificate
    server = traced_server(
        options, "-t", "3", "--loop", loop, "--tls-cert", str(cert), "--tls-key", str(key),
        *([] if fsync else ["--no-fsync"]),
    )  # fmt: skip
    connections: dict[int, list[str]] = {}
    statuses: list[int] = []

    def client(i: int) -> None:
        conn = http.client.HTTPSConnection(
            HOST, server.port, context=tls12_client(certificate), timeout=60
        )
        conn.connect()
        sent = connections.setdefault(conn.sock.getsockname()[1], [])
        for j in range(6):
            rid = f"tls-{loop}-{i}-{j}"
            method, uri, body = [
                ("PUT", f"/f{i % 2}", body_for(rid)),
                ("GET", f"/f{(i + 1) % 2}", None),
                ("GET", "/big", None),
                ("GET", "/missing", None),
                ("HEAD", "/big", None),
                ("PUT", f"/f{i % 2}", body_for(rid) * 40),
            ][j]
            conn.request(method, uri, body=body, headers={"Request-Id": rid})
            sent.append(rid)
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
        conn.close()

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(120)
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    assert len(statuses) == 24 and {200, 201, 404} <= set(statuses)
    calls = parse_trace(trace.read_text())
    log_path = str(site.log.resolve())
    if fsync:
        assert check_tls_responses_wait_for_fdatasync(calls, log_path, connections) == 24
    else:
        with pytest.raises(AssertionError, match="without an fdatasync"):
            check_tls_responses_wait_for_fdatasync(calls, log_path, connections)


def test_tls_trace_checker_catches_a_response_before_its_line() -> None:
    """The TLS checker itself, on a handshake, then a request and its response: the same
    events in a bad order must fail it."""
    fd = "7<TCP:[127.0.0.1:8443->127.0.0.1:5000]>"
    lines = [
        f'10 1.0 read({fd}, "\26\3\1", 5) = 5',  # the ClientHello
        f'10 1.1 write({fd}, "\26\3\3", 5) = 5',  # the ServerHello
        f'10 1.2 read({fd}, "\27\3\3", 5) = 5',  # the request
        '11 1.3 write(3</l>, "GET,/a,404,r1\\n", 14) = 14',
        "11 1.4 fdatasync(3</l>) = 0",
        f'10 1.5 write({fd}, "\27\3\3", 5) = 5',  # the response
    ]
    connections = {5000: ["r1"]}
    good = "\n".join(lines)
    assert check_tls_responses_wait_for_fdatasync(parse_trace(good), "/l", connections) == 1
    early = "\n".join([*lines[:3], lines[5], *lines[3:5]])
    with pytest.raises(AssertionError, match="before its line"):
        check_tls_responses_wait_for_fdatasync(parse_trace(early), "/l", connections)
    unsynced = "\n".join([*lines[:4], lines[5], lines[4]])
    with pytest.raises(AssertionError, match="without an fdatasync"):
        check_tls_responses_wait_for_fdatasync(parse_trace(unsynced), "/l", connections)


@pytest.fixture(params=["tmp", "log-elsewhere", "tmpfs"])
def any_site(request: pytest.FixtureRequest, site: Site) -> Iterator[Site]:
    """The test's site (where the log's commit covers the root's changes, on ext4); its
    root with the log on a tmpfs (the root's changes synced on their own); and one wholly on
    a tmpfs: a filesystem asrv does not count on to journal metadata in order, where it
    syncs stamps and unlinks itself."""
    if request.param == "tmp":
        yield site
        return
    if request.param == "log-elsewhere":
        with log_elsewhere(site) as split:
            yield split
        return
    if not Path("/dev/shm").is_dir():
        pytest.skip("no tmpfs at /dev/shm")
    directory = Path(tempfile.mkdtemp(prefix="asrv-test-", dir="/dev/shm"))
    try:
        (directory / "root").mkdir()
        yield Site(directory / "root", directory / "audit.log")
    finally:
        shutil.rmtree(directory)


def log_commits_root(site: Site) -> bool:
    """Whether the server counts on the log's fdatasync to commit the root's changes too
    (one ordered journal under both): then it syncs nothing else."""
    return metadata_in_order(site.root) and (
        os.stat(site.root).st_dev == os.stat(site.log.parent).st_dev
    )


def metadata_in_order(root: Path) -> bool:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return journals_metadata_in_order(fd)
    finally:
        os.close(fd)


def test_trace_shows_each_delete_unlink_after_its_line_is_durable(
    any_site: Site, traced_server: Callable[..., Traced], tmp_path: Path
) -> None:
    """Write-ahead for DELETE: the file gets its intent name, the root is fsync'd (unless
    the log's own commit covers it), the line is written and fdatasync'd, and only then does
    the name disappear."""
    site = any_site
    names = [f"f{n}" for n in range(12)]
    for name in names:
        (site.root / name).write_bytes(name.encode())
    trace = tmp_path / "trace"
    syscalls = "write,fsync,fdatasync,link,linkat,unlink,unlinkat"
    options = ["-yy", "-s", "4096", "-e", f"trace={syscalls}", "-o", str(trace)]
    server = traced_server(options, on=site)

    async def load() -> list[bytes]:
        return await asyncio.gather(
            *(
                exchange(
                    server.port, f"DELETE /{name} HTTP/1.1\r\nRequest-Id: {name}\r\n\r\n".encode()
                )
                for name in names
            )
        )

    assert asyncio.run(load()) == [response(200, "OK")] * len(names)
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    assert list(site.root.iterdir()) == []
    calls = parse_trace(trace.read_text())
    log_path = str(site.log.resolve())
    root = str(site.root.resolve())
    for name in names:
        linked = next(c for c in calls if c.name == "linkat" and c.data == name.encode())
        written = next(
            c
            for c in calls
            if c.fd == log_path and c.name == "write" and b",%s\n" % name.encode() in c.data
        )
        gone = next(c for c in calls if c.name == "unlinkat" and c.data == name.encode())
        dir_syncs = [c for c in calls if c.fd == root and c.name == "fsync"]
        log_syncs = [c for c in calls if c.fd == log_path and c.name == "fdatasync"]
        if log_commits_root(site):
            # The log's commit, which makes the line durable, takes the intent with it.
            assert linked.end < written.begin and not dir_syncs
        else:
            assert any(linked.end < sync.begin and sync.end < written.begin for sync in dir_syncs)
        assert any(written.end < sync.begin and sync.end < gone.begin for sync in log_syncs)
        if metadata_in_order(site.root):
            continue  # the journal keeps the two unlinks in order
        # The name's unlink is durable before the intent's: until then, recovery needs it.
        intent_gone = next(
            c
            for c in calls
            if c.name == "unlinkat"
            and c.data.startswith(b".asrv-deleted~")
            and c.data.endswith(b"~" + name.encode())
        )
        assert any(gone.end < sync.begin and sync.end < intent_gone.begin for sync in dir_syncs)


def traced_puts(
    site: Site,
    traced_server: Callable[..., Traced],
    tmp_path: Path,
    syscalls: str,
    names: list[str],
    body: bytes,
) -> list[Call]:
    """A server traced for `syscalls` creates each of `names` with `body`, at once, then
    stops: the calls of its trace."""
    trace = tmp_path / "trace"
    options = ["-yy", "-s", "4096", "-e", f"trace={syscalls}", "-o", str(trace)]
    server = traced_server(options, on=site)

    async def load() -> list[bytes]:
        return await asyncio.gather(*(put(server.port, name, body, name) for name in names))

    assert asyncio.run(load()) == [response(201, "Created")] * len(names)
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    return parse_trace(trace.read_text())


def test_trace_shows_each_etag_stamp_durable_before_its_put_line(
    any_site: Site, traced_server: Callable[..., Traced], tmp_path: Path
) -> None:
    """A new version's ETag lives in an extended attribute (or, without them, its
    modification time), which fdatasync does not cover: unless the filesystem journals
    metadata in order, so that the root's fsync covers it, the stamped file is fsync'd
    before the PUT's line is written."""
    site = any_site
    names = [f"p{n}" for n in range(8)]
    syscalls = "write,fsync,fdatasync,fsetxattr,utimensat"
    calls = traced_puts(site, traced_server, tmp_path, syscalls, names, b"x" * 100)
    log_path = str(site.log.resolve())
    root = str(site.root.resolve())
    for name in names:
        intent = re.compile(rf"{re.escape(root)}/\.asrv~[0-9a-f]+~\d+~{name}")
        written = next(
            c
            for c in calls
            if c.fd == log_path and c.name == "write" and f",{name}\n".encode() in c.data
        )
        stamped = [c for c in calls if c.name in ("fsetxattr", "utimensat")]
        synced = [c for c in calls if c.name == "fsync" and intent.fullmatch(c.fd)]
        assert stamped and stamped[0].end < written.begin, name
        if metadata_in_order(site.root):
            assert not synced, "a stamp synced on its own where the journal covers it"
        else:
            assert any(c.end < written.begin for c in synced), name


def test_trace_shows_each_upload_settled_before_its_put_line(
    any_site: Site, traced_server: Callable[..., Traced], tmp_path: Path
) -> None:
    """A PUT's data is on the disk before its line can be durable: where the log's commit
    covers the root (one ordered journal), each upload is written back with
    sync_file_range, and nothing else of the root is synced; elsewhere each upload is
    fdatasync'd and the root fsync'd before the line is written."""
    site = any_site
    names = [f"p{n}" for n in range(8)]
    syscalls = "write,fsync,fdatasync,sync_file_range"
    calls = traced_puts(site, traced_server, tmp_path, syscalls, names, b"x" * 5000)
    log_path = str(site.log.resolve())
    upload = re.compile(rf"{re.escape(str(site.root.resolve()))}/\.asrv_upload_.*")
    commits = log_commits_root(site)
    settle = "sync_file_range" if commits else "fdatasync"
    settled = [c for c in calls if upload.fullmatch(c.fd) and c.name == settle]
    assert len(settled) == len(names), [c.name for c in calls if upload.fullmatch(c.fd)]
    root_syncs = [c for c in calls if c.fd == str(site.root.resolve()) and c.name == "fsync"]
    assert bool(root_syncs) is not commits
    lines_written = 0
    for call in calls:
        if call.fd == log_path and call.name == "write":
            lines_written += call.data.count(b"\n")
            # Every PUT whose line this write holds had its upload settled before.
            assert sum(c.end < call.begin for c in settled) >= lines_written, call


# Crash points: kill -9 at an exact syscall of a PUT's or DELETE's critical step.

CRASH_SEQUENCE = [
    ("PUT", "a", {}),
    ("PUT", "b", {}),
    ("DELETE", "a", {}),
    ("PUT", "a", {"If-None-Match": "*"}),
    ("GET", "b", {}),
    ("DELETE", "b", {"If-Match": "*"}),
    ("PUT", "b", {}),
    ("DELETE", "a", {}),
    ("HEAD", "a", {}),
]
"""Requests sent one after another to a server with one worker, whose thread then makes
every file syscall in a known order (see CRASH_POINTS)."""

SHARED_CHANGE_POINTS = [
    ("linkat", 1),  # the first DELETE's intent
    ("unlinkat", 1),  # the first DELETE's name, its line durable
    ("unlinkat", 2),  # the first DELETE's intent
    ("fsetxattr", 3),  # the conditional PUT's stamp
    ("renameat", 6),  # installing the conditional PUT
    ("linkat", 2),  # the conditional DELETE's intent
    ("unlinkat", 3),  # the conditional DELETE's name
    ("unlinkat", 5),  # the last DELETE's name
]
ONE_JOURNAL_POINTS = [
    # The log on the root's ext4: its commit covers data written back, renames and stamps.
    ("sync_file_range", 1),  # the first PUT's upload written back, before its critical step
    ("fsetxattr", 1),  # stamping the first PUT's new version
    ("renameat", 1),  # the first PUT's upload to its intent name
    ("fdatasync", 1),  # the first PUT's line, written and being committed
    ("renameat", 2),  # installing the first PUT, its line durable
    ("fdatasync", 3),  # the first DELETE's line
    *SHARED_CHANGE_POINTS,
]
CRASH_POINTS = [
    # (syscall, its n-th call on the worker): what the process is doing when it dies
    ("fdatasync", 1),  # the first PUT's upload, before its critical step
    ("fsetxattr", 1),  # stamping the first PUT's new version
    ("renameat", 1),  # the first PUT's upload to its intent name
    ("fsync", 1),  # the leader syncs the root before the first PUT's line
    ("fdatasync", 2),  # the first PUT's line, written and being synced
    ("renameat", 2),  # installing the first PUT, its line durable
    ("fsync", 3),  # the root, before the first DELETE's line
    ("fdatasync", 5),  # the first DELETE's line
    *SHARED_CHANGE_POINTS,
]
"""The log on a tmpfs, the root on ext4: each upload fdatasync'd, the root fsync'd before
a batch's lines (its renames and stamps), the log fdatasync'd."""
LAYOUT_POINTS = [("one-journal", point) for point in ONE_JOURNAL_POINTS] + [
    ("log-elsewhere", point) for point in CRASH_POINTS
]


@pytest.mark.parametrize(
    ("layout", "point"),
    LAYOUT_POINTS,
    ids=[f"{layout}-{s}-{w}" for layout, (s, w) in LAYOUT_POINTS],
)
def test_a_crash_at_each_point_of_a_change_leaves_what_the_log_says(
    site: Site,
    traced_server: Callable[..., Traced],
    spawn_server: Callable[..., Process],
    layout: str,
    point: tuple[str, int],
) -> None:
    with contextlib.ExitStack() as stack:
        if layout == "log-elsewhere":
            site = stack.enter_context(log_elsewhere(site))
        assert log_commits_root(site) == (layout == "one-journal")
        check_a_crash_at(point, site, traced_server, spawn_server)


def check_a_crash_at(
    point: tuple[str, int],
    site: Site,
    traced_server: Callable[..., Traced],
    spawn_server: Callable[..., Process],
) -> None:
    syscall, when = point
    options = ["-e", f"trace={syscall}", "-e", f"inject={syscall}:signal=SIGKILL:when={when}"]
    server = traced_server(options, "-t", "1", seccomp=False, on=site)
    answered: dict[str, tuple[int, bytes]] = {}

    async def send_all() -> None:
        for number, (method, name, fields) in enumerate(CRASH_SEQUENCE):
            rid = f"r{number}"
            body = body_for(rid) if method == "PUT" else b""
            lines = [f"{method} /{name} HTTP/1.1", f"Request-Id: {rid}"]
            lines += [f"{field}: {value}" for field, value in fields.items()]
            if method == "PUT":
                lines.append(f"Content-Length: {len(body)}")
            try:
                answer = await exchange(
                    server.port, "\r\n".join(lines).encode() + b"\r\n\r\n" + body
                )
            except ConnectionError:
                return
            if not answer:
                return  # killed before answering
            head, _, rest = answer.partition(b"\r\n\r\n")
            answered[rid] = (int(head[9:12]), rest)

    asyncio.run(send_all())
    assert server.wait(30) != 0, "the crash point was never reached"
    assert len(answered) < len(CRASH_SEQUENCE)
    restarted = spawn_server("-t", "1", "--log", str(site.log))
    assert restarted.stop() == 0
    lines = site.log_lines()
    logged = {line.rsplit(",", 1)[1]: line for line in lines}
    for rid, (status, _) in answered.items():
        assert logged[rid].split(",")[2] == str(status), (rid, lines)
    # Every logged change is in effect, and no other: the files are the log's replay.
    files: dict[str, bytes] = {}
    for line in lines:
        method, uri, status, rid = line.split(",")
        if method == "PUT" and status in ("200", "201"):
            files[uri[1:]] = body_for(rid)
        elif method == "DELETE" and status == "200":
            del files[uri[1:]]
    assert {p.name: p.read_bytes() for p in site.root.iterdir()} == files, lines


def test_recovery_makes_a_line_durable_before_redoing_its_put(
    site: Site, traced_server: Callable[..., Traced], tmp_path: Path
) -> None:
    """Recovery trusts a line it reads in the log, which a crash may have left unsynced:
    write-ahead holds only if the log is synced before the redone rename."""
    site.log.write_bytes(b"PUT,/a,201,1\n")
    (site.root / ".asrv~13~a").write_bytes(b"logged, not yet in place")
    trace = tmp_path / "trace"
    calls = "fsync,fdatasync,rename,renameat,renameat2"
    server = traced_server(["-yy", "-e", f"trace={calls}", "-o", str(trace)])
    server.signal(signal.SIGTERM)
    assert server.wait(10) == 0
    assert (site.root / "a").read_bytes() == b"logged, not yet in place"
    trace_calls = parse_trace(trace.read_text())
    redo = next(c for c in trace_calls if c.name.startswith("rename") and c.data == b".asrv~13~a")
    log_path = str(site.log.resolve())
    assert any(
        c.fd == log_path and c.name in ("fsync", "fdatasync") and c.end < redo.begin
        for c in trace_calls
    ), "the log was not synced before the logged PUT was redone"


# Signals.


def test_second_sigterm_exits_at_once_and_restart_recovers(
    site: Site, spawn_server: Callable[..., Process]
) -> None:
    """The first SIGTERM waits for two half-sent PUTs (one streamed into an upload file, one
    held in memory); the second ends the process at once. Nothing more is answered, and a
    restart settles what was left: the log holds exactly the acknowledged requests."""
    server = spawn_server("--timeout", "10", "0")
    port = server.port

    async def scenario() -> tuple[float, list[bytes]]:
        assert await put(port, "a", b"A1", "put-a") == response(201, "Created")
        assert await get(port, "a", "get-a") == response(200, "OK", b"A1")
        assert await put(port, "b", b"B1", "put-b") == response(201, "Created")
        streamed = await asyncio.open_connection(HOST, port)
        head = f"PUT /a HTTP/1.1\r\nContent-Length: {4 * BIG}\r\nRequest-Id: half-a\r\n\r\n"
        streamed[1].write(head.encode() + b"s" * (2 * BIG))
        small = await asyncio.open_connection(HOST, port)
        small[1].write(b"PUT /b HTTP/1.1\r\nContent-Length: 10\r\nRequest-Id: half-b\r\n\r\nxx")
        for _ in range(500):
            if any(name.startswith(".asrv_upload_") for name in os.listdir(site.root)):
                break
            await asyncio.sleep(0.01)
        server.popen.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert server.popen.poll() is None, "the first SIGTERM must wait for the uploads"
        server.popen.send_signal(signal.SIGTERM)
        second = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(server.popen.wait, 5)
        elapsed = time.monotonic() - second
        answers = []
        for reader, writer in (streamed, small):
            try:
                answers.append(await asyncio.wait_for(reader.read(), 5))
            except ConnectionError:
                answers.append(b"")
            writer.close()
        return elapsed, answers

    elapsed, answers = asyncio.run(scenario())
    # The graceful wait would last up to the 10 s timeout; the second signal cuts it short.
    assert elapsed < 2, f"the second signal took {elapsed:.1f} s to end the process"
    assert server.popen.wait(5) == ExitStatus.INTERRUPTED
    assert answers == [b"", b""], "nothing may be answered after the second signal"
    assert temp_files(site.root), "the cut-short upload is left for recovery"

    restarted = spawn_server()
    assert any("recovered:" in line for line in restarted.earlier_lines)
    assert temp_files(site.root) == []
    assert asyncio.run(get(restarted.port, "a", "after")) == response(200, "OK", b"A1")
    assert restarted.stop() == 0
    assert site.log_lines() == [
        "PUT,/a,201,put-a",
        "GET,/a,200,get-a",
        "PUT,/b,201,put-b",
        "GET,/a,200,after",
    ]
    assert sorted(p.name for p in site.root.iterdir()) == ["a", "b"]
    assert (site.root / "b").read_bytes() == b"B1"
