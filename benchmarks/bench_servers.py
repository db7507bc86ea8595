"""Start and stop the servers under test on 127.0.0.1, and read their CPU time and memory.

Every server runs as a child process in its own session, on its own port, with its own
root; it is stopped by its PID (SIGTERM, then SIGKILL if it does not go within a bound), and
any process it spawned (nginx's worker) is checked to be gone.

asrv runs in its default connection mode in every case: persistent connections, closed after
a response to a request that says `Connection: close`. Which of the two a case measures is
up to the client; `connection_mode_problem` checks that the server does what the case needs.

The ceiling (`ceiling.py`) is a bare uvloop protocol with asrv's loop, listening socket and
group-committed log sync, and no file work: a fixed response per request. What asrv falls
short of it is what asrv's own code costs.

Given a `Tls` (a certificate and key made by `make_certificate`), asrv and nginx serve HTTPS
with it instead of HTTP; aiohttp, http.server and the ceiling are not run over TLS.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
ASRV_THREADS = 4
HERE = Path(__file__).resolve().parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 15.0
STOP_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0

NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    client_body_temp_path {body_temp};
    proxy_temp_path {work}/proxy-temp;
    fastcgi_temp_path {work}/fastcgi-temp;
    uwsgi_temp_path {work}/uwsgi-temp;
    scgi_temp_path {work}/scgi-temp;
    server {{
        listen {host}:{port}{listen_ssl};
        root {root};{ssl_files}
        location / {{
            dav_methods PUT;
            create_full_put_path off;
        }}
    }}
}}
"""
# TLS 1.3 as asrv (Python's default context) agrees it: nginx before 1.23.4 leaves it out of
# its default protocols. Its defaults otherwise (ciphers, no session cache): with keep-alive,
# each connection makes one full handshake, as it does with asrv.
NGINX_SSL_FILES = """
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;"""


@dataclass(frozen=True)
class ServerKind:
    """One server as it appears in the table."""

    key: str
    label: str
    supports_put: bool
    supports_tls: bool


ASRV = ServerKind("asrv", "asrv", True, True)
ASRV_NO_FSYNC = ServerKind("asrv-no-fsync", "asrv --no-fsync", True, True)
CEILING = ServerKind("ceiling", "ceiling (fixed response, fsync)", True, False)
NGINX = ServerKind("nginx", "nginx (no fsync)", True, True)
AIOHTTP = ServerKind("aiohttp", "aiohttp+uvloop (no fsync)", True, False)
HTTP_SERVER = ServerKind("http.server", "http.server", False, False)
KINDS = (ASRV, ASRV_NO_FSYNC, CEILING, NGINX, AIOHTTP, HTTP_SERVER)


@dataclass(frozen=True)
class Tls:
    """A self-signed certificate for 127.0.0.1 and its key, PEM files the servers share."""

    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this certificate (wrk checks none)."""
        return ssl.create_default_context(cafile=str(self.cert))


@dataclass
class Running:
    kind: ServerKind
    process: subprocess.Popen[bytes]
    port: int
    stderr_path: Path
    stopped_output: str = ""
    tls: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{HOST}:{self.port}{path}"


class ServerError(Exception):
    """A server did not start or did not stop as it should."""


def make_certificate(openssl: str, directory: Path) -> Tls:
    """Make a self-signed RSA-2048 certificate for 127.0.0.1, and its key, in `directory`."""
    tls = Tls(directory / "cert.pem", directory / "key.pem")
    argv = [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30"]
    argv += ["-subj", f"/CN={HOST}", "-addext", f"subjectAltName=IP:{HOST}"]
    argv += ["-keyout", str(tls.key), "-out", str(tls.cert)]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ServerError(f"openssl req failed: {result.stderr.strip()}")
    return tls


@contextmanager
def serving(
    kind: ServerKind, root: Path, work: Path, *, nginx: str, tls: Tls | None = None
) -> Iterator[Running]:
    """Run one server for the duration of the block (over HTTPS with `tls`); its stderr ends
    up in `stopped_output`."""
    if tls is not None and not kind.supports_tls:
        raise ValueError(f"{kind.label} is not run over TLS")
    server = _start(kind, root, work, nginx=nginx, tls=tls)
    try:
        yield server
    finally:
        stop(server)


def start_asrv(
    root: Path,
    work: Path,
    *,
    fsync: bool,
    source: Path | None = None,
    options: Sequence[str] = (),
    tls: Tls | None = None,
) -> Running:
    """Start asrv (from the checkout `source` if given, else the installed one), with
    extra command-line `options`, in its default connection mode (persistent); over HTTPS
    with `tls`."""
    argv = [sys.executable, "-m", "asrv", "--host", HOST, "--root", str(root)]
    argv += ["--log", str(work / "audit.log"), "-t", str(ASRV_THREADS), *options]
    if tls is not None:
        argv += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
    if not fsync:
        argv.append("--no-fsync")
    argv.append("0")
    kind = ASRV if fsync else ASRV_NO_FSYNC
    stderr_path = work / f"{kind.key}.stderr"
    # `python -m` puts the working directory first on the path: run in the checkout.
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
    process = _spawn(argv, stderr_path, env, source)
    server = Running(kind, process, 0, stderr_path, tls=tls is not None)
    try:
        server.port = _wait_for_reported_port(server)
    except BaseException:
        stop(server)
        raise
    return server


def start_ceiling(root: Path, work: Path, *, fsync: bool = True) -> Running:
    """Start the ceiling (`ceiling.py`) on a port it picks, logging to `work`/ceiling.log;
    it serves `root`'s file1m with sendfile and a fixed 4 KiB for any other GET."""
    argv = [sys.executable, str(HERE / "ceiling.py"), "--root", str(root), "--host", HOST]
    argv += ["--log", str(work / "ceiling.log"), "0"]
    if not fsync:
        argv.insert(-1, "--no-fsync")
    stderr_path = work / f"{CEILING.key}.stderr"
    server = Running(CEILING, _spawn(argv, stderr_path), 0, stderr_path)
    try:
        server.port = _wait_for_reported_port(server)
    except BaseException:
        stop(server)
        raise
    return server


def stop(server: Running) -> None:
    """SIGTERM the server by PID, wait (bounded), SIGKILL if needed; reap anything it left."""
    children = [(pid, _start_time(pid)) for pid in _descendants(server.pid)]
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=STOP_TIMEOUT)
            server.stopped_output += f"[killed: no exit within {STOP_TIMEOUT:g} s of SIGTERM]\n"
    for pid, started in children:
        _kill_leftover(pid, started)
    server.stopped_output = _read(server.stderr_path) + server.stopped_output


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants, in seconds."""
    total = 0
    for each in [pid, *_descendants(pid)]:
        fields = _stat_fields(each)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
    return total / CLOCK_TICKS


def peak_rss_kib(pid: int) -> int:
    """VmHWM of a process: the peak resident set size, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise ServerError(f"no VmHWM in /proc/{pid}/status")
    return int(match[1])


def connection_mode_problem(
    port: int, path: str, *, keep_alive: bool, tls: ssl.SSLContext | None = None
) -> str | None:
    """None if the server on `port` treats connections as a case needs, else what it did.

    A keep-alive case needs two GETs of `path`, sent one after the other on one connection
    without `Connection: close`, both answered. A one-request-per-connection case (wrk sends
    `Connection: close`) needs the response to say `Connection: close` and the connection
    closed after it: wrk reconnects only when the response says so. With `tls`, the probe
    speaks HTTPS with that client context.
    """
    request = f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n"
    try:
        with _connect(port, tls) as connection:
            if keep_alive:
                for number in (1, 2):
                    try:
                        connection.sendall(f"{request}\r\n".encode())
                        answered = _read_response(connection) is not None
                    except ConnectionError:
                        answered = False
                    if not answered:
                        return f"closed the connection after {number - 1} of 2 requests"
                return None
            connection.sendall(f"{request}Connection: close\r\n\r\n".encode())
            head = _read_response(connection)
            if head is None:
                return "closed the connection without answering a Connection: close request"
            if re.search(rb"\r\nconnection: *close\r\n", head, re.IGNORECASE) is None:
                return "answered a Connection: close request without saying Connection: close"
            if connection.recv(1) != b"":
                return "sent more after the response to a Connection: close request"
    except OSError as error:  # a timeout too, and a TLS error: ssl.SSLError is an OSError
        return f"probe failed: {type(error).__name__}: {error}"
    return None


def tls_session(port: int, tls: ssl.SSLContext) -> str:
    """The protocol and cipher the server on `port` agrees with a client using `tls`."""
    try:
        with _connect(port, tls) as connection:
            assert isinstance(connection, ssl.SSLSocket)
            cipher = connection.cipher()
            name = cipher[0] if cipher is not None else "?"
            return f"{connection.version()} {name}"
    except OSError as error:
        return f"no TLS session: {type(error).__name__}: {error}"


def _connect(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    """A connection to the server on `port`, over TLS (handshake done) with `tls`."""
    connection = socket.create_connection((HOST, port), timeout=PROBE_TIMEOUT)
    if tls is None:
        return connection
    try:
        return tls.wrap_socket(connection, server_hostname=HOST)
    except BaseException:
        connection.close()
        raise


def _read_response(connection: socket.socket) -> bytes | None:
    """Read one response framed by its Content-Length; its head (ending with CRLF), or None
    if the connection ended before a whole response."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = connection.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    if length is None:
        raise ConnectionError(f"response without Content-Length: {head[:200]!r}")
    remaining = int(length[1]) - len(body)
    while remaining > 0:
        piece = connection.recv(min(remaining, 65536))
        if not piece:
            return None
        remaining -= len(piece)
    if remaining < 0:
        raise ConnectionError("more bytes than the Content-Length said")
    return head + b"\r\n"


def _start(kind: ServerKind, root: Path, work: Path, *, nginx: str, tls: Tls | None) -> Running:
    if kind in (ASRV, ASRV_NO_FSYNC):
        return start_asrv(root, work, fsync=kind is ASRV, tls=tls)
    if kind is CEILING:
        if tls is not None:
            raise ValueError(f"{kind.label} is not run over TLS")
        return start_ceiling(root, work)
    last_error: ServerError | None = None
    for _attempt in range(3):  # a port found free can be taken before the server binds it
        port = _free_port()
        stderr_path = work / f"{kind.key}.stderr"
        if kind is NGINX:
            argv = _nginx_argv(nginx, root, work, port, tls)
        elif kind is AIOHTTP:
            argv = [sys.executable, str(HERE / "aiohttp_peer.py"), "--root", str(root)]
            argv += ["--host", HOST, str(port)]
        elif kind is HTTP_SERVER:
            argv = [sys.executable, "-m", "http.server", "--bind", HOST]
            argv += ["--directory", str(root), str(port)]
        else:
            raise ValueError(kind)
        server = Running(kind, _spawn(argv, stderr_path), port, stderr_path, tls=tls is not None)
        try:
            _wait_for_port(server)
        except ServerError as error:
            stop(server)
            last_error = error
            continue
        except BaseException:
            stop(server)
            raise
        return server
    assert last_error is not None
    raise last_error


def _nginx_argv(nginx: str, root: Path, work: Path, port: int, tls: Tls | None) -> list[str]:
    body_temp = root.parent / "nginx-body-temp"
    conf = work / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user="user root root;\n" if os.geteuid() == 0 else "",
            work=work,
            body_temp=body_temp,
            host=HOST,
            port=port,
            listen_ssl="" if tls is None else " ssl",
            root=root,
            ssl_files="" if tls is None else NGINX_SSL_FILES.format(cert=tls.cert, key=tls.key),
        )
    )
    return [nginx, "-p", f"{work}/", "-c", str(conf), "-e", str(work / "nginx-error.log")]


def _spawn(
    argv: list[str],
    stderr_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    with stderr_path.open("wb") as stderr:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,  # the terminal's Ctrl-C reaches us; we stop the servers
        )


def _wait_for_reported_port(server: Running) -> int:
    """The port from the `listening on http://HOST:PORT ` line asrv (or the ceiling) prints."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = re.search(r"listening on https?://[^ ]*:(\d+) ", _read(server.stderr_path))
        if match is not None:
            return int(match[1])
        if server.process.poll() is not None:
            break
        time.sleep(0.02)
    raise ServerError(f"{server.kind.label} did not start: {_read(server.stderr_path).strip()}")


def _wait_for_port(server: Running) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with socket.create_connection((HOST, server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.02)
    extra = ""
    if server.kind is NGINX:
        extra = _read(server.stderr_path.parent / "nginx-error.log")
    raise ServerError(
        f"{server.kind.label} did not listen on {server.port}: "
        f"{_read(server.stderr_path).strip()} {extra.strip()}"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    pending = [pid]
    while pending:
        children = parents.get(pending.pop(), [])
        found += children
        pending += children
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, ...]."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return None if fields is None else fields[19]  # starttime (stat field 22)


def _kill_leftover(pid: int, started: str | None) -> None:
    """SIGKILL a process the stopped server spawned, if it outlives it by 5 s (same PID and
    start time, so never a process that merely reused the number)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        fields = _stat_fields(pid)
        if fields is None or fields[0] in {"Z", "X"} or fields[19] != started:
            return
        time.sleep(0.05)
    with suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
