"""Benchmark asrv against its ceiling, nginx, aiohttp and http.server on this machine, with wrk.

    python benchmarks/run.py [--seconds 5] [--rounds 3] [--out bench-results/latest.md]
                             [--case KEY ...] [--server KEY ...]

Every server runs on 127.0.0.1 on its own port with its own fresh root, one at a time. The
cells run in interleaved rounds (for each round, for each case: asrv, asrv --no-fsync, the
ceiling, nginx, aiohttp, http.server), so drift on a shared machine hits all servers alike,
and each ratio of asrv to a peer is taken within a round before the median over rounds. Each
cell reports the median req/s with its min-max over rounds, the median p50/p99 latency, and
the server's CPU time (user + sys from /proc/PID/stat over the wrk run) per request. Then
asrv's peak RSS over a 1 GiB PUT and a 1 GiB GET. wrk and nginx are installed with apt-get
if missing; aiohttp and uvloop must be importable (the nox session `bench` installs them).

The ceiling (`ceiling.py`) is what a server of asrv's shape reaches when its own code costs
nothing: uvloop, a socket bound as asrv binds it, one protocol that answers a fixed response
(4 KiB from memory, `file1m` with sendfile, 201 for a PUT) and one log line per request made
durable by one group-committed fdatasync per loop iteration's batch, before the response; no
file work. Every asrv case is reported as a share of the ceiling (`asrv ÷ ceiling`) as well as
of nginx: the distance to the ceiling is what asrv's code costs.

asrv runs in its default (persistent) connection mode in every case: in the
1 request/connection cases wrk sends `Connection: close`, so asrv closes after each response.
A probe before each asrv cell checks that it does (in the keep-alive cases, that it keeps the
connection), and the report notes any mismatch.

The TLS cases (`-tls` keys) serve the same files over HTTPS, asrv with --tls-cert/--tls-key
and nginx with `listen ssl`, both with one self-signed certificate for 127.0.0.1 that the run
makes with openssl in its temporary directory; aiohttp and http.server are not run over TLS.
The probe speaks TLS there, and the report says which protocol and cipher each server agreed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import FrameType

from bench_memory import MemoryResult, measure
from bench_servers import (
    AIOHTTP,
    ASRV,
    ASRV_NO_FSYNC,
    ASRV_THREADS,
    CEILING,
    KINDS,
    NGINX,
    ServerError,
    ServerKind,
    Tls,
    connection_mode_problem,
    cpu_seconds,
    make_certificate,
    serving,
    tls_session,
)
from bench_tools import (
    ToolError,
    ensure_modules,
    ensure_openssl,
    ensure_programs,
    program_version,
)
from bench_wrk import WRK_THREADS, WrkError, WrkResult, run_wrk, write_scripts

SHUTDOWN_LINE = re.compile(r"stopped after (\d+) requests logged in (\d+) log flushes")
USUAL_LINE = re.compile(r"listening on https?://|stopped after \d+ requests")
LOGGING_KINDS = (ASRV, ASRV_NO_FSYNC, CEILING)  # they say how often they flushed their log
CELL_OVERHEAD_SECONDS = 1.0  # start, readiness, stop, fresh root: measured on 2 cores
MEMORY_SECONDS = 15


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    path: str
    clients: int
    keep_alive: bool
    script: str | None = None
    writes: bool = False
    tls: bool = False


CASES = (
    Case("get4k-close", "GET 4 KiB, 1 request/connection, 16 clients", "/file4k", 16, False),
    Case("get4k-ka", "GET 4 KiB, keep-alive, 64 clients", "/file4k", 64, True),
    Case("get1m-ka", "GET 1 MiB, keep-alive, 16 clients", "/file1m", 16, True),
    Case(
        "put4k-close",
        "PUT 4 KiB, 1 request/connection, 16 clients",
        "/",
        16,
        False,
        "put-close",
        True,
    ),
    Case(
        "mix",
        "90% GET / 10% PUT of 4 KiB on 16 files, keep-alive, 16 clients",
        "/",
        16,
        True,
        "mix",
        True,
    ),
    Case(
        "get4k-ka-tls", "GET 4 KiB over TLS, keep-alive, 64 clients", "/file4k", 64, True, tls=True
    ),
    Case(
        "get1m-ka-tls", "GET 1 MiB over TLS, keep-alive, 16 clients", "/file1m", 16, True, tls=True
    ),
)


@dataclass(frozen=True)
class Target:
    """asrv (fsync on) at least `share` of a peer's req/s in one case (issue's targets)."""

    case: str
    peer: ServerKind
    share: float


TARGETS = (
    Target("get4k-close", NGINX, 0.5),
    Target("get4k-close", AIOHTTP, 5.0),
    Target("get4k-ka", NGINX, 0.5),
    Target("get4k-ka", AIOHTTP, 8.0),
    Target("put4k-close", NGINX, 0.6),
    Target("put4k-close", AIOHTTP, 1.0),
    Target("get1m-ka", NGINX, 1.2),
)
MOST_FLUSHES_PER_1K_GETS = 20  # at 64 keep-alive clients
MOST_MEMORY_MIB = 100  # over a 1 GiB PUT and GET


@dataclass(frozen=True)
class Sample:
    round: int
    wrk: WrkResult
    cpu_us_per_request: float
    flushes_per_1k: float | None


@dataclass
class Cell:
    case: Case
    kind: ServerKind
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)
    tls_sessions: set[str] = field(default_factory=set)

    @property
    def applicable(self) -> bool:
        puts = self.kind.supports_put or not self.case.writes
        return puts and (self.kind.supports_tls or not self.case.tls)

    def rates(self) -> list[float]:
        return [sample.wrk.rate for sample in self.samples]

    def rate_in_round(self, round_number: int) -> float | None:
        for sample in self.samples:
            if sample.round == round_number:
                return sample.wrk.rate
        return None


@dataclass(frozen=True)
class Tools:
    wrk: str
    nginx: str
    scripts: dict[str, Path]
    tls: Tls | None  # made when a TLS case runs


def main() -> int:
    args = _parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    cases = [case for case in CASES if args.case is None or case.key in args.case]
    kinds = [kind for kind in KINDS if args.server is None or kind.key in args.server]
    try:
        ensure_modules()
        tls = any(case.tls for case in cases)
        wrk, nginx = ensure_programs(tls=tls)
        openssl = ensure_openssl() if tls else None
    except ToolError as error:
        print(f"benchmarks/run.py: {error}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="asrv-bench-"))
    try:
        certificate = None if openssl is None else make_certificate(openssl, workdir)
        tools = Tools(wrk, nginx, write_scripts(workdir), certificate)
        cells = {(case.key, kind.key): Cell(case, kind) for case in cases for kind in kinds}
        _announce(cells, args.seconds, args.rounds)
        for round_number in range(1, args.rounds + 1):
            for case in cases:
                for kind in kinds:
                    cell = cells[case.key, kind.key]
                    if cell.applicable:
                        _run_cell(cell, round_number, args, tools, workdir)
        memory = _run_memory(workdir)
    except KeyboardInterrupt:
        print("benchmarks/run.py: interrupted; every server was stopped", file=sys.stderr)
        return 130
    except ServerError as error:  # the certificate could not be made
        print(f"benchmarks/run.py: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = render(cells, memory, args, nginx, (load_before, os.getloadavg()[0]))
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    print(f"\nwritten to {args.out}", file=sys.stderr)
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seconds", type=_positive, default=5, help="length of each wrk run (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds", type=_positive, default=3, help="interleaved rounds (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results/latest.md"),
        help="report file, also printed (default: %(default)s)",
    )
    parser.add_argument(
        "--case",
        action="append",
        choices=[case.key for case in CASES],
        help="run only this case (repeatable; default: all)",
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=[kind.key for kind in KINDS],
        help="run only this server (repeatable; default: all)",
    )
    return parser.parse_args()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _announce(cells: dict[tuple[str, str], Cell], seconds: int, rounds: int) -> None:
    count = sum(cell.applicable for cell in cells.values())
    estimate = count * rounds * (seconds + CELL_OVERHEAD_SECONDS) + MEMORY_SECONDS
    print(
        f"{count} cells x {rounds} rounds x {seconds} s, then the 1 GiB memory check: "
        f"about {estimate / 60:.1f} min",
        file=sys.stderr,
        flush=True,
    )


def fresh_site(workdir: Path, name: str) -> tuple[Path, Path]:
    """A new work directory under `workdir`, and in it a root holding the cases' files."""
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    root = work / "root"
    root.mkdir()
    (root / "file4k").write_bytes(b"g" * 4096)
    (root / "file1m").write_bytes(b"G" * (1 << 20))
    for index in range(16):
        (root / f"mix{index}").write_bytes(b"m" * 4096)
    return work, root


def _run_cell(
    cell: Cell, round_number: int, args: argparse.Namespace, tools: Tools, workdir: Path
) -> None:
    case, kind = cell.case, cell.kind
    work, root = fresh_site(workdir, f"{case.key}-{kind.key}")
    label = f"round {round_number}/{args.rounds}: {case.title}: {kind.label}"
    tls = tools.tls if case.tls else None
    client = None if tls is None else tls.client_context()
    try:
        with serving(kind, root, work, nginx=tools.nginx, tls=tls) as server:
            if kind in (ASRV, ASRV_NO_FSYNC):
                _probe_connection_mode(cell, server.port, round_number, label, client)
            if client is not None:
                cell.tls_sessions.add(tls_session(server.port, client))
            before = cpu_seconds(server.pid)
            result = run_wrk(
                tools.wrk,
                server.url(case.path),
                clients=case.clients,
                seconds=args.seconds,
                close=not case.keep_alive,
                script=tools.scripts[case.script] if case.script else None,
            )
            cpu = cpu_seconds(server.pid) - before
        flushes = None
        if kind in LOGGING_KINDS:
            flushes = flushes_per_1k(server.stopped_output)
            cell.remarks += _server_remarks(kind, server.stopped_output, result, round_number)
    except (ServerError, WrkError) as error:
        cell.failures.append(f"round {round_number}: {error}")
        print(f"{label}: FAILED: {error}", file=sys.stderr, flush=True)
        return
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sample = Sample(round_number, result, 1e6 * cpu / max(result.requests, 1), flushes)
    cell.samples.append(sample)
    errors = f", errors: {result.describe_errors()}" if result.errors else ""
    print(
        f"{label}: {result.rate:,.0f} req/s, p99 {result.p99_ms:.2f} ms, "
        f"{sample.cpu_us_per_request:.0f} us CPU/req{errors}",
        file=sys.stderr,
        flush=True,
    )


def _probe_connection_mode(
    cell: Cell, port: int, round_number: int, label: str, tls: ssl.SSLContext | None
) -> None:
    """Note it when asrv would not measure the case's connection mode."""
    problem = connection_mode_problem(port, "/file4k", keep_alive=cell.case.keep_alive, tls=tls)
    if problem is not None:
        mode = "keep-alive" if cell.case.keep_alive else "1 request/connection"
        remark = f"round {round_number}: {mode} case, but asrv {problem}"
        cell.remarks.append(remark)
        print(f"{label}: WARNING: {remark}", file=sys.stderr, flush=True)


def _server_remarks(
    kind: ServerKind, output: str, result: WrkResult, round_number: int
) -> list[str]:
    """Anything unusual asrv (or the ceiling) said, and a log that holds fewer requests than
    wrk completed."""
    name = kind.key
    remarks = [
        f"round {round_number}: {name} said: {line.strip()}"
        for line in output.splitlines()
        if line.strip() and USUAL_LINE.search(line) is None
    ]
    match = SHUTDOWN_LINE.search(output)
    if match is None:
        remarks.append(f"round {round_number}: no shutdown line from {name}")
    elif int(match[1]) < result.requests:
        remarks.append(
            f"round {round_number}: {name} logged {match[1]} requests, "
            f"wrk completed {result.requests}"
        )
    return remarks[:5]


def flushes_per_1k(output: str) -> float | None:
    match = SHUTDOWN_LINE.search(output)
    if match is None:
        return None
    requests, flushes = int(match[1]), int(match[2])
    return 1000 * flushes / max(requests, 1)


def _run_memory(workdir: Path) -> MemoryResult | str:
    print("asrv: 1 GiB PUT then 1 GiB GET, reading VmHWM", file=sys.stderr, flush=True)
    work = workdir / "memory"
    work.mkdir()
    try:
        return measure(work)
    except (OSError, ServerError) as error:
        return f"memory check failed: {error}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(
    cells: dict[tuple[str, str], Cell],
    memory: MemoryResult | str,
    args: argparse.Namespace,
    nginx: str,
    load: tuple[float, float],
) -> str:
    lines = [
        f"asrv benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {_nproc()} cores, "
        f"`{_command_line()}`, {args.seconds} s x {args.rounds} rounds",
        "",
        f"{_versions(nginx)}; 1-min load average {load[0]:.2f} before, {load[1]:.2f} after",
        "",
        "| case | server | req/s median (min-max) | p50 ms | p99 ms | CPU us/req "
        "| asrv / this, fsync / no-fsync | asrv ÷ ceiling | log flushes / 1k req | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(cells, cell) for cell in cells.values()]
    lines += ["", *_summary(cells), "", *_targets(cells, memory)]
    lines += ["", *_notes(cells, memory, args.rounds)]
    if load[0] > 1.0:
        lines.append(
            f"- The machine was busy before the run (1-min load average {load[0]:.2f} on "
            f"{_nproc()} cores): other processes competed for the CPU, so expect a wide "
            "spread; rerun on an idle machine for numbers to compare."
        )
    return "\n".join(lines)


def _row(cells: dict[tuple[str, str], Cell], cell: Cell) -> str:
    head = f"| {cell.case.title} | {cell.kind.label} "
    if not cell.applicable:
        return head + "| n/a | n/a | n/a | n/a | n/a | | | |"
    if not cell.samples:
        return head + "| failed | | | | | | | |"
    rates = cell.rates()
    rate = f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"
    p50 = statistics.median(sample.wrk.p50_ms for sample in cell.samples)
    p99 = statistics.median(sample.wrk.p99_ms for sample in cell.samples)
    cpu = _median_cpu(cell)
    ratio = to_ceiling = flush = ""
    if cell.kind in (ASRV, ASRV_NO_FSYNC):
        ceiling = cells.get((cell.case.key, CEILING.key))
        to_ceiling = "n/a"
        if ceiling is not None and ceiling.applicable:
            to_ceiling = _ratio(cell, ceiling)
    else:
        ratio = " / ".join(
            _ratio(mine, cell) if (mine := cells.get((cell.case.key, asrv.key))) else "-"
            for asrv in (ASRV, ASRV_NO_FSYNC)
        )
    if cell.kind in LOGGING_KINDS:
        flushes = [s.flushes_per_1k for s in cell.samples if s.flushes_per_1k is not None]
        flush = f"{statistics.median(flushes):.0f}" if flushes else "?"
    return (
        head + f"| {rate} | {p50:.2f} | {p99:.2f} | {cpu:.0f} | {ratio} | {to_ceiling} "
        f"| {flush} | {_error_summary(cell)} |"
    )


def _median_cpu(cell: Cell) -> float:
    return statistics.median(sample.cpu_us_per_request for sample in cell.samples)


def _ratio(mine: Cell, peer: Cell) -> str:
    """Median over rounds of `mine`'s req/s divided by the peer's in the same round."""
    ratio = _ratio_value(mine, peer)
    return "?" if ratio is None else f"{ratio:.2f}"


def _ratio_value(mine: Cell, peer: Cell) -> float | None:
    ratios = []
    for sample in peer.samples:
        rate = mine.rate_in_round(sample.round)
        if rate is not None and sample.wrk.rate > 0:
            ratios.append(rate / sample.wrk.rate)
    return statistics.median(ratios) if ratios else None


def _targets(cells: dict[tuple[str, str], Cell], memory: MemoryResult | str) -> list[str]:
    """Each target of the performance work, met or missed in this run (cases not run are
    left out)."""
    lines = ["| target | this run | |", "|---|---|---|"]
    titles = {case.key: case.title for case in CASES}
    for target in TARGETS:
        asrv, peer = cells.get((target.case, ASRV.key)), cells.get((target.case, target.peer.key))
        if asrv is None or peer is None:
            continue
        ratio = _ratio_value(asrv, peer)
        verdict = "?" if ratio is None else ("met" if ratio >= target.share else "missed")
        shown = "?" if ratio is None else f"{ratio:.2f}"
        lines.append(
            f"| {titles[target.case]}: asrv ≥ {target.share:g} x {target.peer.label} "
            f"| {shown} | {verdict} |"
        )
    keep_alive = cells.get(("get4k-ka", ASRV.key))
    if keep_alive is not None:
        flushes = [s.flushes_per_1k for s in keep_alive.samples if s.flushes_per_1k is not None]
        if flushes:
            median = statistics.median(flushes)
            verdict = "met" if median <= MOST_FLUSHES_PER_1K_GETS else "missed"
            lines.append(
                f"| {titles['get4k-ka']}: ≤ {MOST_FLUSHES_PER_1K_GETS} log flushes per 1,000 "
                f"GETs | {median:.0f} | {verdict} |"
            )
    if not isinstance(memory, str):
        peak = max(memory.after_put_kib, memory.after_get_kib) / 1024
        verdict = "met" if peak < MOST_MEMORY_MIB else "missed"
        lines.append(
            f"| 1 GiB PUT then GET: peak RSS < {MOST_MEMORY_MIB} MiB | {peak:.1f} MiB | {verdict} |"
        )
    return lines if len(lines) > 2 else []


def _summary(cells: dict[tuple[str, str], Cell]) -> list[str]:
    """Per case, asrv (fsync) as a share of nginx and of the ceiling, the ceiling's own share
    of nginx, and the CPU per request asrv spends beyond the ceiling's."""
    lines = [
        "| case | asrv ÷ nginx | asrv ÷ ceiling | ceiling ÷ nginx | CPU us/req: asrv - ceiling |",
        "|---|---|---|---|---|",
    ]
    for case in dict.fromkeys(cell.case for cell in cells.values()):
        asrv = cells.get((case.key, ASRV.key))
        ceiling = cells.get((case.key, CEILING.key))
        nginx = cells.get((case.key, NGINX.key))
        if asrv is None or ceiling is None or not asrv.samples or not ceiling.samples:
            continue
        to_nginx = ceiling_to_nginx = "n/a"
        if nginx is not None and nginx.samples:
            to_nginx, ceiling_to_nginx = _ratio(asrv, nginx), _ratio(ceiling, nginx)
        extra = _median_cpu(asrv) - _median_cpu(ceiling)
        lines.append(
            f"| {case.title} | {to_nginx} | {_ratio(asrv, ceiling)} | {ceiling_to_nginx} "
            f"| {extra:.0f} |"
        )
    return lines if len(lines) > 2 else []


def _error_summary(cell: Cell) -> str:
    totals: dict[str, int] = {}
    for sample in cell.samples:
        for kind, count in sample.wrk.socket_errors.items():
            totals[kind] = totals.get(kind, 0) + count
        totals["non-2xx"] = totals.get("non-2xx", 0) + sample.wrk.non_2xx
    parts = [f"{kind} {count:,}" for kind, count in totals.items() if count]
    if cell.failures:
        parts.append(f"{len(cell.failures)} failed")
    return ", ".join(parts) if parts else "0"


def _notes(
    cells: dict[tuple[str, str], Cell], memory: MemoryResult | str, rounds: int
) -> list[str]:
    notes = [
        f"- Load: wrk -t{WRK_THREADS} --latency (default 2 s request timeout), on the same "
        "machine; one server at a time, each with a fresh root.",
        f"- asrv: -t {ASRV_THREADS}. `asrv` rows are the default mode (every log line, and a "
        "PUT's data, fsync'd before the response, group-committed); `asrv --no-fsync` rows "
        "write without fsync. asrv runs in its default, persistent, connection mode; in the "
        "1 request/connection cases wrk sends `Connection: close` (to every server).",
        "- nginx: 1 worker, access_log off, sendfile on, WebDAV `dav_methods PUT`. aiohttp: "
        "web.static for GET, a PUT handler streaming to a temporary file renamed over the "
        "target, uvloop, no access log. Neither fsyncs nor keeps a log.",
        "- http.server: `python -m http.server`, HTTP/1.0 (closes every connection, also in "
        "the keep-alive cases), GET only: PUT cells are n/a.",
        "- ceiling: benchmarks/ceiling.py, a bare uvloop protocol on a socket bound as asrv "
        "binds it; a fixed response per request (GET /file1m: the file by sendfile(2) from a "
        "descriptor opened at start-up; any other GET: 4 KiB from memory; PUT: 201 once the "
        "body is read), one log line per request, the lines of each loop iteration written "
        "and fdatasync'd once on a single thread of its own before their responses; no file "
        "work. Not run over TLS.",
        *_tls_notes(cells),
        "- asrv / this: asrv's req/s divided by this server's in the same round, median over "
        "rounds (default asrv / asrv --no-fsync); asrv ÷ ceiling likewise, for the row's asrv. "
        "CPU us/req: user + sys time of the server "
        "process (with nginx's worker) during the wrk run divided by the requests wrk "
        "completed (clock tick 10 ms). Log flushes / 1k req: from asrv's (or the ceiling's) "
        "shutdown line.",
        f"- Memory: {memory if isinstance(memory, str) else memory.describe()}.",
    ]
    if not isinstance(memory, str) and not memory.ok:
        notes.append(f"- Memory check did not complete cleanly: {memory.server_output.strip()}")
    if rounds > 1:
        spreads = [
            ((max(cell.rates()) - min(cell.rates())) / statistics.median(cell.rates()), cell)
            for cell in cells.values()
            if len(cell.samples) > 1 and statistics.median(cell.rates()) > 0
        ]
        if spreads:
            widest, worst = max(spreads, key=_first)
            notes.append(
                f"- Spread between rounds, (max - min) / median of req/s: median "
                f"{100 * statistics.median(s for s, _ in spreads):.0f} %, widest "
                f"{100 * widest:.0f} % ({worst.case.title}, {worst.kind.label})."
            )
    for cell in cells.values():
        for failure in cell.failures:
            notes.append(f"- FAILED {cell.case.title}, {cell.kind.label}: {failure}")
        for remark in cell.remarks:
            notes.append(f"- {cell.case.title}, {cell.kind.label}: {remark}")
    return notes


def _tls_notes(cells: dict[tuple[str, str], Cell]) -> list[str]:
    """What the TLS cases ran, and the protocol and cipher each server agreed with a client."""
    tls_cells = [cell for cell in cells.values() if cell.case.tls and cell.applicable]
    if not tls_cells:
        return []
    agreed: dict[str, set[str]] = {}
    for cell in tls_cells:
        agreed.setdefault(cell.kind.label, set()).update(cell.tls_sessions)
    sessions = "; ".join(
        f"{label}: {', '.join(sorted(found)) or '?'}" for label, found in agreed.items()
    )
    return [
        "- TLS cases: HTTPS with one self-signed RSA-2048 certificate for 127.0.0.1 (openssl "
        "req); asrv with --tls-cert/--tls-key, nginx with `listen ssl`, `ssl_protocols "
        "TLSv1.2 TLSv1.3` (before 1.23.4 its default leaves out 1.3), default ciphers. "
        "Without kernel TLS neither uses sendfile: nginx encrypts from user space, asrv "
        "copies files through its workers. Keep-alive, so one handshake per wrk connection. "
        "aiohttp and http.server are not run over TLS (n/a). "
        f"Agreed with a Python client: {sessions}.",
    ]


def _first(item: tuple[float, Cell]) -> float:
    return item[0]


def _versions(nginx: str) -> str:
    asrv = program_version([sys.executable, "-m", "asrv", "--version"])
    nginx_version = program_version([nginx, "-v"]).removeprefix("nginx version: ")
    wrk = program_version(["wrk", "--version"]).split(" Copyright")[0]
    return (
        f"Python {sys.version.split()[0]}; {asrv}; {nginx_version}; "
        f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}; {wrk}; "
        f"temp files on {_filesystem(Path(tempfile.gettempdir()))}"
    )


def _nproc() -> int:
    return len(os.sched_getaffinity(0))


def _command_line() -> str:
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
        argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    except OSError:
        argv = [Path(sys.executable).name, *sys.argv]
    return shlex.join(argv)


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding `path`, from /proc/self/mounts (longest prefix)."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return kind
    resolved = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1]
        inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return f"{best} ({kind})"


if __name__ == "__main__":
    sys.exit(main())
