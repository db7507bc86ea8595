"""Instructions per request: asrv under valgrind's callgrind, a measure that noise does not move.

    python benchmarks/instructions.py [--case KEY ...] [--repeat 1] [--windows 3]
                                      [--limit 170] [--keep DIR] [--ceiling] [NAME=SOURCE ...]

req/s and CPU time swing with whatever else the machine runs; the number of instructions
asrv executes per request hardly does, so it can judge a step far smaller than the spread
between rounds. Hardware counters (`perf stat -e instructions`) are not available on every
machine (not on a VM without a PMU), so this counts with callgrind, in user space only:
a system call counts as the instructions that make it, not as the kernel's work, which the
CPU time of `run.py` still shows.

Each variant is a NAME and the SOURCE checkout whose `asrv` package runs (default `now=.`),
as in `ab.py`: `before=/path/to/other/checkout now=.`; `--ceiling` adds the ceiling of
`run.py` (`ceiling.py`, no asrv code at all) as one more variant, so the distance to it can
be told in instructions too. For each of `--repeat` rounds, for
each case, for each variant (so variants interleave), one asrv (`-t 4`, a fresh root with a
4 KiB and a 1 MiB file, its audit log beside it, fsync on, `PYTHONHASHSEED=0`) runs under
`valgrind --tool=callgrind --fair-sched=yes` on 127.0.0.1 (valgrind runs one thread at a
time; with its default, unfair, scheduling, which thread runs next depends on timing, and so
does how asrv's loop and workers hand requests over: one request/connection windows then
spread by up to 12 %; fair scheduling keeps them within about 2 %). After the case's warm-up,
each of `--windows` windows is `callgrind_control --zero` (every thread's counters), the case's
requests, `callgrind_control --dump`: the dump holds what those requests cost, without
start-up, warm-up or shutdown. Ir per request is a window's total over its requests; the
table gives the median over all windows of all rounds, with the min-max. An empty window
(zero, then dump at once) is measured in each run too: what a window costs whatever its
length, to show that it does not matter.

The client, in this process, keeps one pattern so that every window does the same work:
waves of 4 requests, one on each of 4 connections, all sent before any response is read;
in the 1 request/connection cases each connection is closed as soon as its response and the
server's end of stream are read (as wrk does). Cases (keys as in `run.py`, with fewer
clients and a fixed number of requests per window): get4k-ka 2,000, get4k-close 500,
put4k-close 300 (each PUT replaces one of 16 files the warm-up made), get1m-ka 400.

Every valgrind run stops by itself: it runs under `timeout` (`--limit` seconds, then
SIGKILL 10 s later), no window starts that the previous one says would not end in time, and
asrv is stopped with SIGTERM as soon as the windows are done. `--keep DIR` keeps the
callgrind files for `callgrind_annotate`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench_servers import ASRV, ASRV_THREADS, CEILING, HERE, HOST, Running, ServerError, stop
from bench_tools import which

CLIENTS = 4
IO_TIMEOUT = 60.0
START_TIMEOUT = 120.0
CONTROL_TIMEOUT = 60.0
STOP_MARGIN = 30.0  # seconds kept for the stop and the final dump within --limit
ASRV_TIMEOUT = 30  # asrv's --timeout: under valgrind a wave takes far longer than natively
PUT_BODY = b"p" * 4096
PUT_FILES = 16
LISTENING = re.compile(r"listening on http://[^ ]*:(\d+) ")
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    path: str
    keep_alive: bool
    put: bool
    warmup: int
    requests: int  # per window


CASES = (
    Case("get4k-ka", "GET 4 KiB, keep-alive", "/file4k", True, False, 200, 2000),
    Case("get4k-close", "GET 4 KiB, 1 request/connection", "/file4k", False, False, 100, 500),
    Case("put4k-close", "PUT 4 KiB, 1 request/connection", "/put", False, True, 64, 300),
    Case("get1m-ka", "GET 1 MiB, keep-alive", "/file1m", True, False, 40, 400),
)
CASE_KEYS = [case.key for case in CASES]


@dataclass(frozen=True)
class Variant:
    name: str
    source: Path | None  # None: the ceiling


@dataclass(frozen=True)
class Window:
    requests: int
    ir: int
    objects: dict[str, int]

    @property
    def per_request(self) -> float:
        return self.ir / max(self.requests, 1)


@dataclass
class Results:
    windows: dict[tuple[str, str], list[Window]] = field(default_factory=dict)
    empty: list[int] = field(default_factory=list)  # Ir of the empty windows
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Tools:
    valgrind: str
    control: str
    limit: int


class MeasureError(Exception):
    """A run under valgrind did not go as it should."""


def main() -> int:
    args = _parse_args()
    valgrind, control = which("valgrind"), which("callgrind_control")
    if valgrind is None or control is None or which("timeout") is None:
        print(
            "benchmarks/instructions.py: needs valgrind, callgrind_control and timeout "
            "(Debian: apt-get install valgrind)",
            file=sys.stderr,
        )
        return 2
    tools = Tools(valgrind, control, args.limit)
    cases = [case for case in CASES if case.key in (args.case or CASE_KEYS)]
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="asrv-instructions-"))
    load = os.getloadavg()[0]
    try:
        for round_number in range(1, args.repeat + 1):
            for case in cases:
                for variant in args.variants:
                    label = f"round {round_number}/{args.repeat} {case.key:12} {variant.name}"
                    run = workdir / f"{round_number}-{case.key}-{variant.name}"
                    try:
                        empty, windows = _run(
                            variant, case, args.windows, tools, work=run, label=label
                        )
                    except (MeasureError, ServerError, OSError) as error:
                        results.failures.append(f"{label}: {error}")
                        print(f"{label}: FAILED: {error}", file=sys.stderr, flush=True)
                        continue
                    finally:
                        if args.keep is not None:
                            _keep(run, args.keep)
                        shutil.rmtree(run, ignore_errors=True)
                    results.empty.append(empty)
                    results.windows.setdefault((case.key, variant.name), []).extend(windows)
    except KeyboardInterrupt:
        print("benchmarks/instructions.py: interrupted; the server was stopped", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(_render(results, cases, args.variants, load))
    return 1 if results.failures else 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--case", action="append", choices=CASE_KEYS, help="repeatable")
    parser.add_argument("--repeat", type=_positive, default=1, help="rounds (default: %(default)s)")
    parser.add_argument(
        "--windows",
        type=_positive,
        default=3,
        help="measured windows per run (default: %(default)s)",
    )
    parser.add_argument(
        "--limit",
        type=_positive,
        default=170,
        help="seconds a valgrind run may take before it is killed (default: %(default)s)",
    )
    parser.add_argument("--keep", type=Path, help="copy the callgrind files into this directory")
    parser.add_argument(
        "--ceiling", action="store_true", help="measure the ceiling (ceiling.py) as well"
    )
    parser.add_argument(
        "variants",
        nargs="*",
        type=_variant,
        metavar="NAME=SOURCE",
        help="asrv checkouts to compare (default: now=.)",
    )
    args = parser.parse_args()
    if not args.variants:
        args.variants = [_variant("now=.")]
    if args.ceiling:
        args.variants.append(Variant(CEILING.key, None))
    if len({variant.name for variant in args.variants}) < len(args.variants):
        parser.error("variant names must differ")
    return args


def _variant(text: str) -> Variant:
    name, equals, source = text.partition("=")
    if not name or not equals or not source or "/" in name:
        raise argparse.ArgumentTypeError("expected NAME=SOURCE (a NAME without /)")
    path = Path(source).resolve()
    if not (path / "asrv" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{source}: no asrv package there")
    return Variant(name, path)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _run(
    variant: Variant, case: Case, windows: int, tools: Tools, *, work: Path, label: str
) -> tuple[int, list[Window]]:
    """One asrv (or the ceiling) under callgrind: warm-up, an empty window, then the
    measured windows; the empty window's Ir and the windows. The server is stopped before
    this returns."""
    root = work / "root"
    root.mkdir(parents=True)
    (root / "file4k").write_bytes(b"g" * 4096)
    (root / "file1m").write_bytes(b"G" * (1 << 20))
    out, vgdb = work / "callgrind.out", work / "vgdb"
    # --foreground: timeout signals valgrind alone, not its own process group as well, which
    # would give asrv a second SIGTERM during its shutdown (and make it leave at once).
    argv = ["timeout", "--foreground", "--kill-after=10", str(tools.limit)]
    argv += [tools.valgrind, "--tool=callgrind"]
    argv += [f"--callgrind-out-file={out}", f"--vgdb-prefix={vgdb}"]
    argv += ["--fair-sched=yes", "--compress-strings=no", "--compress-pos=no"]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if variant.source is None:
        argv += [sys.executable, str(HERE / "ceiling.py"), "--host", HOST, "--root", str(root)]
        argv += ["--log", str(work / "ceiling.log"), "0"]
    else:
        argv += [sys.executable, "-m", "asrv", "--host", HOST, "--root", str(root)]
        argv += ["--log", str(work / "audit.log"), "-t", str(ASRV_THREADS)]
        argv += ["--timeout", str(ASRV_TIMEOUT), "0"]
        env["PYTHONPATH"] = str(variant.source)
    stderr_path = work / "stderr"
    started = time.monotonic()
    deadline = started + tools.limit - STOP_MARGIN
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=variant.source,  # `python -m` puts the working directory first on the path
            start_new_session=True,
        )
    server = Running(ASRV if variant.source else CEILING, process, 0, stderr_path)
    try:
        server.port = _wait_listening(server)
        pid = _valgrind_pid(process.pid)
        sent = _drive(server.port, case, 0, case.warmup)
        _control(tools.control, vgdb, pid, "--zero")
        _control(tools.control, vgdb, pid, "--dump=empty")
        empty = _read_dump(Path(f"{out}.1"), 0).ir
        measured: list[Window] = []
        longest = 0.0
        while len(measured) < windows:
            if time.monotonic() + longest > deadline:
                print(
                    f"{label}: {len(measured)} of {windows} windows within --limit {tools.limit} s",
                    file=sys.stderr,
                    flush=True,
                )
                break
            begun = time.monotonic()
            _control(tools.control, vgdb, pid, "--zero")
            sent = _drive(server.port, case, sent, case.requests)
            _control(tools.control, vgdb, pid, f"--dump={case.key}")
            measured.append(_read_dump(Path(f"{out}.{len(measured) + 2}"), case.requests))
            longest = max(longest, time.monotonic() - begun)
        if not measured:
            raise MeasureError(f"no window fits in --limit {tools.limit} s")
        values = ", ".join(f"{window.per_request:,.0f}" for window in measured)
        print(
            f"{label}: Ir/request {values} (empty window {empty:,}; "
            f"{time.monotonic() - started:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        return empty, measured
    finally:
        stop(server)
        if process.returncode not in (0, None):
            print(
                f"{label}: the server under valgrind exited with status {process.returncode}",
                file=sys.stderr,
                flush=True,
            )


def _wait_listening(server: Running) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        text = server.stderr_path.read_text(errors="replace")
        match = LISTENING.search(text)
        if match is not None:
            return int(match[1])
        if server.process.poll() is not None:
            break
        time.sleep(0.2)
    text = server.stderr_path.read_text(errors="replace")
    raise MeasureError(f"{server.kind.key} did not listen under valgrind: {text.strip()[-2000:]}")


def _valgrind_pid(timeout_pid: int) -> int:
    """The process `timeout` started: valgrind, running asrv (one PID for both)."""
    children = Path(f"/proc/{timeout_pid}/task/{timeout_pid}/children").read_text().split()
    if len(children) != 1:
        raise MeasureError(f"timeout {timeout_pid} has children {children}, expected one")
    return int(children[0])


def _control(control: str, vgdb: Path, pid: int, action: str) -> None:
    argv = [control, f"--vgdb-prefix={vgdb}", action, str(pid)]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=CONTROL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise MeasureError(f"callgrind_control {action} took over {CONTROL_TIMEOUT:g} s") from None
    if result.returncode != 0 or "OK" not in result.stdout:
        raise MeasureError(f"callgrind_control {action}: {(result.stdout + result.stderr).strip()}")


def _read_dump(path: Path, requests: int) -> Window:
    """The total Ir of a callgrind dump, and each object file's own (exclusive) share."""
    total: int | None = None
    objects: dict[str, int] = {}
    current = "?"
    after_call = False
    with path.open(errors="replace") as dump:
        for line in dump:
            if after_call:  # the inclusive cost of a call: counted where it is spent
                after_call = False
                continue
            head = line[:1]
            if head.isdigit() or head in "+-*":
                parts = line.split()
                if len(parts) > 1:
                    objects[current] = objects.get(current, 0) + int(parts[1])
            elif line.startswith("ob="):
                current = _object_name(line[3:].strip())
            elif line.startswith("calls="):
                after_call = True
            elif line.startswith("summary:"):
                total = int(line.split()[1])
    if total is None:
        raise MeasureError(f"{path.name}: no summary line")
    return Window(requests, total, objects)


def _object_name(path: str) -> str:
    if path == "???":
        return "no object"  # valgrind's own trampolines
    name = Path(path).name
    for prefix, short in (
        ("libpython", "libpython (interpreter)"),
        ("python", "python"),
        ("loop.cpython", "uvloop"),
        ("libc.so", "libc"),
        ("ld-linux", "ld.so"),
    ):
        if name.startswith(prefix):
            return short
    return re.sub(r"\.cpython-[^.]*\.so$", "", name) or "?"


def _drive(port: int, case: Case, first: int, count: int) -> int:
    """Send `count` requests of `case` in waves of CLIENTS; return the next request number."""
    done = 0
    if case.keep_alive:
        connections = [_connect(port) for _ in range(CLIENTS)]
        try:
            while done < count:
                wave = connections[: min(CLIENTS, count - done)]
                for connection in wave:
                    connection.sendall(_request(case, first + done, close=False))
                for connection in wave:
                    _expect(case, _read_response(connection))
                done += len(wave)
        finally:
            for connection in connections:
                connection.close()
        return first + done
    while done < count:
        wave = [_connect(port) for _ in range(min(CLIENTS, count - done))]
        try:
            for index, connection in enumerate(wave):
                connection.sendall(_request(case, first + done + index, close=True))
            for connection in wave:
                _expect(case, _read_response(connection))
                if connection.recv(1):
                    raise MeasureError("more bytes after a Connection: close response")
                connection.close()
        finally:
            for connection in wave:
                connection.close()
        done += len(wave)
    return first + done


def _connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=IO_TIMEOUT)


def _request(case: Case, number: int, *, close: bool) -> bytes:
    connection = "Connection: close\r\n" if close else ""
    if case.put:
        return (
            f"PUT {case.path}{number % PUT_FILES} HTTP/1.1\r\nHost: {HOST}\r\n{connection}"
            f"Content-Length: {len(PUT_BODY)}\r\n\r\n"
        ).encode() + PUT_BODY
    return f"GET {case.path} HTTP/1.1\r\nHost: {HOST}\r\n{connection}\r\n".encode()


def _read_response(connection: socket.socket) -> int:
    """Read one response framed by its Content-Length; its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = connection.recv(65536)
        if not piece:
            raise MeasureError("connection closed before a whole response")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status, length = STATUS_LINE.match(head), CONTENT_LENGTH.search(head)
    if status is None or length is None:
        raise MeasureError(f"unexpected response head: {head[:200]!r}")
    remaining = int(length[1]) - len(body)
    while remaining > 0:
        piece = connection.recv(min(remaining, 1 << 20))
        if not piece:
            raise MeasureError("connection closed in the middle of a body")
        remaining -= len(piece)
    if remaining < 0:
        raise MeasureError("more bytes than the Content-Length said")
    return int(status[1])


def _expect(case: Case, status: int) -> None:
    if status not in ((200, 201) if case.put else (200,)):
        raise MeasureError(f"{case.key}: status {status}")


def _keep(run: Path, keep: Path) -> None:
    keep.mkdir(parents=True, exist_ok=True)
    for path in sorted(run.glob("callgrind.out*")):
        shutil.copy2(path, keep / f"{run.name}.{path.name}")


def _render(
    results: Results, cases: Sequence[Case], variants: Sequence[Variant], load: float
) -> str:
    lines = [
        f"asrv instructions per request (callgrind Ir, user space), "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, `{' '.join(sys.argv)}`; Python "
        f"{sys.version.split()[0]}, {_valgrind_version()}; 1-min load average {load:.2f} "
        "before (Ir does not depend on it)",
        "",
        "| case | variant | requests x windows | Ir/request, median (min-max) | ÷ first |",
        "|---|---|---|---|---|",
    ]
    for case in cases:
        first = results.windows.get((case.key, variants[0].name))
        for variant in variants:
            windows = results.windows.get((case.key, variant.name))
            if not windows:
                lines.append(f"| {case.title} | {variant.name} | | failed | |")
                continue
            values = [window.per_request for window in windows]
            median = statistics.median(values)
            ratio = "-"
            if first:
                ratio = f"{median / statistics.median(w.per_request for w in first):.3f}"
            lines.append(
                f"| {case.title} | {variant.name} | {case.requests:,} x {len(windows)} "
                f"| {median:,.0f} ({min(values):,.0f}-{max(values):,.0f}) | {ratio} |"
            )
    lines += ["", *_objects(results, cases, variants[0])]
    empty = f"{statistics.median(results.empty):,.0f} Ir" if results.empty else "?"
    lines += [
        "",
        "- Ir/request: a window's Ir (every thread, user space) over its requests, in asrv "
        f"-t {ASRV_THREADS} (fsync on) under callgrind after warm-up; median over the windows "
        f"of every round. An empty window cost {empty} (median): what any window pays "
        "whatever its length, a few Ir per request at most. Client: waves of 4 requests, one "
        "per connection, all sent before any response is read.",
    ]
    lines += [f"- FAILED {failure}" for failure in results.failures]
    return "\n".join(lines)


def _objects(results: Results, cases: Sequence[Case], variant: Variant) -> list[str]:
    """Where the variant's instructions go, per request, by object file."""
    rows: list[tuple[Case, dict[str, float]]] = []
    totals: dict[str, float] = {}
    for case in cases:
        windows = results.windows.get((case.key, variant.name))
        if not windows:
            continue
        requests = sum(window.requests for window in windows)
        share: dict[str, float] = {}
        for window in windows:
            for name, ir in window.objects.items():
                share[name] = share.get(name, 0.0) + ir / requests
        rows.append((case, share))
        for name, value in share.items():
            totals[name] = totals.get(name, 0.0) + value
    if not rows:
        return []
    shown = sorted(totals, key=lambda name: -totals[name])[:5]
    lines = [
        f"Ir/request by object file ({variant.name}; each object's own instructions, "
        "not those of what it calls):",
        "",
        "| case | " + " | ".join(shown) + " | other |",
        "|---|" + "---|" * (len(shown) + 1),
    ]
    for case, share in rows:
        other = sum(value for name, value in share.items() if name not in shown)
        cells = " | ".join(f"{share.get(name, 0.0):,.0f}" for name in shown)
        lines.append(f"| {case.title} | {cells} | {other:,.0f} |")
    return lines


def _valgrind_version() -> str:
    result = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "valgrind ?"


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
